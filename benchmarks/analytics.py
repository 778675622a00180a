"""Dashboard query latency on ~10M events: every telemetry panel of ``gatewise dashboard``
requested over real HTTP (uvicorn, panel caches cleared before each request; the data
set's metadata warm, as after the page's first /api/meta), against the same
SQL run bare in DuckDB (the statements each panel executed, captured by the Source's
trace and replayed on a plain DuckDB connection holding the same table).

Two bare baselines, both measured in this run:
- **bare DuckDB, same table**: the panel's SQL on an in-memory table loaded from the same
  Parquet files — what the dashboard adds on top of DuckDB (the target: <= 1.5x).
- **bare DuckDB over the Parquet store**: the same SQL reading the hour-partitioned files
  directly (once per panel) — what the dashboard's in-memory table saves.

Data: the lifecycle simulator (`gatewise history`) with ``--consumers`` consumers over 26
weeks (24,000 -> ~10M events), written once under ``--data`` and reused.

Usage: .venv/bin/python benchmarks/analytics.py [--consumers 24000] [--repeat 5]
           [--data .gatewise/bench/analytics-10m] [--no-parquet] [--no-save]
Results are appended as one JSON line to benchmarks/results/analytics.jsonl.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import ThreadedServer, free_port, machine, save_result

# panel -> extra query parameters (the page's own defaults)
PANELS: dict[str, dict[str, str]] = {
    "overview": {},
    "traffic": {"by": "route"},
    "breakdown": {"by": "route"},
    "slo": {},
    "top_consumers": {},
    "route_consumers": {"route": "/v1/search"},
    "consumer_requests": {},  # client filled in from top_consumers
    "adoption": {},
    "forecast": {},
    "revenue": {},
    "anomalies": {},
    "security_decisions": {},
    "security_models": {},
    "security_refused": {},
    "retention": {},
    "survival": {},
    "cox": {},
    "funnel": {},
    "compare": {},
    "lost_consumers": {},
    "policy_effect": {},
}
# panels whose work after the SQL is model fitting (lifelines, scikit-learn), not querying
MODEL_PANELS = {"survival", "cox", "compare", "policy_effect", "forecast"}


def ensure_data(root: Path, consumers: int) -> int:
    from config.simulator import LifecycleSettings
    from telemetry.simulator.lifecycle import write_lifecycle

    marker = root / "truth.json"
    if marker.exists():
        truth = json.loads(marker.read_text())
        if truth["counts"]["consumers"] == consumers:
            return int(truth["counts"]["events"])
    t = time.perf_counter()
    res = write_lifecycle(LifecycleSettings(consumers=consumers), root)
    print(f"wrote {res.events.num_rows:,} events in {time.perf_counter() - t:.0f} s")
    return int(res.events.num_rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--consumers", type=int, default=24_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--data", type=Path, default=Path(".gatewise/bench/analytics-10m"))
    ap.add_argument("--no-parquet", action="store_true", help="skip the Parquet baseline")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()

    import duckdb
    import httpx

    from analytics.dashboard import create_app
    from config.settings import load_settings

    n_events = ensure_data(args.data, args.consumers)
    root = args.data / "telemetry"
    settings = load_settings(data_dir=args.data / "project")
    app = create_app(settings, {"bench": [root]})
    dash = app.state.dashboard
    src = dash.datasets["bench"].source
    t = time.perf_counter()
    src.refresh(force=True)
    load_s = time.perf_counter() - t
    print(f"{n_events:,} events; the dashboard's table loaded in {load_s:.1f} s")

    server = ThreadedServer(app, free_port()).start()
    client = httpx.Client(base_url=server.url, timeout=120, trust_env=False)

    bare = duckdb.connect()
    bare.execute("SET TimeZone = 'UTC'")
    bare.execute("SET enable_progress_bar = false")
    bare.execute(f"CREATE TABLE events_cache AS {src._read(src.files())} ORDER BY timestamp")

    def clear() -> None:
        # panel answers and the consumers table are what a panel computes; the data set's
        # metadata (filter values, span) is computed once per data change by /api/meta,
        # which the page asks first, so it stays warm as in use
        for cache in (dash.panels, dash.people_cache):
            with cache._lock:
                cache._data.clear()

    def request(name: str, params: dict[str, str]) -> tuple[float, list[tuple[str, list[Any]]]]:
        clear()
        src.trace = []
        t0 = time.perf_counter()
        r = client.get(f"/api/panel/{name}", params={"dataset": "bench", **params})
        dt = time.perf_counter() - t0
        r.raise_for_status()
        trace, src.trace = src.trace, None
        return dt, trace

    def bare_time(trace: list[tuple[str, list[Any]]], con: Any, sql_of: Any = None) -> float:
        total = 0.0
        for sql, params in trace:
            text = sql_of(sql) if sql_of else sql
            t0 = time.perf_counter()
            con.sql(text, params=params).to_arrow_table()
            total += time.perf_counter() - t0
        return total

    # warm-up: imports (lifelines, sklearn, scipy) and DuckDB's first plans
    for name in PANELS:
        params = dict(PANELS[name])
        if name == "consumer_requests":
            top = client.get("/api/panel/top_consumers", params={"dataset": "bench"}).json()
            cols = top["columns"]
            params["client"] = top["rows"][0][cols.index("client_id")]
            PANELS[name] = params
        request(name, params)

    parquet_rel = src._read(src.files())
    rows = []
    # the whole 26 weeks (the page's default), then the last 7 days
    for view, extra in (("all", {}), ("7d", {"period": "7d"})):
        for name, base in PANELS.items():
            params = {**base, **extra}
            dash_s, bare_s = [], []
            for _ in range(args.repeat):
                dt, trace = request(name, params)
                dash_s.append(dt)
                bare_s.append(bare_time(trace, bare))
            pq_s = None
            if not args.no_parquet and trace and view == "all":
                pq_s = bare_time(
                    trace, bare, lambda q: q.replace("SELECT * FROM events_cache", parquet_rel)
                )
            row = {
                "view": view,
                "panel": name,
                "queries": len(trace),
                "dashboard_median_s": float(np.median(dash_s)),
                "dashboard_p95_s": float(np.quantile(dash_s, 0.95)),
                "bare_median_s": float(np.median(bare_s)),
                "bare_p95_s": float(np.quantile(bare_s, 0.95)),
                "bare_parquet_s": pq_s,
                "model_panel": name in MODEL_PANELS,
                "all_dashboard_s": dash_s,
                "all_bare_s": bare_s,
            }
            row["ratio_median"] = row["dashboard_median_s"] / max(row["bare_median_s"], 1e-9)
            rows.append(row)
            print(
                f"{view:3s} {name:20s} {len(trace):2d} q  dashboard {row['dashboard_median_s'] * 1000:7.0f} ms "
                f"(p95 {row['dashboard_p95_s'] * 1000:6.0f})  bare {row['bare_median_s'] * 1000:7.0f} ms"
                f"  x{row['ratio_median']:5.2f}"
                + (f"  parquet {pq_s * 1000:7.0f} ms" if pq_s is not None else ""),
                flush=True,
            )
    client.close()
    server.stop()

    def p95(key: str, only: Any = None, view: str = "all") -> float:
        vals = [v for r in rows if r["view"] == view and (only is None or only(r)) for v in r[key]]
        return float(np.quantile(vals, 0.95))

    summary = {
        "benchmark": "analytics_dashboard",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "events": n_events,
        "consumers": args.consumers,
        "repeat": args.repeat,
        "table_load_s": load_s,
        "p95_dashboard_s": p95("all_dashboard_s"),
        "p95_bare_s": p95("all_bare_s"),
        "p95_dashboard_query_panels_s": p95("all_dashboard_s", lambda r: not r["model_panel"]),
        "p95_bare_query_panels_s": p95("all_bare_s", lambda r: not r["model_panel"]),
        "p95_dashboard_7d_s": p95("all_dashboard_s", view="7d"),
        "p95_bare_7d_s": p95("all_bare_s", view="7d"),
        "slowest_panel": max(rows, key=lambda r: r["dashboard_median_s"])["panel"],
        "panels_over_1s": [
            r["panel"] for r in rows if r["dashboard_median_s"] > 1.0 and r["view"] == "all"
        ],
        "panels_over_1s_7d": [
            r["panel"] for r in rows if r["dashboard_median_s"] > 1.0 and r["view"] == "7d"
        ],
        "panels": [{k: v for k, v in r.items() if not k.startswith("all_")} for r in rows],
    }
    summary["p95_ratio"] = summary["p95_dashboard_s"] / summary["p95_bare_s"]
    summary["p95_ratio_query_panels"] = (
        summary["p95_dashboard_query_panels_s"] / summary["p95_bare_query_panels_s"]
    )
    print(
        f"\np95 over all panel requests: dashboard {summary['p95_dashboard_s'] * 1000:.0f} ms vs "
        f"bare DuckDB {summary['p95_bare_s'] * 1000:.0f} ms = x{summary['p95_ratio']:.2f}; "
        f"query panels only: x{summary['p95_ratio_query_panels']:.2f} "
        f"({summary['p95_dashboard_query_panels_s'] * 1000:.0f} vs "
        f"{summary['p95_bare_query_panels_s'] * 1000:.0f} ms); panels over 1 s (median): "
        f"{summary['panels_over_1s'] or 'none'}"
    )
    print(
        f"last 7 days: p95 dashboard {summary['p95_dashboard_7d_s'] * 1000:.0f} ms vs bare "
        f"{summary['p95_bare_7d_s'] * 1000:.0f} ms; panels over 1 s (median): "
        f"{summary['panels_over_1s_7d'] or 'none'}"
    )
    print(f"machine: {summary['machine']}")
    if not args.no_save:
        save_result("analytics", summary)


if __name__ == "__main__":
    main()
