"""The simulator: deterministic, labelled apart from telemetry, and honest
(abuse that no single aggregate or static limit catches)."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
import pytest

from config.simulator import DriftKnobs, SimulatorSettings, SkewKnobs
from telemetry.schema import EVENT_SCHEMA
from telemetry.simulator import TRUTH_SCHEMA, simulate
from telemetry.simulator.checks import (
    client_aggregates,
    single_aggregate_aucs,
    static_limit_outcomes,
)
from telemetry.simulator.population import ABUSE_SCENARIOS

LIMITS = {"free": 60, "pro": 300, "enterprise": 1200}


@pytest.fixture(scope="module")
def sim():
    return simulate(SimulatorSettings(clients=1500, days=1, seed=21))


@pytest.fixture(scope="module")
def aggregates(sim):
    return client_aggregates(sim.events, sim.clients)


def test_same_seed_same_output():
    cfg = SimulatorSettings(clients=80, days=0.5, seed=5)
    a, b = simulate(cfg), simulate(cfg)
    assert a.events.equals(b.events) and a.labels.equals(b.labels) and a.clients.equals(b.clients)
    c = simulate(cfg.model_copy(update={"seed": 6}))
    assert not a.events.equals(c.events)


def test_contract_and_no_truth_in_telemetry(sim):
    assert sim.events.schema.equals(EVENT_SCHEMA)
    assert sim.labels.schema.equals(TRUTH_SCHEMA)
    assert "label" not in sim.events.column_names and "scenario" not in sim.events.column_names
    assert pc.count_distinct(sim.events.column("request_id")).as_py() == sim.events.num_rows
    ts = sim.events.column("timestamp")
    assert pc.all(pc.greater_equal(ts.slice(1), ts.slice(0, len(ts) - 1))).as_py()  # time-ordered


def test_population_mix(sim):
    cl = sim.clients
    assert set(cl.column("tier").to_pylist()) == {"free", "pro", "enterprise"}
    assert len(set(cl.column("region").to_pylist())) >= 5
    roles = set(cl.column("role").to_pylist())
    # every style on by default; carding and scalping (added later) only when asked for
    assert set(ABUSE_SCENARIOS) - {"carding", "scalping"} <= roles
    assert not {"carding", "scalping"} & roles
    assert {
        "heavy_enterprise",
        "mistypers",
        "catalog_sync",
        "batch_bursts",
        "multi_server_partners",
        "analysts",
    } <= roles
    # routes follow a Zipf-like popularity: the top route carries far more than the median one
    counts = sorted(
        pc.value_counts(sim.events.column("http_route")).field("counts").to_pylist(), reverse=True
    )
    assert counts[0] > 3 * counts[len(counts) // 2]


def test_labels_cover_every_client_window_with_traffic(sim):
    lab = sim.labels
    assert set(lab.column("label").to_pylist()) == {0, 1}
    win = 5 * 60 * 1_000_000
    ts = sim.events.column("timestamp").cast("int64").to_numpy()
    pairs = {
        (c, t - t % win)
        for c, t in zip(sim.events.column("client_id").to_pylist(), ts.tolist(), strict=True)
    }
    assert lab.num_rows == len(pairs)
    abusive_clients = set(
        pc.filter(sim.clients.column("client_id"), sim.clients.column("abusive")).to_pylist()
    )
    positive = set(pc.filter(lab.column("client_id"), pc.equal(lab.column("label"), 1)).to_pylist())
    assert positive <= abusive_clients  # only abusers ever have an abusive window
    assert len(positive) > 0.9 * len([c for c in abusive_clients if c in {p for p, _ in pairs}])


def test_abusers_share_attribute_distributions(sim):
    cl = sim.clients
    ab = np.array(cl.column("abusive").to_pylist())
    for col in ("tier", "device_type"):
        vals = np.array(cl.column(col).to_pylist())
        for v in set(vals):
            share_ab, share_legit = (vals[ab] == v).mean(), (vals[~ab] == v).mean()
            assert abs(share_ab - share_legit) < 0.15, (col, v, share_ab, share_legit)


def test_no_single_aggregate_separates_abusers(aggregates):
    aucs = single_aggregate_aucs(aggregates)
    assert len(aucs) >= 15
    worst = max(aucs, key=aucs.get)
    assert aucs[worst] <= 0.9, f"{worst} alone separates abusers (AUC {aucs[worst]:.3f})"


def test_static_limits_miss_low_and_slow_and_hurt_heavy_legit(aggregates):
    out = static_limit_outcomes(aggregates, LIMITS)
    assert out["low_and_slow"]["share_limited"] <= 0.1
    assert out["scraping"]["share_limited"] <= 0.2
    assert out["key_sharing"]["share_limited"] <= 0.1
    assert out["heavy_enterprise"]["share_limited"] >= 0.5
    # the one thing a static limit is good at
    assert out["flood"]["share_limited"] >= 0.5
    assert out["legit"]["share_limited"] <= 0.01


def test_lifecycle_signups_churn_and_upgrades():
    sim = simulate(SimulatorSettings(clients=300, days=30, seed=2, mean_requests_per_client_day=8))
    cl = sim.clients
    start = pc.min(sim.events.column("timestamp"))
    signups = pc.sum(pc.greater(cl.column("signup_at"), start)).as_py()
    assert signups > 10
    # clients who signed up during the run show no traffic before their sign-up
    first = dict(
        zip(
            *sim.events.group_by("client_id")
            .aggregate([("timestamp", "min")])
            .to_pydict()
            .values(),
            strict=True,
        )
    )
    for cid, signup in zip(
        cl.column("client_id").to_pylist(), cl.column("signup_at").to_pylist(), strict=True
    ):
        if cid in first:
            assert first[cid] >= signup
    churned = pc.sum(pc.is_valid(cl.column("churn_at"))).as_py()
    assert churned > 10
    tiers_per_client = sim.events.group_by("client_id").aggregate([("tier", "count_distinct")])
    assert (
        pc.max(tiers_per_client.column("tier_count_distinct")).as_py() == 2
    )  # someone upgraded mid-way


def test_drift_knobs_change_the_traffic():
    base = SimulatorSettings(clients=300, days=2, seed=4)
    drifted = base.model_copy(
        update={
            "drift": DriftKnobs(
                after_day=1,
                latency_regression=4.0,
                latency_service="search",
                new_route=True,
                client_mix_shift=0.3,
            )
        }
    )
    a, b = simulate(base), simulate(drifted)

    def search_p50(sim, day):
        ev = sim.events
        day_start = (
            pc.min(ev.column("timestamp"))
            .as_py()
            .replace(hour=0, minute=0, second=0, microsecond=0)
        )
        import datetime as dt

        lo, hi = day_start + dt.timedelta(days=day), day_start + dt.timedelta(days=day + 1)
        m = pc.and_(
            pc.equal(ev.column("upstream_service"), "search"),
            pc.and_(
                pc.greater_equal(ev.column("timestamp"), lo), pc.less(ev.column("timestamp"), hi)
            ),
        )
        return np.nanmedian(
            pc.filter(ev.column("upstream_duration_ms"), m)
            .to_numpy(zero_copy_only=False)
            .astype(float)
        )

    assert search_p50(b, 1) > 2.5 * search_p50(b, 0)
    assert search_p50(a, 1) < 1.5 * search_p50(a, 0)
    assert "/v2/recommendations/{id}" in set(b.events.column("http_route").to_pylist())
    assert "/v2/recommendations/{id}" not in set(a.events.column("http_route").to_pylist())
    mobile = lambda s: pc.sum(pc.equal(s.clients.column("device_type"), "mobile")).as_py()  # noqa: E731
    assert mobile(b) > mobile(a) + 60


def test_group_skew_makes_one_group_look_noisier():
    base = SimulatorSettings(clients=800, days=0.5, seed=8)
    skewed = base.model_copy(
        update={"skew": SkewKnobs(column="region", value="ap-south", factor=4.0)}
    )

    def login_fail(sim, region):
        agg = client_aggregates(sim.events, sim.clients)
        reg = dict(
            zip(
                sim.clients.column("client_id").to_pylist(),
                sim.clients.column("region").to_pylist(),
                strict=True,
            )
        )
        rows = [r for r in agg.to_pylist() if not r["abusive"] and reg[r["client_id"]] == region]
        return np.mean([r["rate_401"] for r in rows]), np.mean(
            [r["distinct_addresses"] for r in rows]
        )

    f0, a0 = login_fail(simulate(base), "ap-south")
    f1, a1 = login_fail(simulate(skewed), "ap-south")
    assert f1 > 1.5 * f0 and a1 > a0


def test_the_styles_added_later_when_asked_for():
    """Carding and scalping (share 0 by default): their clients exist, their requests are
    abusive, and each looks like itself: declined payments; a few items polled for hours."""
    cfg = SimulatorSettings(clients=600, days=0.5, seed=4)
    cfg = cfg.model_copy(
        update={"scenarios": cfg.scenarios.model_copy(update={"carding": 0.02, "scalping": 0.02})}
    )
    r = simulate(cfg)
    ev = r.events.to_pandas()
    role = dict(
        zip(
            r.clients.column("client_id").to_pylist(),
            r.clients.column("role").to_pylist(),
            strict=True,
        )
    )
    ev["role"] = ev["client_id"].map(role)
    card = ev[ev.role == "carding"]
    pay = card[card.http_route == "/v1/payments"]
    assert len(pay) > 100 and (pay.http_response_status_code == 402).mean() > 0.6
    scalp = ev[(ev.role == "scalping") & (ev.http_route == "/v1/inventory/{id}")]
    assert len(scalp) > 500
    per_client_items = scalp.groupby("client_id")["url_path"].nunique()
    assert per_client_items.median() < 60  # a handful of hot items per run
    lab = r.labels.to_pandas()
    assert lab.loc[lab.scenario.isin(["carding", "scalping"]), "label"].sum() > 10
