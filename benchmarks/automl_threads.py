"""One AutoML trial with and without its thread bound, beside a busy process.

A search told to use one core (``n_jobs=1``) fits HistGradientBoosting and XGBoost,
which start OpenMP threads on every core unless bounded. Beside another busy process
(the other search worker, FLAML in the benchmark, the gateway) those threads spin and
wait on each other. This fits the same 5-fold HistGradientBoosting trial (german credit, 800 rows) three
ways: bounded to one thread (what ``models.search.build_model`` does now), unbounded
(as before), and unbounded on an idle machine; a process spinning on one core runs
beside the first two.

Usage: .venv/bin/python benchmarks/automl_threads.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.automl_vs_flaml import german
from benchmarks.harness import machine


def _spin(stop: mp.Event) -> None:  # type: ignore[valid-type]
    x = 0
    while not stop.is_set():  # type: ignore[attr-defined]
        x += 1


def _trial(bounded: bool) -> float:
    """The default HistGradientBoosting configuration, 5 folds, on one-hot german credit."""
    import contextlib

    import pandas as pd
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import StratifiedKFold
    from threadpoolctl import threadpool_limits

    ds = german()
    X = pd.get_dummies(ds.X, dtype=float).to_numpy()
    y = ds.y.to_numpy()
    t = time.perf_counter()
    for tr, va in StratifiedKFold(5, shuffle=True, random_state=0).split(X, y):
        bound = threadpool_limits(limits=1) if bounded else contextlib.nullcontext()
        with bound:
            m = HistGradientBoostingClassifier(early_stopping=True, random_state=0)
            m.fit(X[tr], y[tr])
            m.predict_proba(X[va])
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"machine: {machine()}")
    _trial(True)  # imports and first-call costs
    idle = [_trial(False) for _ in range(args.repeats)]
    stop = mp.Event()
    busy = mp.Process(target=_spin, args=(stop,), daemon=True)
    busy.start()
    try:
        unbounded = [_trial(False) for _ in range(args.repeats)]
        bounded = [_trial(True) for _ in range(args.repeats)]
    finally:
        stop.set()
        busy.join(5)
    med = {
        k: float(np.median(v))
        for k, v in (("idle", idle), ("unbounded", unbounded), ("bounded", bounded))
    }
    print(
        f"5-fold HistGradientBoosting trial, median of {args.repeats}: idle machine unbounded "
        f"{med['idle']:.2f}s; beside a busy core: unbounded {med['unbounded']:.2f}s, bounded to "
        f"one thread {med['bounded']:.2f}s; unbounded/bounded {med['unbounded'] / med['bounded']:.1f}x"
    )


if __name__ == "__main__":
    main()
