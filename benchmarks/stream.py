"""Stream processor throughput against bare DuckDB running the same definitions as one batch.

One simulated day (``--clients``, default 2000) is published to Redis Streams the way the
gateway publishes (entries of up to 5,000 events, split by client partition; not timed). Then:

  duckdb batch  the client window definitions (``client_windows_sql``) over all events in one
                DuckDB statement, one thread: the floor for computing these features at all
  1 consumer    ``StreamProcessor`` owning every partition consumes the backlog through the
                consumer group: decode, out-of-order/late accounting, stage 1 over the touched
                windows, stage 2 over the compacted state, push of every touched client's newest
                row to the Feast online store (SQLite), checkpoint + XACK every 5 s
  2 consumers   two processes, partitions split 0-1 / 2-3, consuming the same backlog at once

The figure is sustained events/s per consumer process while it works through a backlog (the
rate it can keep up with); ``--no-push`` leaves the online write out. On this 2-core machine
two consumers share the cores with Redis: that row only shows that the partitions split the
work correctly (every event consumed once), not how it scales.

Usage: .venv/bin/python benchmarks/stream.py [--clients 2000] [--days 1] [--entries 4] [--no-push]
           [--no-save]
Results are appended as JSON lines to benchmarks/results/stream.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.harness import machine  # noqa: E402


def _settings(data_dir: Path, clients: int, days: float, name: str):
    from config.settings import load_settings

    s = load_settings(REPO / "gatewise.yaml", data_dir=data_dir)
    sim = s.simulator.model_copy(update={"clients": clients, "days": days, "seed": 7})
    stream = s.stream.model_copy(update={"name": name, "checkpoint_interval_s": 5.0})
    return s.model_copy(update={"simulator": sim, "stream": stream})


def _duckdb_batch(events) -> float:
    import duckdb

    from features.windows import client_windows_sql

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET threads = 1")
    con.register("ev", events)
    con.execute(
        "CREATE TEMP TABLE first_seen AS SELECT client_id, min(timestamp) AS first_seen "
        "FROM ev GROUP BY client_id"
    )
    t = time.perf_counter()
    n = con.sql(f"SELECT count(*) FROM ({client_windows_sql()})").fetchall()[0][0]
    dt = time.perf_counter() - t
    assert n > 0
    return dt


def _consume(s, partitions: list[int] | None, push: bool, entries: int) -> dict:
    """What ``gatewise stream`` runs (the service: pushes overlap the next batch)."""
    from features.stream_service import StreamService
    from monitoring.alerts import engine_for

    svc = StreamService(
        s, partitions, push=push, bootstrap=False, metrics_port=0, alerts=engine_for(s)
    )
    svc.start()
    p = svc.processor
    p.wall_clock = False  # a replay: event time only
    t = time.perf_counter()
    while p.poll_once(count=entries).entries:
        pass
    p.close_all()
    p.checkpoint()  # waits for the last push
    wall = time.perf_counter() - t
    st = p.status()
    svc.close()
    return {
        "partitions": p.partitions,
        "events": st["applied"],
        "wall_s": round(wall, 2),
        "events_per_s": round(st["applied"] / wall),
        "busy_events_per_s": st["events_per_busy_s"],
        "batches": st["batches"],
        "pushed_rows": st["pushed_rows"],
        "too_late": st["too_late"],
        "lag_events_after": st.get("lag_events"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--clients", type=int, default=2000)
    ap.add_argument("--days", type=float, default=1.0)
    ap.add_argument("--entries", type=int, default=4, help="entries per partition per batch")
    ap.add_argument("--no-push", dest="push", action="store_false")
    ap.add_argument("--no-save", dest="save", action="store_false")
    ap.add_argument("--child", help=argparse.SUPPRESS)  # data_dir|name|partitions
    a = ap.parse_args()
    import logging

    logging.getLogger("gatewise.alerts").setLevel(logging.ERROR)  # alerts fire; not printed
    if a.child:
        data_dir, name, parts = a.child.split("|")
        s = _settings(Path(data_dir), a.clients, a.days, name)
        print(json.dumps(_consume(s, [int(x) for x in parts.split(",")], a.push, a.entries)))
        return

    from rich.console import Console
    from rich.table import Table

    from features.store import apply_definitions, feature_store
    from labeling.simulated import simulate_labelled
    from telemetry.store import TelemetryStore
    from telemetry.stream import RedisBroker, publish_table

    console = Console()
    tmp = Path(tempfile.mkdtemp(prefix="gatewise-bench-stream-"))
    names = [f"gw-bench-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    s = _settings(tmp / "data", a.clients, a.days, names[0])
    with console.status(f"simulating {a.clients} clients for {a.days} day(s)"):
        simulate_labelled(s)
        events = TelemetryStore(s.telemetry_dir).read()
        apply_definitions(feature_store(s), s)
    console.print(f"{events.num_rows:,} events")
    brokers = []
    for name in names:
        cfg = s.stream.model_copy(update={"name": name})
        b = RedisBroker(cfg)
        b.ensure_group(range(cfg.partitions))
        with console.status(f"publishing the backlog to Redis stream {name}"):
            publish_table(b, events, cfg.partitions, max_batch=5000)
        brokers.append(b)
    results: dict = {}
    try:
        with console.status("bare DuckDB, one statement"):
            dt = min(_duckdb_batch(events) for _ in range(2))
        results["duckdb_batch"] = {
            "events_per_s": round(events.num_rows / dt),
            "wall_s": round(dt, 2),
        }
        with console.status("1 consumer (all partitions)"):
            results["one_consumer"] = _consume(s, None, a.push, a.entries)
        with console.status("2 consumer processes"):
            procs = []
            for parts in ("0,1", "2,3"):
                cmd = [
                    sys.executable,
                    __file__,
                    "--child",
                    f"{tmp / 'data'}|{names[1]}|{parts}",
                    "--clients",
                    str(a.clients),
                    "--days",
                    str(a.days),
                    "--entries",
                    str(a.entries),
                ] + ([] if a.push else ["--no-push"])
                procs.append(
                    subprocess.Popen(
                        cmd,
                        stdout=subprocess.PIPE,
                        text=True,
                        cwd=REPO,
                        env={**os.environ, "PYTHONPATH": str(REPO)},
                    )
                )
            outs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
        results["two_consumers"] = outs
    finally:
        for b in brokers:
            b.r.delete(*[b.key(p) for p in range(s.stream.partitions)])
            b.close()

    base = results["duckdb_batch"]["events_per_s"]
    t = Table(
        title=f"stream processor, {events.num_rows:,} events ({a.clients} clients, "
        f"{a.days:g} day), push to online store: {a.push}"
    )
    for col in ("set-up", "events", "wall s", "events/s", "vs bare DuckDB"):
        t.add_column(col, justify="right" if col != "set-up" else "left")
    d = results["duckdb_batch"]
    t.add_row(
        "bare DuckDB batch (floor)",
        f"{events.num_rows:,}",
        str(d["wall_s"]),
        f"{d['events_per_s']:,}",
        "1.00x",
    )
    o = results["one_consumer"]
    t.add_row(
        "1 consumer, partitions 0-3",
        f"{o['events']:,}",
        str(o["wall_s"]),
        f"{o['events_per_s']:,}",
        f"{o['events_per_s'] / base:.2f}x",
    )
    for r in results["two_consumers"]:
        t.add_row(
            f"2 consumers: partitions {r['partitions']}",
            f"{r['events']:,}",
            str(r["wall_s"]),
            f"{r['events_per_s']:,}",
            f"{r['events_per_s'] / base:.2f}x",
        )
    console.print(t)
    split = sum(r["events"] for r in results["two_consumers"])
    console.print(
        f"two consumers together consumed {split:,} of {events.num_rows:,} events "
        f"({'each exactly once' if split == events.num_rows else 'MISMATCH'}); "
        "on 2 cores they share the CPU with each other and Redis: not a scaling figure"
    )
    if a.save:
        out = REPO / "benchmarks" / "results" / "stream.jsonl"
        out.parent.mkdir(parents=True, exist_ok=True)
        rec = {
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "events": events.num_rows,
            "clients": a.clients,
            "days": a.days,
            "entries": a.entries,
            "push": a.push,
            **results,
        }
        with out.open("a") as fh:
            fh.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
