"""A labelled simulation: the simulator's telemetry and consumers, and its truth imported
into the labels table (``source = "simulator"``).

``run, labels_path = simulate_labelled(settings)``

The demo, the tests and most benchmarks start here. A data dir that should look like a
real gateway's (telemetry and consumers, no labels) calls
``telemetry.simulator.output.run_simulation`` with a ``truth_dir`` outside it instead.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow as pa

from config.settings import Settings
from labeling.store import LabelStore
from telemetry.simulator import SimulationResult
from telemetry.simulator.output import SimulationRun, run_simulation

__all__ = ["simulate_labelled"]


def simulate_labelled(
    settings: Settings,
    *,
    emit: str | None = None,
    emit_path: Path | None = None,
    transform: Callable[[pa.Table, SimulationResult], pa.Table] | None = None,
) -> tuple[SimulationRun, Path]:
    """Simulate per ``settings.simulator``; returns the run and the label batch it wrote
    (re-running the same simulation replaces that batch: no duplicates). ``transform``: see
    ``run_simulation``."""
    run = run_simulation(settings, emit=emit, emit_path=emit_path, transform=transform)
    path = LabelStore(settings.labels_dir).write(run.result.labels, run.name)
    return run, path
