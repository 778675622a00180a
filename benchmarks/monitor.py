"""Drift check cost: ``monitoring.drift.check_drift`` over 1M rows per side, sampled, against
the same Evidently ``DataDriftPreset`` run on every row (the baseline, in the same run).

Data: the abuse target's client-window features as the batch build computes them, from a
simulated day (``--clients``), repeated with small seeded noise up to ``--rows`` rows per side;
the current side has one column shifted by half its standard deviation (a drift the
check must report). Both runs judge the
same columns; the sampled run must flag the shifted column, as the full run does.

Usage: .venv/bin/python benchmarks/monitor.py [--rows 1000000] [--max-rows 50000]
           [--clients 1000] [--columns 54] [--no-full] [--no-save]
Results are appended as one JSON line to benchmarks/results/monitor.jsonl.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import machine


def features(
    clients: int, rows: int, columns: int, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    from config.settings import load_settings
    from features.build import build_windows
    from features.windows import CLIENT_FEATURES
    from labeling.simulated import simulate_labelled

    with tempfile.TemporaryDirectory() as tmp:
        s = load_settings(Path(__file__).resolve().parents[1] / "gatewise.yaml", data_dir=Path(tmp))
        s = s.model_copy(
            update={"simulator": s.simulator.model_copy(update={"clients": clients, "days": 1.0})}
        )
        simulate_labelled(s)
        build_windows(s)
        base = pd.read_parquet(s.features_dir / "client_windows")
    cols = [c for c in CLIENT_FEATURES if c in base.columns][:columns]
    base = base[cols].astype(float).fillna(0.0)
    rng = np.random.default_rng(seed)

    def grow(n: int) -> pd.DataFrame:
        idx = rng.integers(0, len(base), n)
        df = base.iloc[idx].reset_index(drop=True)
        return df * rng.normal(1.0, 0.02, df.shape)

    ref, cur = grow(rows), grow(rows)
    shifted = "request_count_5m" if "request_count_5m" in cols else cols[0]
    cur[shifted] = cur[shifted] + 0.5 * ref[shifted].std()  # half a standard deviation
    return ref, cur, shifted


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--max-rows", type=int, default=50_000)
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--columns", type=int, default=54)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-full", action="store_true", help="skip the full-data baseline")
    ap.add_argument("--no-save", action="store_true")
    a = ap.parse_args()
    warnings.filterwarnings("ignore")
    from monitoring.drift import check_drift

    t = time.perf_counter()
    ref, cur, shifted = features(a.clients, a.rows, a.columns, a.seed)
    print(
        f"data: {len(ref):,} + {len(cur):,} rows x {ref.shape[1]} columns ({time.perf_counter() - t:.0f}s to build)"
    )
    cols = list(ref.columns)
    t = time.perf_counter()
    sampled = check_drift(ref, cur, cols, max_rows=a.max_rows, seed=a.seed)
    ts = time.perf_counter() - t
    print(
        f"gatewise check_drift, sampled to {a.max_rows:,} rows per side: {ts:.1f}s; "
        f"drifted {sampled.drifted}"
    )
    out = {
        "benchmark": "monitor_drift",
        "at": datetime.now(UTC).isoformat(),
        "machine": machine(),
        "rows_per_side": a.rows,
        "columns": len(cols),
        "max_rows": a.max_rows,
        "sampled_s": round(ts, 2),
        "sampled_drifted": sampled.drifted,
        "shifted_column_found": shifted in sampled.drifted,
    }
    if not a.no_full:
        t = time.perf_counter()
        full = check_drift(ref, cur, cols, max_rows=a.rows, seed=a.seed)
        tf = time.perf_counter() - t
        print(
            f"baseline: the same Evidently preset on every row: {tf:.1f}s; drifted {full.drifted}"
        )
        out.update(
            full_s=round(tf, 2),
            full_drifted=full.drifted,
            speedup=round(tf / ts, 1),
            same_verdicts=sorted(full.drifted) == sorted(sampled.drifted),
        )
        print(f"sampled is {tf / ts:.1f}x faster; same drifted columns: {out['same_verdicts']}")
    print(json.dumps(out))
    if not a.no_save:
        res = Path(__file__).parent / "results" / "monitor.jsonl"
        with res.open("a") as fh:
            fh.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
