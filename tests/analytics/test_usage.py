"""Usage analytics against figures computed by hand from the nine-event fixture."""

from __future__ import annotations

from datetime import timedelta

import pytest

from analytics.source import Filters, parse_period
from config.analytics import CostModel, SloSettings, SloTarget, TierPrice
from tests.analytics.conftest import T0, event


def test_breakdown_by_route_hand_computed(small) -> None:
    from analytics.usage import breakdown

    df = breakdown(small, Filters(), "route").set_index("key")
    s = df.loc["/v1/search"]
    assert s["requests"] == 5 and s["consumers"] == 2
    assert s["rate_5xx"] == pytest.approx(0.2)
    # durations 100, 200, 300, 400, 900: linear interpolation
    assert s["p50_ms"] == pytest.approx(300)
    assert s["p95_ms"] == pytest.approx(400 + 0.8 * 500)
    o = df.loc["/v1/orders"]
    assert o["rate_4xx"] == pytest.approx(2 / 3) and o["refused_share"] == pytest.approx(1 / 3)
    assert df["share"].sum() == pytest.approx(1.0)


def test_filters_change_the_numbers(small) -> None:
    from analytics.usage import breakdown, overview

    assert overview(small, Filters())["requests"].iloc[0] == 9
    assert overview(small, Filters(tiers=("pro",)))["requests"].iloc[0] == 3
    assert (
        overview(small, Filters(routes=("/v1/search",), regions=("us-east",)))["requests"].iloc[0]
        == 1
    )
    late = Filters(start=T0 + timedelta(hours=1), end=T0 + timedelta(hours=2))
    assert overview(small, late)["requests"].iloc[0] == 3
    by_tier = breakdown(small, Filters(), "tier").set_index("key")["requests"]
    assert by_tier.to_dict() == {"free": 6, "pro": 3}


def test_traffic_hourly(small) -> None:
    from analytics.usage import traffic

    f = Filters(start=T0, end=T0 + timedelta(hours=2))
    df = traffic(small, f, "hour")
    assert df["requests"].tolist() == [6, 3]
    assert df["errors_5xx"].tolist() == [1, 0]
    assert df["refused"].tolist() == [0, 1]
    assert df["rps"].iloc[0] == pytest.approx(6 / 3600)
    by = traffic(small, f, "hour", by="tier", top=1)
    assert set(by["key"]) == {"free", "(other)"}
    assert by.groupby("key")["requests"].sum().to_dict() == {"free": 6, "(other)": 3}


def test_slo_and_error_budget(small) -> None:
    from analytics.usage import slo

    cfg = SloSettings(
        default=SloTarget(availability=0.995, latency_ms=500, latency_objective=0.95),
        routes={"/v1/orders": SloTarget(availability=0.5, latency_ms=65, latency_objective=0.5)},
    )
    f = Filters(start=T0, end=T0 + timedelta(hours=2))
    df = slo(small, f, cfg).set_index("route")
    s = df.loc["/v1/search"]
    assert s["availability"] == pytest.approx(0.8) and s["latency_good"] == pytest.approx(0.8)
    assert s["budget_consumed"] == pytest.approx(1 / (0.005 * 5))
    assert s["burn_rate"] == pytest.approx(0.2 / 0.005)
    assert s["status"] == "breaching"
    # last hour: 11:00-12:00 holds one /v1/search request (900 ms, 200): no 5xx
    assert s["burn_rate_1h"] == pytest.approx(0.0)
    o = df.loc["/v1/orders"]  # its own target: 70 ms is slow against 65 ms
    assert o["latency_good"] == pytest.approx(2 / 3) and o["status"] == "ok"


def test_top_consumers_and_drill_down(small) -> None:
    from analytics.usage import consumer_requests, top_consumers

    top = top_consumers(small, Filters(), n=2)
    assert top["client_id"].tolist() == ["c1", "c2"]
    assert top["requests"].tolist() == [4, 3]
    assert top["share"].iloc[0] == pytest.approx(4 / 9)
    rows = consumer_requests(small, Filters(), "c2")
    assert rows["status"].tolist() == [429, 404, 200]  # newest first


def test_route_adoption(small) -> None:
    from analytics.usage import adoption

    df = adoption(small, Filters(start=T0, end=T0 + timedelta(hours=2))).set_index("route")
    new = df.loc["/v2/new"]
    assert new["consumers"] == 1 and new["share_of_active"] == pytest.approx(1 / 3)
    # c3 was first seen at 10:50, the route launched at 11:45 with c3's own call: 0 days
    assert new["median_days_to_first_call"] == pytest.approx(0.0)
    # c3 came 50 min after /v1/search launched and called it at once; c1 launched it
    assert df.loc["/v1/search", "median_days_to_first_call"] == pytest.approx(0.0)
    assert bool(new["launched_in_range"])


def test_revenue_and_cost(small) -> None:
    from analytics.usage import revenue

    f = Filters(start=T0, end=T0 + timedelta(hours=2))
    tiers = {"free": TierPrice(monthly=30, per_1k_requests=1.0)}
    df = revenue(small, f, tiers, CostModel(per_1k_requests=2.0, per_gb_out=100.0))
    free = df.set_index("tier").loc["free"]
    days = 2 / 24
    assert free["revenue"] == pytest.approx(2 * 30 * days / 30 + 6 / 1000 * 1.0)
    assert free["cost"] == pytest.approx(6 / 1000 * 2.0 + 6000 / 1e9 * 100.0)
    assert not df.set_index("tier").loc["pro", "priced"]


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="period '7x'"):
        parse_period("7x")
    assert parse_period("7d") == timedelta(days=7)
    with pytest.raises(ValueError, match="not after start"):
        Filters(start=T0, end=T0)
    with pytest.raises(ValueError, match="start: 'yesterday'"):
        Filters(start="yesterday")  # type: ignore[arg-type]


def test_unknown_dimension_named(small) -> None:
    from analytics.usage import breakdown

    with pytest.raises(ValueError, match="dimension 'colour'"):
        breakdown(small, Filters(), "colour")


def test_empty_store_answers_empty(tmp_path) -> None:
    from analytics.source import Source
    from analytics.usage import breakdown, overview

    src = Source([tmp_path / "none"])
    assert overview(src, Filters())["requests"].iloc[0] == 0
    assert breakdown(src, Filters(), "route").empty


def test_source_reads_parts_from_before_the_scan_columns(tmp_path) -> None:
    """A store whose older parts lack ``scan_*`` (written before they joined the contract):
    the cached table and the direct Parquet path both see them as nulls beside new parts."""
    import pyarrow.parquet as pq

    from analytics.source import Filters, Source
    from telemetry.schema import events_to_table
    from telemetry.store import TelemetryStore

    root = tmp_path / "t"
    old = events_to_table([event("c1", 0, "/v1/search", 200, 10)])
    old = old.drop_columns(["scan_score", "scan_label", "scan_action"])
    part = root / "hour=2026-01-05T10" / "part-old.parquet"
    part.parent.mkdir(parents=True)
    pq.write_table(old, part)
    for cache in (True, False):
        src = Source([root], cache=cache)
        assert src.df("SELECT count(scan_label) AS n FROM ev", Filters())["n"].iloc[0] == 0
        src.close()
    src = Source([root], cache=True, refresh_s=0)
    assert src.df("SELECT count(*) AS n FROM ev", Filters())["n"].iloc[0] == 1
    TelemetryStore(root).append(
        events_to_table([event("c2", 5, "/v1/search", 200, 10, scan_label="xss", scan_score=0.9)])
    )
    src.refresh(force=True)
    got = src.df("SELECT client_id, scan_label FROM ev ORDER BY client_id", Filters())
    assert got["scan_label"].tolist()[1] == "xss" and got["scan_label"].isna().tolist()[0]
    src.close()
