"""The backtest replays recorded traffic through the same decision core as the live gateway."""

from __future__ import annotations

import asyncio
import random

from gateway.backtest import backtest
from gateway.policy import TierLimit, default_policy
from gateway.policy_store import PolicyStore
from telemetry.store import TelemetryStore
from tests.gateway.conftest import Clock, FakeScorer, key_headers, running, with_gateway


def test_backtest_reaches_the_live_gateways_decisions(gw_settings):
    s, keys = gw_settings
    s = with_gateway(
        s, scoring=s.gateway.scoring.model_copy(update={"enabled": True, "cache_ttl_s": 30})
    )
    base = default_policy(
        {"free": 20, "pro": 40, "enterprise": 120},
        {"GET /v1/reports/export": 5},
        [
            {"min_score": 0.5, "action": "throttle", "limit_factor": 0.5},
            {"min_score": 0.97, "action": "block"},
        ],
    )
    t = base.targets["abuse"].model_copy(update={"mode": "enforce"})
    policy = PolicyStore(s.policy_dir).publish(
        base.model_copy(
            update={
                "targets": {"abuse": t},
                "tiers": {**base.tiers, "free": TierLimit(requests_per_minute=20, burst=5)},
            }
        ),
        reason="tight limits for the agreement test",
    )
    scorer = FakeScorer({"alice": 0.2, "bob": 0.6, "carol": 0.4})
    clock = Clock()
    rng = random.Random(3)
    paths = ["/v1/orders/1", "/v1/products/2", "/v1/reports/export", "/v1/search"]

    async def main():
        async with running(s, clock, scorer) as (_, c):
            for i in range(600):
                clock.advance(rng.expovariate(1 / 0.4))
                if i == 300:  # alice's score rises mid-stream: cached scores expire, band changes
                    scorer.scores["alice"] = 0.99
                who = rng.choice(["alice", "alice", "bob", "carol", "mallory"])
                h = key_headers(keys[who]) if who in keys else {"x-api-key": "gw_bad_key"}
                await c.get(rng.choice(paths), headers=h)

    asyncio.run(main())
    live = TelemetryStore(s.telemetry_dir).read().to_pandas().set_index("request_id")
    r = backtest(policy, s.telemetry_dir)
    bt = r.decisions.set_index("request_id")
    assert len(bt) == len(live) == 600
    judged = live["ratelimit_decision"].notna()
    assert judged.sum() > 300
    assert (bt.loc[live.index[judged], "decision"] == live.loc[judged, "ratelimit_decision"]).all()
    decided = set(live.loc[judged, "ratelimit_decision"])
    assert {"allow", "throttle", "block"} <= decided  # the comparison covers every outcome
    assert (bt.loc[live.index[~judged], "action"] == "refused").all()


def test_backtest_on_simulated_traffic_with_labels(settings):
    from labeling.simulated import simulate_labelled

    s = settings.model_copy(
        update={
            "simulator": settings.simulator.model_copy(
                update={"clients": 120, "days": 0.25, "seed": 5}
            )
        }
    )
    simulate_labelled(s)
    loose = default_policy({"free": 600, "pro": 3000, "enterprise": 12000})
    tight = default_policy({"free": 20, "pro": 100, "enterprise": 400})
    a = backtest(loose, s.telemetry_dir, labels=s.labels_dir, label_window_minutes=5)
    b = backtest(tight, s.telemetry_dir, labels=s.labels_dir, label_window_minutes=5)
    assert a.events == b.events == TelemetryStore(s.telemetry_dir).count()
    assert a.summary["requests"].sum() == a.events
    for r in (a, b):
        o = r.outcome
        assert o["abusive_requests"] + o["legitimate_requests"] == r.events
        assert 0 < o["abusive_requests"] < r.events
    # tighter limits stop more of both: the trade-off static limits force
    assert b.outcome["abusive_stopped"] > a.outcome["abusive_stopped"]
    assert b.outcome["legitimate_harmed"] >= a.outcome["legitimate_harmed"]
    assert set(b.by_group["attribute"]) == {"tier", "region", "device_type"}


def _scored_day(settings):
    """A small simulated day with labels, and window scores that put many legitimate clients
    in the throttle band although they run well under the throttled rate."""
    import numpy as np
    import pandas as pd

    from labeling.simulated import simulate_labelled

    s = settings.model_copy(
        update={
            "simulator": settings.simulator.model_copy(
                update={"clients": 120, "days": 0.25, "seed": 5}
            )
        }
    )
    run, _ = simulate_labelled(s)
    truth = run.result.labels.to_pandas()
    rng = np.random.default_rng(4)
    score = np.where(
        truth["label"].to_numpy() == 1,
        rng.uniform(0.5, 1.0, len(truth)),
        rng.uniform(0.0, 0.95, len(truth)),
    )
    scores = pd.DataFrame(
        {
            "client_id": truth["client_id"],
            "event_timestamp": truth["event_timestamp"],
            "score": score,
        }
    )
    return s, scores


def _policy(mode: str):
    base = default_policy(
        {"free": 60, "pro": 300, "enterprise": 1200},
        None,
        [
            {"min_score": 0.5, "action": "throttle", "limit_factor": 0.25},
            {"min_score": 0.92, "action": "block"},
        ],
    )
    return base.model_copy(
        update={"targets": {"abuse": base.targets["abuse"].model_copy(update={"mode": mode})}}
    )


def test_the_shadow_estimate_is_what_enforcement_does(settings):
    """A shadow policy's 'would have' figures equal a backtest of the same policy enforced,
    on the same traffic; counting every would-be throttle as stopped (the old estimate)
    overstates the harm: a throttle stops only what its reduced limit refuses."""
    s, scores = _scored_day(settings)
    kw = {"labels": s.labels_dir, "label_window_minutes": 5, "scores": scores}
    shadow = backtest(_policy("shadow"), s.telemetry_dir, **kw)
    enforced = backtest(_policy("enforce"), s.telemetry_dir, **kw)
    e, w = enforced.outcome, shadow.outcome["if_enforced"]
    for k in ("abusive_stopped", "legitimate_harmed", "abusive_requests", "legitimate_requests"):
        assert w[k] == e[k], k
    assert (shadow.decisions["would_action"] == enforced.decisions["action"]).all()
    # in shadow nothing model-made is enforced: the extra is all the model's
    assert shadow.outcome["shadow_would_harm_legitimate"] == (
        e["legitimate_harmed"] - shadow.outcome["legitimate_harmed"]
    )
    d = shadow.decisions
    naive_legit = int(
        (d["decision"].astype(str).str.startswith("shadow_") & (d["abusive"] == 0)).sum()
    )
    assert naive_legit > shadow.outcome["shadow_would_harm_legitimate"] > 0


def test_per_band_report_adds_up(settings):
    s, scores = _scored_day(settings)
    r = backtest(
        _policy("shadow"),
        s.telemetry_dir,
        labels=s.labels_dir,
        label_window_minutes=5,
        scores=scores,
    )
    bands = r.bands.set_index("rule")
    assert set(bands.index) == {"abuse >= 0.5 throttle", "abuse >= 0.92 block"}
    assert set(bands["mode"]) == {"shadow"}
    d = r.decisions
    would = d["would_action"].isin(["throttle", "block", "challenge"])
    for rule, row in bands.iterrows():
        g = d[d["would_band"] == rule]
        assert row["requests"] == len(g)
        assert row["legitimate_harmed"] == int((would[g.index] & (g["abusive"] == 0)).sum())
        assert row["abusive_stopped_beyond_static"] <= row["abusive_stopped"]
    block = bands.loc["abuse >= 0.92 block"]
    assert block["abusive_stopped"] + block["legitimate_harmed"] == block["requests"]
    throttle = bands.loc["abuse >= 0.5 throttle"]
    assert throttle["abusive_stopped"] + throttle["legitimate_harmed"] < throttle["requests"]
