"""Window aggregates: right values at window edges, no look-ahead, incremental and idempotent builds."""

from __future__ import annotations

import random
from datetime import timedelta

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from features.build import build_windows
from features.windows import CLIENT_FEATURES, ROUTE_FEATURES
from telemetry.store import TelemetryStore


def _events_by_client(s):
    ev = TelemetryStore(s.telemetry_dir).read().to_pylist()
    by = {}
    for e in ev:
        by.setdefault(e["client_id"], []).append(e)
    return by


def test_build_writes_every_feature_for_both_days(built):
    s, report = built
    assert report.built_days == ["2026-11-02", "2026-11-03"]
    t = pq.read_table(s.features_dir / "client_windows" / "date=2026-11-02" / "part-0.parquet")
    assert set(CLIENT_FEATURES) | {"client_id", "event_timestamp"} == set(t.column_names)
    r = pq.read_table(s.features_dir / "route_windows" / "date=2026-11-03" / "part-0.parquet")
    assert set(ROUTE_FEATURES) | {"route_id", "event_timestamp"} == set(r.column_names)
    assert report.rows["client_windows"] > 1000 and report.rows["route_windows"] > 100


def test_values_match_a_brute_force_count_across_window_and_day_edges(built):
    """Recompute sampled rows straight from the events: counts, rates and
    distinct addresses over 5m/1h/24h, using only events before the stamp."""
    s, _ = built
    rows = pq.read_table(s.features_dir / "client_windows").to_pylist()
    by = _events_by_client(s)
    rnd = random.Random(0)
    # rows right after midnight of day 2 need day 1's events for their 1h and 24h windows
    edge = [
        r
        for r in rows
        if r["event_timestamp"].hour == 0
        and r["event_timestamp"].minute <= 10
        and r["event_timestamp"].day == 3
    ]
    sample = rnd.sample(rows, 60) + edge[:30]
    assert edge
    for row in sample:
        t = row["event_timestamp"]
        evs = by[row["client_id"]]
        for w, span in (
            ("5m", timedelta(minutes=5)),
            ("1h", timedelta(hours=1)),
            ("24h", timedelta(hours=24)),
        ):
            win = [e for e in evs if t - span <= e["timestamp"] < t]
            assert row[f"request_count_{w}"] == len(win), (row["client_id"], t, w)
            n401 = sum(e["http_response_status_code"] == 401 for e in win)
            assert abs(row[f"rate_401_{w}"] - n401 / len(win)) < 1e-9
            assert row[f"distinct_addresses_{w}"] == len({e["client_address"] for e in win})
            assert row[f"distinct_routes_{w}"] == len({e["http_route"] for e in win})


def test_no_feature_row_uses_events_at_or_after_its_timestamp(built):
    s, _ = built
    t = pq.read_table(s.features_dir / "client_windows")
    by = _events_by_client(s)
    for row in t.slice(0, 400).to_pylist():
        first_in_window = row["event_timestamp"] - timedelta(minutes=5)
        evs = by[row["client_id"]]
        assert any(first_in_window <= e["timestamp"] < row["event_timestamp"] for e in evs)
        assert row["request_count_5m"] == sum(
            first_in_window <= e["timestamp"] < row["event_timestamp"] for e in evs
        )


def test_enumeration_and_sharing_light_up_for_their_scenarios(built):
    s, _ = built
    t = pq.read_table(s.features_dir / "client_windows").to_pandas()
    truth = pq.read_table(next((s.data_dir / "simulator").glob("*-clients.parquet"))).to_pandas()[
        ["client_id", "role"]
    ]
    m = t.merge(truth, on="client_id")
    # each client's 90th percentile over its windows, then the typical client of each role
    per_client = m.groupby(["role", "client_id"])[
        ["enumeration_score_1h", "distinct_addresses_24h", "rate_401_1h"]
    ].quantile(0.9)
    per_role = per_client.groupby("role").median()
    assert (
        per_role.loc["scraping", "enumeration_score_1h"]
        > 0.5
        > per_role.loc["legit", "enumeration_score_1h"]
    )
    assert (
        per_role.loc["key_sharing", "distinct_addresses_24h"]
        > 3 * per_role.loc["legit", "distinct_addresses_24h"]
    )
    assert per_role.loc["credential_stuffing", "rate_401_1h"] > per_role.loc["legit", "rate_401_1h"]


def test_rebuild_is_idempotent_and_new_days_leave_history_alone(built):
    s, _ = built
    f1 = s.features_dir / "client_windows" / "date=2026-11-02" / "part-0.parquet"
    before = pq.read_table(f1)
    mtime = f1.stat().st_mtime_ns
    again = build_windows(s)  # nothing changed
    assert again.built_days == [] and again.skipped_days == ["2026-11-02", "2026-11-03"]
    assert f1.stat().st_mtime_ns == mtime
    forced = build_windows(s, since=before.column("event_timestamp")[0].as_py().date(), force=True)
    assert forced.built_days == ["2026-11-02", "2026-11-03"]
    after = pq.read_table(f1)
    assert after.equals(before)  # same rows, not appended twice
    key = pc.binary_join_element_wise(
        after.column("client_id"), pc.cast(after.column("event_timestamp"), "string"), "|"
    )
    assert pc.count_distinct(key).as_py() == after.num_rows


def test_only_days_with_changed_telemetry_are_rebuilt(built, tmp_path):
    import shutil

    s, _ = built
    s2 = s.model_copy(update={"data_dir": tmp_path / "d"})
    shutil.copytree(s.data_dir, s2.data_dir)
    # new telemetry on day 2 only
    store = TelemetryStore(s2.telemetry_dir)
    day2 = store.read().filter(pc.equal(pc.day(store.read().column("timestamp")), 3)).slice(0, 5)
    new = day2.set_column(
        1, "request_id", pc.binary_join_element_wise(day2.column("request_id"), "x", "")
    )
    store.append(new)
    rep = build_windows(s2)
    assert rep.built_days == ["2026-11-03"] and rep.skipped_days == ["2026-11-02"]


def test_the_gateways_own_refusals_do_not_change_response_features():
    """Two clients send the same requests; the gateway throttled half of one's (429, tiny
    body, ~0 ms). Request-side features count every attempt; response-side ones (error rates,
    bytes out, latency) only what the policy let through, so they match."""
    from datetime import UTC, datetime

    import duckdb
    import pyarrow as pa

    from features.windows import client_windows_sql
    from telemetry.schema import EVENT_SCHEMA

    t0 = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)
    rows = []
    for cid in ("served", "throttled"):
        for i in range(20):
            refused = cid == "throttled" and i % 2 == 1
            rows.append(
                {
                    "timestamp": t0 + timedelta(seconds=5 * i),
                    "request_id": f"{cid}-{i}",
                    "client_id": cid,
                    "client_address": "10.0.0.1",
                    "user_agent": "ua",
                    "http_request_method": "GET",
                    "url_path": "/v1/orders",
                    "http_route": "/v1/orders",
                    "http_response_status_code": 429 if refused else (404 if i % 4 == 0 else 200),
                    "duration_ms": 0.2 if refused else 40.0 + i,
                    "request_bytes": 100,
                    "response_bytes": 60 if refused else 2000,
                    "ratelimit_decision": "throttle" if refused else "allow",
                }
            )
    # the served client's odd requests carry the same upstream outcome the throttled one's
    # would have had: only the even ones are comparable, so give both the same even requests
    served = [r for r in rows if r["client_id"] == "served" and int(r["request_id"][7:]) % 2 == 0]
    thr = [r for r in rows if r["client_id"] == "throttled"]
    table = pa.Table.from_pylist(
        [{f.name: r.get(f.name) for f in EVENT_SCHEMA} for r in served + thr], schema=EVENT_SCHEMA
    )
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("ev", table)
    con.execute(
        "CREATE TABLE first_seen AS SELECT client_id, min(timestamp) AS first_seen FROM ev "
        "GROUP BY client_id"
    )
    df = con.sql(client_windows_sql()).df().set_index("client_id")
    a, b = df.loc[["served"]].iloc[0], df.loc[["throttled"]].iloc[0]
    assert b["request_count_5m"] == 20 and a["request_count_5m"] == 10  # every attempt counts
    for f in ("rate_4xx_5m", "rate_5xx_5m", "bytes_out_5m", "latency_p50_5m", "latency_p95_5m"):
        assert a[f] == pytest.approx(b[f]), f
    assert b["rate_429_5m"] == 0.5 and a["rate_429_5m"] == 0
