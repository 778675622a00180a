"""Write a simulation to the data directory: telemetry, consumers, and the truth beside them.

The truth (per-client roles, per-window abuse) goes to ``truth_dir`` (default
``<data_dir>/simulator``); it becomes the labels table only when imported
(``labeling/simulated.py`` does both). With ``truth_dir`` outside the data dir, the data dir
holds what a real gateway gives: telemetry and consumers, no labels.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from config.settings import Settings
from telemetry.simulator import SimulationResult, simulate
from telemetry.store import AppendResult, TelemetryStore

__all__ = ["SimulationRun", "run_simulation"]


@dataclass
class SimulationRun:
    result: SimulationResult
    appended: AppendResult
    name: str  # of this run's truth files (and of its label batch when imported)
    truth_labels_path: Path
    consumers_path: Path
    emitted: Path | None
    seconds_generate: float
    seconds_write: float


def _atomic_parquet(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def run_simulation(
    settings: Settings,
    *,
    emit: str | None = None,
    emit_path: Path | None = None,
    truth_dir: Path | None = None,
    transform: Callable[[pa.Table, SimulationResult], pa.Table] | None = None,
) -> SimulationRun:
    """Simulate per ``settings.simulator`` and store it under ``settings.data_dir``.

    Telemetry goes to the store (deduplicated by ``request_id``, so the same
    seed twice adds nothing); the consumers table is written as Parquet and CSV
    (``gatewise ingest --consumers``); the truth goes to ``truth_dir``. ``transform``
    rewrites the events before they are stored (e.g. ``gateway.history.through_gateway_hook``:
    the history as a gateway with a policy recorded it).
    """
    import time

    cfg = settings.simulator
    t0 = time.perf_counter()
    result = simulate(cfg)
    if transform is not None:
        result.events = transform(result.events, result)
    t1 = time.perf_counter()
    appended = TelemetryStore(settings.telemetry_dir).append(result.events)
    name = f"simulator-seed{cfg.seed}-{cfg.start:%Y%m%dT%H%M}-{cfg.days:g}d-{cfg.clients}c"
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    _atomic_parquet(result.consumers, settings.consumers_path)
    pacsv.write_csv(result.consumers, settings.data_dir / "consumers.csv")
    truth_dir = truth_dir or settings.data_dir / "simulator"
    truth_dir.mkdir(parents=True, exist_ok=True)
    _atomic_parquet(result.clients, truth_dir / f"{name}-clients.parquet")
    truth_labels = truth_dir / f"{name}-windows.parquet"
    _atomic_parquet(result.labels, truth_labels)
    t2 = time.perf_counter()
    emitted = None
    if emit:
        from telemetry.ingest.emit import emit_table

        slug = emit.replace(":", "_")  # nginx:main -> nginx_main: no colon in file names
        emitted = emit_path or settings.data_dir / "emitted" / f"{name}.{slug}.log"
        emit_table(result.events, emit, emitted)
    return SimulationRun(
        result, appended, name, truth_labels, settings.consumers_path, emitted, t1 - t0, t2 - t1
    )
