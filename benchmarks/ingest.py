"""Ingest speed per format: records/s into the store, against bare DuckDB
parsing the same file into Parquet in the same run (the floor).

The input is simulated traffic emitted in each gateway's format (plus the real
combined-format samples in ../shared/data, concatenated).

Usage: .venv/bin/python benchmarks/ingest.py [--clients 600 --days 1]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import machine
from config.simulator import SimulatorSettings
from telemetry.ingest import ingest_files
from telemetry.ingest.emit import emit_table
from telemetry.simulator import simulate
from telemetry.store import TelemetryStore

COMBINED_SQL = r"""
COPY (
  SELECT regexp_extract(line, '^(\S+) \S+ (\S+) \[([^\]]+)\] "(\S+) (\S+)[^"]*" (\d{3}) (\S+) "[^"]*" "([^"]*)"',
                        ['addr', 'user', 'ts', 'method', 'target', 'status', 'size', 'ua']) AS m
  FROM read_csv('{src}', columns = {'line': 'VARCHAR'}, delim = '\x01', quote = '', escape = '', header = false)
) TO '{dst}' (FORMAT parquet)
"""
JSON_SQL = "COPY (SELECT * FROM read_json_auto('{src}', format = 'newline_delimited')) TO '{dst}' (FORMAT parquet)"


def duckdb_floor(src: Path, fmt: str, dst: Path) -> float:
    import duckdb

    con = duckdb.connect()
    sql = (
        (COMBINED_SQL if fmt == "combined" else JSON_SQL)
        .replace("{src}", str(src))
        .replace("{dst}", str(dst))
    )
    t = time.perf_counter()
    con.execute(sql)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=600)
    ap.add_argument("--days", type=float, default=1.0)
    args = ap.parse_args()
    events = simulate(SimulatorSettings(clients=args.clients, days=args.days, seed=11)).events
    tmp = Path(tempfile.mkdtemp())
    print(f"machine: {machine()}")
    print(f"{events.num_rows:,} simulated events per format")
    print(
        f"{'format':12s} {'records':>9s} {'gatewise s':>10s} {'rec/s':>9s} {'duckdb s':>9s} {'ratio':>6s}"
    )
    try:
        for fmt in ("combined", "nginx-json", "kong", "envoy"):
            log = tmp / f"{fmt}.log"
            emit_table(events, fmt, log)
            store = TelemetryStore(tmp / f"store-{fmt}")
            t = time.perf_counter()
            rep = ingest_files([log], fmt, store, rejects_dir=tmp / "rejects")
            t_gw = time.perf_counter() - t
            t_db = duckdb_floor(log, fmt, tmp / f"{fmt}.parquet")
            print(
                f"{fmt:12s} {rep.read:>9,} {t_gw:>10.2f} {rep.read / t_gw:>9,.0f} {t_db:>9.2f} {t_gw / t_db:>5.1f}x"
            )
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
