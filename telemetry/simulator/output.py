"""Write a simulation to the data directory: telemetry, labels, consumers, truth."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from gatewise.settings import Settings
from telemetry.labels import LabelStore
from telemetry.simulator import SimulationResult, simulate
from telemetry.store import AppendResult, TelemetryStore

__all__ = ["SimulationRun", "run_simulation"]


@dataclass
class SimulationRun:
    result: SimulationResult
    appended: AppendResult
    labels_path: Path
    consumers_path: Path
    emitted: Path | None
    seconds_generate: float
    seconds_write: float


def _atomic_parquet(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def run_simulation(
    settings: Settings, *, emit: str | None = None, emit_path: Path | None = None
) -> SimulationRun:
    """Simulate per ``settings.simulator`` and store everything under ``settings.data_dir``.

    Telemetry goes to the store (deduplicated by ``request_id``, so the same
    seed twice adds nothing); labels go to their own table; the consumers table
    is written as Parquet and CSV (``gatewise ingest --consumers``).
    """
    import time

    cfg = settings.simulator
    t0 = time.perf_counter()
    result = simulate(cfg)
    t1 = time.perf_counter()
    appended = TelemetryStore(settings.telemetry_dir).append(result.events)
    name = f"simulator-seed{cfg.seed}-{cfg.start:%Y%m%dT%H%M}-{cfg.days:g}d-{cfg.clients}c"
    labels_path = LabelStore(settings.labels_dir).write(result.labels, name)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    _atomic_parquet(result.consumers, settings.consumers_path)
    pacsv.write_csv(result.consumers, settings.data_dir / "consumers.csv")
    truth_dir = settings.data_dir / "simulator"
    truth_dir.mkdir(parents=True, exist_ok=True)
    _atomic_parquet(result.clients, truth_dir / f"{name}-clients.parquet")
    t2 = time.perf_counter()
    emitted = None
    if emit:
        from telemetry.ingest.emit import emit_table

        emitted = emit_path or settings.data_dir / "emitted" / f"{name}.{emit}.log"
        emit_table(result.events, emit, emitted)
    return SimulationRun(
        result, appended, labels_path, settings.consumers_path, emitted, t1 - t0, t2 - t1
    )
