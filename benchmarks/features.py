"""Feature build and Feast serving speed.

1. telemetry -> window features: events/s of ``features.build.build_windows``
   against the bare DuckDB aggregation (the same SQL, result discarded) over
   the same events in the same run: the floor. Then the same build with the as-of snapshots
   (``features/asof.py``: a stream-processor replay per day), as a ratio to the plain build.
2. materialization rows/s into the online store (SQLite, and Redis if up).
3. online lookup latency p50/p99 for 1 and 100 clients, SQLite vs Redis, in process.

Usage: .venv/bin/python benchmarks/features.py [--events 10_000_000]
(--clients and --days pick the simulation; the default ~10M events takes a few minutes)
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import machine
from config.settings import load_settings

REPO = Path(__file__).resolve().parents[1]


def bare_query_seconds(settings) -> float:
    """The same statements the build runs (events of the day + 24 h, window SQL,
    result fetched to Arrow and discarded): no Parquet written, no manifest,
    no state. The floor the build is measured against."""
    import duckdb

    from features.build import LOOKBACK, telemetry_days
    from features.windows import client_windows_sql, route_windows_sql
    from telemetry.store import TelemetryStore

    store = TelemetryStore(settings.telemetry_dir)
    total = 0.0
    for day in telemetry_days(store):
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        end = start + timedelta(days=1)
        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        t = time.perf_counter()
        con.execute(f"CREATE TEMP TABLE ev AS {store.relation_sql(start - LOOKBACK, end)}")
        con.execute(
            "CREATE TEMP TABLE first_seen AS SELECT client_id, min(timestamp) AS first_seen FROM ev GROUP BY 1"
        )
        keep = f"event_timestamp > TIMESTAMPTZ '{start.isoformat()}' AND event_timestamp <= TIMESTAMPTZ '{end.isoformat()}'"
        for sql in (client_windows_sql(), route_windows_sql()):
            con.sql(
                f"SELECT * FROM ({sql}) WHERE {keep} ORDER BY event_timestamp, 1"
            ).to_arrow_table()
        total += time.perf_counter() - t
        con.close()
    return total


def lookups(settings, ids: list[str], n: int, batch: int) -> tuple[float, float]:
    from features.store import feature_store

    store = feature_store(settings)
    fs = store.get_feature_service("abuse_v1")
    lat = []
    rnd = random.Random(0)
    for i in range(n + 20):
        rows = [{"client_id": c} for c in rnd.sample(ids, batch)]
        t = time.perf_counter()
        store.get_online_features(features=fs, entity_rows=rows).to_dict()
        if i >= 20:  # warm-up
            lat.append((time.perf_counter() - t) * 1000)
    lat.sort()
    return statistics.median(lat), lat[int(0.99 * (len(lat) - 1))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=4500)
    ap.add_argument("--days", type=float, default=3)
    ap.add_argument("--lookups", type=int, default=500)
    args = ap.parse_args()

    from features.build import build_windows
    from features.store import apply_definitions, feature_store
    from labeling.simulated import simulate_labelled
    from telemetry.store import TelemetryStore

    tmp = Path(tempfile.mkdtemp())
    try:
        s = load_settings(REPO / "gatewise.yaml", data_dir=tmp / "data")
        s = s.model_copy(
            update={
                "simulator": s.simulator.model_copy(
                    update={"clients": args.clients, "days": args.days}
                )
            }
        )
        t = time.perf_counter()
        simulate_labelled(s)
        n_events = TelemetryStore(s.telemetry_dir).count()
        print(f"machine: {machine()}")
        print(
            f"simulated {n_events:,} events ({args.clients} clients x {args.days:g} days) in {time.perf_counter() - t:.0f}s"
        )

        plain = s.model_copy(
            update={
                "features": s.features.model_copy(
                    update={"asof": s.features.asof.model_copy(update={"enabled": False})}
                )
            }
        )
        rep = build_windows(plain)
        t_floor = bare_query_seconds(s)
        print(
            f"feature build: {rep.seconds:.1f}s = {n_events / rep.seconds:,.0f} events/s; rows {rep.rows}"
        )
        print(
            f"bare DuckDB query (same SQL, nothing written): {t_floor:.1f}s; ratio build/bare = {rep.seconds / t_floor:.2f}x (target <= 2x)"
        )
        # the as-of snapshots (features/asof.py): the same build with the stream replay on
        rep_asof = build_windows(s, force=True)
        extra = rep_asof.seconds - rep.seconds
        per_day = extra / max(1, len(rep_asof.built_days))
        print(
            f"as-of snapshots: +{extra:.1f}s ({per_day:.1f}s/day, every {s.features.asof.every_minutes} min) "
            f"= {rep_asof.seconds / rep.seconds:.1f}x the plain build; "
            f"{rep_asof.rows.get('client_windows_asof', 0):,} rows"
        )

        end = rep.last
        results = {}
        for backend in ("sqlite", "redis"):
            sb = s.model_copy(
                update={
                    "features": s.features.model_copy(
                        update={
                            "online_store": backend,
                            "redis_url": "127.0.0.1:6379,db=9",
                            "project": f"bench_{backend}",
                        }
                    )
                }
            )
            if backend == "redis":
                try:
                    import redis

                    redis.Redis(db=9).ping()
                except Exception as exc:
                    print(f"redis: skipped ({exc})")
                    continue
            store = feature_store(sb)
            apply_definitions(store, sb)
            views = [v for v in store.list_feature_views() if v.online]
            ttl = max(v.ttl for v in views)
            t = time.perf_counter()
            store.materialize(
                start_date=end - ttl, end_date=end, feature_views=[v.name for v in views]
            )
            t_mat = time.perf_counter() - t
            import pyarrow.parquet as pq

            cw = pq.read_table(
                s.features_dir / "client_windows", columns=["client_id", "event_timestamp"]
            ).to_pandas()
            rows = sum(
                cw[cw.event_timestamp > end - v.ttl].client_id.nunique()
                for v in views
                if v.name.startswith("client")
            )
            ids = cw[cw.event_timestamp > end - timedelta(minutes=10)].client_id.unique().tolist()
            p1 = lookups(sb, ids, args.lookups, 1)
            p100 = lookups(sb, ids, max(50, args.lookups // 5), min(100, len(ids)))
            results[backend] = (rows, t_mat, p1, p100)
            print(
                f"{backend}: materialized ~{rows:,} entity rows in {t_mat:.1f}s ({rows / t_mat:,.0f} rows/s); "
                f"online p50/p99 1 client {p1[0]:.2f}/{p1[1]:.2f} ms, 100 clients {p100[0]:.2f}/{p100[1]:.2f} ms"
            )
            if backend == "redis":
                store.teardown()
        if "redis" in results:
            print(
                f"redis 1-client p99 target <= 5 ms: {'met' if results['redis'][2][1] <= 5 else 'NOT met'}"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
