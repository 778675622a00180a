"""Shared bits of the benchmark scripts: machine facts and timing."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores, {mem:.0f} GiB, {cpu}, Python {platform.python_version()}"


def best_of(fn: Callable[[], Any], repeat: int = 3) -> tuple[float, Any]:
    """Fastest wall time of ``repeat`` runs, and the last result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def save_result(name: str, record: dict[str, Any]) -> Path:
    """Append ``record`` as one JSON line to ``benchmarks/results/<name>.jsonl``."""
    import json

    out = Path(__file__).parent / "results" / f"{name}.jsonl"
    out.parent.mkdir(exist_ok=True)
    with out.open("a") as fh:
        fh.write(json.dumps(record) + "\n")
    return out
