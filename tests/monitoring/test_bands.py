"""Bands chosen by what they do to labelled traffic, throttles as absolute rates."""

from __future__ import annotations

from config.monitoring import PolicyRules
from gateway.backtest import backtest
from gateway.policy import Band
from monitoring.bands import candidate_bands, choose_bands
from tests.gateway.test_backtest import _policy, _scored_day


def test_an_absolute_throttle_acts_where_a_share_of_the_limit_does_not():
    share = Band(min_score=0.5, action="throttle", limit_factor=0.25)
    absolute = Band(min_score=0.5, action="throttle", requests_per_minute=2)
    assert share.throttled(60) == 15 and absolute.throttled(60) == 2
    assert absolute.throttled(1) == 1  # never above the limit it replaces


def test_the_grid():
    grid = candidate_bands(PolicyRules(band_cuts=[0.5, 0.9, 0.98], band_throttle_rates=[5]))
    assert [{"min_score": 0.5, "action": "block"}] in grid
    assert [
        {"min_score": 0.5, "action": "throttle", "requests_per_minute": 5},
        {"min_score": 0.9, "action": "block"},
    ] in grid
    # a throttle over a block below 0.9 is not tried
    assert all(c[-1]["min_score"] >= 0.9 for c in grid if len(c) == 2)


def test_chosen_bands_stop_more_without_more_harm(settings):
    s, scores = _scored_day(settings)
    current = _policy("shadow")
    prop, table = choose_bands(current, s.telemetry_dir, s.labels_dir, scores, target="abuse")
    assert table["current"].sum() == 1 and len(table) > 10
    cur = table[table["current"]].iloc[0]
    assert prop.changed
    new = prop.policy.targets["abuse"]
    assert new.mode == "shadow"  # the mode is the policy's; bands were judged as enforced
    # the chosen bands, replayed enforced over everyone: more stopped, no more harmed
    kw = {"labels": s.labels_dir, "label_window_minutes": 5, "scores": scores}
    enforced = lambda p: p.model_copy(  # noqa: E731
        update={
            "targets": {
                **p.targets,
                "abuse": p.targets["abuse"].model_copy(update={"mode": "enforce"}),
            }
        }
    )
    a = backtest(enforced(current), s.telemetry_dir, **kw).outcome
    b = backtest(enforced(prop.policy), s.telemetry_dir, **kw).outcome
    assert b["abusive_stopped"] > a["abusive_stopped"]
    assert b["legitimate_harmed"] <= a["legitimate_harmed"]
    # the subset replay and the full replay agree on what the change adds
    ok = table[~table["current"] & (table["legitimate_harmed"] <= cur["legitimate_harmed"])]
    chosen = ok["abusive_stopped"].max()
    assert b["abusive_stopped"] - a["abusive_stopped"] == chosen - cur["abusive_stopped"]
    assert "replayed on the labelled period" in prop.changes[0].reason
