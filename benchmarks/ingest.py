"""Ingest speed per format, three ways in one run on the same file:

- per-record: ``ingest_files(..., fast=False)``: one regex match and one dict per line
- fast path: ``ingest_files(...)``: Arrow compute over whole batches (parse, request ids,
  dedup against the store, the Parquet write), the per-record parser only for leftovers
- bare DuckDB: ``regexp_extract`` of the same regex (the format's own, same fields) from
  the same file into Parquet -- no conversion, no validation, no ids, no dedup; for JSON
  formats ``read_json_auto`` into Parquet

The input is simulated traffic emitted in each gateway's format.

Usage: .venv/bin/python benchmarks/ingest.py [--clients 600 --days 1] [--formats a,b]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import machine, save_result
from config.simulator import SimulatorSettings
from telemetry.ingest import ingest_files
from telemetry.ingest.emit import EMITTERS, emit_table
from telemetry.ingest.formats import resolve
from telemetry.simulator import simulate
from telemetry.store import TelemetryStore

# every format with an emitter: the text ones have the fast path
TEXT = tuple(k for k in EMITTERS if not resolve(k).is_json)
JSON = ("nginx-json", "kong", "envoy")
# formats with a fast path: text ones, and JSON lines keyed by variables (nginx-json)
FAST = (*TEXT, *(k for k in JSON if resolve(k).json_vars is not None))

READ_LINES = (
    "read_csv('{src}', columns = {{'line': 'VARCHAR'}}, delim = '\\x01', quote = '', "
    "escape = '', header = false, auto_detect = false)"
)


def duckdb_floor(src: Path, fmt: str, dst: Path) -> float:
    import duckdb

    con = duckdb.connect()
    if fmt in JSON:
        sql = (
            f"COPY (SELECT * FROM read_json_auto('{src}', format = 'newline_delimited')) "
            f"TO '{dst}' (FORMAT parquet)"
        )
    else:
        lf = resolve(fmt)
        assert lf.regex is not None
        names = ", ".join(f"'_v{i}'" for i in range(len(lf.names)))
        rx = lf.regex.replace("'", "''")
        sql = (
            f"COPY (SELECT regexp_extract(line, '{rx}', [{names}]) AS m "
            f"FROM {READ_LINES.format(src=src)}) TO '{dst}' (FORMAT parquet)"
        )
    t = time.perf_counter()
    con.execute(sql)
    return time.perf_counter() - t


def timed_ingest(log: Path, fmt: str, root: Path, fast: bool) -> tuple[float, int, int]:
    store = TelemetryStore(root)
    t = time.perf_counter()
    rep = ingest_files([log], fmt, store, rejects_dir=root / "rejects", fast=fast)
    return time.perf_counter() - t, rep.read, rep.fast


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=600)
    ap.add_argument("--days", type=float, default=1.0)
    ap.add_argument("--formats", default=",".join((*TEXT, *JSON)))
    args = ap.parse_args()
    fmts = [f for f in args.formats.split(",") if f]
    unknown = [f for f in fmts if f not in EMITTERS]
    if unknown:
        sys.exit(f"no emitter for {unknown}")
    events = simulate(SimulatorSettings(clients=args.clients, days=args.days, seed=11)).events
    tmp = Path(tempfile.mkdtemp())
    print(f"machine: {machine()}")
    print(f"{events.num_rows:,} simulated events per format")
    head = (
        f"{'format':22s} {'records':>9s} {'per-record':>10s} {'fast':>8s} {'duckdb':>8s} "
        f"{'fast rec/s':>11s} {'speed-up':>8s} {'vs duckdb':>9s} {'fast share':>10s}"
    )
    print(head)
    rows = []
    try:
        for fmt in fmts:
            log = tmp / f"{fmt.replace(':', '_')}.log"
            emit_table(events, fmt, log)
            t_slow, n, _ = timed_ingest(log, fmt, tmp / f"slow-{len(rows)}", fast=False)
            t_fast, _, n_fast = (
                timed_ingest(log, fmt, tmp / f"fast-{len(rows)}", fast=True)
                if fmt in FAST
                else (t_slow, n, 0)
            )
            t_db = duckdb_floor(log, fmt, tmp / f"{len(rows)}.parquet")
            row = {
                "format": fmt,
                "records": n,
                "per_record_s": round(t_slow, 3),
                "fast_s": round(t_fast, 3) if fmt in FAST else None,
                "duckdb_s": round(t_db, 3),
                "fast_records_per_s": round(n / t_fast) if fmt in FAST else None,
                "speedup": round(t_slow / t_fast, 2) if fmt in FAST else None,
                "vs_duckdb": round(t_fast / t_db, 2),
                "fast_share": round(n_fast / n, 4) if n else 0,
            }
            rows.append(row)
            print(
                f"{fmt:22s} {n:>9,} {t_slow:>9.2f}s "
                + (f"{t_fast:>7.2f}s" if fmt in FAST else f"{'—':>8s}")
                + f" {t_db:>7.2f}s "
                + (
                    f"{row['fast_records_per_s']:>11,} {row['speedup']:>7.1f}x"
                    if fmt in FAST
                    else f"{'—':>11s} {'—':>8s}"
                )
                + f" {row['vs_duckdb']:>8.1f}x {row['fast_share']:>10.1%}",
                flush=True,
            )
    finally:
        shutil.rmtree(tmp)
    out = save_result(
        "ingest",
        {
            "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "machine": machine(),
            "events": events.num_rows,
            "rows": rows,
        },
    )
    print(f"recorded in {out}")


if __name__ == "__main__":
    main()
