"""The lifecycle simulator: deterministic, in contract, and its planted truth is recoverable."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from config.simulator import LifecycleSettings
from telemetry.schema import EVENT_SCHEMA
from telemetry.simulator.lifecycle import LifecycleResult, simulate_lifecycle, write_lifecycle
from telemetry.store import TelemetryStore

SMALL = LifecycleSettings(consumers=400, weeks=12, policy_week=6, launch_week=8, seed=3)


@pytest.fixture(scope="module")
def sim() -> LifecycleResult:
    return simulate_lifecycle(SMALL)


@pytest.fixture(scope="module")
def events(sim: LifecycleResult) -> pd.DataFrame:
    return sim.events.to_pandas()


@pytest.fixture(scope="module")
def joined(sim: LifecycleResult, events: pd.DataFrame) -> pd.DataFrame:
    cons = sim.consumers.to_pandas().rename(columns={"tier": "tier0"})
    return events.merge(cons, on="client_id", how="left", validate="many_to_one")


def ts(truth: dict, key: str) -> pd.Timestamp:
    return pd.Timestamp(truth[key])


def test_same_seed_same_output_other_seed_differs(sim: LifecycleResult) -> None:
    again = simulate_lifecycle(SMALL)
    assert again.events.equals(sim.events) and again.consumers.equals(sim.consumers)
    assert again.truth == sim.truth
    other = simulate_lifecycle(SMALL.model_copy(update={"seed": 4}))
    assert not other.events.equals(sim.events)


def test_settings_are_validated() -> None:
    with pytest.raises(ValidationError):
        LifecycleSettings(policy_week=30)
    with pytest.raises(ValidationError):
        LifecycleSettings(incident_route="/nope")
    with pytest.raises(ValidationError):
        LifecycleSettings(end=datetime(2026, 11, 2, 12, tzinfo=UTC))
    with pytest.raises(ValidationError):
        LifecycleSettings(colour="red")  # type: ignore[call-arg]


def test_events_conform_unique_ids_sorted(sim: LifecycleResult) -> None:
    ev = sim.events
    assert ev.schema.equals(EVENT_SCHEMA, check_metadata=True)
    assert ev.num_rows > 10_000
    assert len(ev.column("request_id").unique()) == ev.num_rows
    us = ev.column("timestamp").cast("int64").to_numpy()
    assert (np.diff(us) >= 0).all()
    start, end = ts(sim.truth, "start"), ts(sim.truth, "end")
    assert ev.column("timestamp")[0].as_py() >= start and ev.column("timestamp")[-1].as_py() < end
    assert sim.consumers.num_rows == SMALL.consumers
    assert set(sim.consumers.column_names) == {
        "client_id",
        "tier",
        "region",
        "device_type",
        "signup",
        "upgraded_at",
        "churned_at",
        "throttled_first_at",
    }
    json.dumps(sim.truth)  # serialisable


def test_nothing_before_signup_or_after_churn(sim: LifecycleResult, joined: pd.DataFrame) -> None:
    assert (joined.timestamp >= joined.signup).all()
    churned = joined[joined.churned_at.notna()]
    assert len(churned) and (churned.timestamp < churned.churned_at).all()
    # everyone shows up on their signup day; some consumers do churn
    first = joined.groupby("client_id").timestamp.min()
    signup = sim.consumers.to_pandas().set_index("client_id").signup
    assert (first.index == signup.index).all()
    assert ((first - signup[first.index]) < timedelta(days=1)).all()
    assert 0 < sim.truth["counts"]["churned"] < SMALL.consumers


def test_throttles_only_after_policy_never_enterprise(
    sim: LifecycleResult, joined: pd.DataFrame
) -> None:
    thr = joined[joined.ratelimit_decision == "throttle"]
    assert len(thr) > 100
    assert (
        (joined.http_response_status_code == 429).eq(joined.ratelimit_decision == "throttle").all()
    )
    assert (thr.timestamp >= ts(sim.truth, "policy_start")).all()
    assert (thr.tier != "enterprise").all() and (thr.tier == "free").mean() > 0.8
    assert (joined.ratelimit_decision.isin(["allow", "throttle"])).all()
    before = joined.timestamp < ts(sim.truth, "policy_start")
    assert (joined.policy_version[before] == "static-v1").all()
    assert (joined.policy_version[~before] == "free-tightened-v2").all()
    first = thr.groupby("client_id").timestamp.min()
    recorded = joined.groupby("client_id").throttled_first_at.first().dropna()
    pd.testing.assert_series_equal(first, recorded, check_names=False)


def test_tier_switches_to_pro_at_upgrade(joined: pd.DataFrame) -> None:
    up = joined[joined.upgraded_at.notna()]
    assert up.client_id.nunique() >= 5
    assert (up.tier0 == "free").all()
    assert (up.tier[up.timestamp >= up.upgraded_at] == "pro").all()
    assert (up.tier[up.timestamp < up.upgraded_at] == "free").all()
    stay = joined[joined.upgraded_at.isna()]
    assert (stay.tier == stay.tier0).all()


def test_new_route_only_after_launch(sim: LifecycleResult, events: pd.DataFrame) -> None:
    rec = events[events.http_route == sim.truth["launch_route"]]
    assert len(rec) > 50 and (rec.timestamp >= ts(sim.truth, "launch")).all()
    assert rec.url_path.str.match(r"^/v2/recommendations/\d+$").all()


def test_slo_breach_route_latency_triples_last_week(
    sim: LifecycleResult, events: pd.DataFrame
) -> None:
    route = events[events.http_route == sim.truth["slo_breach_route"]]
    late = route.timestamp >= ts(sim.truth, "breach_start")
    p95_late, p95_early = (
        route.duration_ms[late].quantile(0.95),
        route.duration_ms[~late].quantile(0.95),
    )
    assert p95_late > 2 * p95_early
    other = events[events.http_route == "/v1/products/{id}"]
    late_o = other.timestamp >= ts(sim.truth, "breach_start")
    assert other.duration_ms[late_o].quantile(0.95) < 1.3 * other.duration_ms[~late_o].quantile(
        0.95
    )


def test_incident_days_have_5xx_on_incident_route(
    sim: LifecycleResult, events: pd.DataFrame
) -> None:
    days = sim.truth["incident_days"]
    assert len(days) == SMALL.incident_days
    route = events[events.http_route == sim.truth["incident_route"]]
    on = route.timestamp.dt.strftime("%Y-%m-%d").isin(days)
    fivexx = route.http_response_status_code >= 500
    assert on.sum() >= 20
    assert fivexx[on].mean() > 0.08 and fivexx[~on].mean() < 0.02
    assert (events.http_response_status_code >= 500).mean() < 0.01


def test_psm_truth_recomputed_from_events(sim: LifecycleResult, events: pd.DataFrame) -> None:
    truth, psm = sim.truth, sim.truth["psm_truth"]
    p = ts(truth, "policy_start")
    day = timedelta(days=1)

    def who(a: pd.Timestamp, b: pd.Timestamp, frame: pd.DataFrame = events) -> set[str]:
        return set(frame.client_id[(frame.timestamp >= a) & (frame.timestamp < b)])

    # landmark design: active before the change and in the week after the treatment week
    eligible = who(p - 14 * day, p) & who(p + 7 * day, p + 14 * day)
    treated = eligible & who(p, p + 7 * day, events[events.ratelimit_decision == "throttle"])
    ra, rb = (pd.Timestamp(x) for x in truth["windows"]["retention"])
    end = ts(truth, "end")
    if p + 56 * day > end:  # the small config is too short for [P+42d, P+56d)
        assert (ra, rb) == (end - 14 * day, end) and truth["retention_note"]
    else:
        assert (ra, rb) == (p + 42 * day, p + 56 * day)
    retained = who(ra, rb)
    assert psm["n_eligible"] == len(eligible)
    assert psm["n_treated"] == len(treated) > 10
    assert psm["retained_treated"] == len(treated & retained)
    untreated = eligible - treated
    naive = len(treated & retained) / len(treated) - len(untreated & retained) / len(untreated)
    assert psm["naive_difference"] == pytest.approx(naive)
    assert truth["naive_difference"] == pytest.approx(naive)


def test_counterfactual_retains_at_least_as_many(sim: LifecycleResult) -> None:
    psm = sim.truth["psm_truth"]
    assert psm["retained_treated_counterfactual"] >= psm["retained_treated"]
    att = (psm["retained_treated"] - psm["retained_treated_counterfactual"]) / psm["n_treated"]
    assert psm["att"] == pytest.approx(att) and psm["att"] < 0
    # no planted effect: the two worlds coincide
    null = simulate_lifecycle(SMALL.model_copy(update={"throttle_hazard_ratio": 1.0}))
    assert null.truth["psm_truth"]["att"] == 0.0


@pytest.mark.slow
def test_default_config_plants_a_confounded_negative_effect() -> None:
    """What the propensity analysis leans on: a clear ATT that the naive gap misstates."""
    res = simulate_lifecycle(LifecycleSettings())
    psm = res.truth["psm_truth"]
    assert 1_000_000 <= res.truth["counts"]["events"] <= 2_000_000
    assert psm["n_treated"] > 100 and psm["n_eligible"] > 3 * psm["n_treated"]
    assert -0.25 < psm["att"] < -0.08
    # throttled consumers differ from the rest: the naive gap misstates the effect
    assert abs(psm["naive_difference"] - psm["att"]) > 0.03


def test_write_lifecycle(tmp_path) -> None:
    cfg = LifecycleSettings(consumers=30, weeks=4, policy_week=2, launch_week=3, seed=5)
    res = write_lifecycle(cfg, tmp_path)
    con = TelemetryStore(tmp_path / "telemetry").connect()
    assert con.execute("SELECT count(*) FROM events").fetchone()[0] == res.events.num_rows > 0
    assert pq.read_table(tmp_path / "consumers.parquet").equals(res.consumers)
    assert json.loads((tmp_path / "truth.json").read_text()) == res.truth
    assert not list(tmp_path.glob(".*.tmp"))
