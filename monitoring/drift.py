"""Data drift between a reference table and a current one: Evidently 0.7 ``DataDriftPreset``.

``check_drift(reference, current)`` samples both sides (``max_rows``, seeded) so a check over
millions of rows takes seconds, runs the preset over the shared columns, and turns Evidently's
metric values into one finding per column: the method Evidently chose for the column (a
p-value test on small samples, a distance on large ones), its value and threshold, and
whether it drifted (p-value below, distance at or above the threshold). The share of drifted
columns is the dataset verdict (``drift_share``: ``gatewise monitor check`` passes
``monitoring.policy.drift_share``; 0.5, Evidently's default, when called bare). Which columns
are worth judging is ``monitoring/columns.py``'s call (identifiers and times are not).

``save_report`` writes the Evidently snapshot as JSON and HTML for people to look at.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["ColumnDrift", "DriftResult", "check_drift", "save_report"]

_VALUE_DRIFT = re.compile(
    r"ValueDrift\(column=(?P<col>.+),method=(?P<method>.+),threshold=(?P<thr>[^)]+)\)"
)


@dataclass
class ColumnDrift:
    column: str
    method: str
    value: float
    threshold: float
    drifted: bool


@dataclass
class DriftResult:
    columns: list[ColumnDrift]
    share: float  # drifted columns / columns checked
    dataset_drift: bool
    drift_share: float
    reference_rows: int  # rows used (after sampling)
    current_rows: int
    sampled: bool
    snapshot: Any = field(default=None, repr=False)

    @property
    def drifted(self) -> list[str]:
        return [c.column for c in self.columns if c.drifted]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("snapshot", None)
        d["drifted"] = self.drifted
        return d


def _sample(df: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    return df if len(df) <= n else df.sample(n=n, random_state=seed)


def check_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: list[str] | None = None,
    *,
    max_rows: int = 50_000,
    drift_share: float = 0.5,
    seed: int = 0,
) -> DriftResult:
    """Per-column and overall drift of ``current`` against ``reference`` (see module doc)."""
    from evidently import Report
    from evidently.presets import DataDriftPreset

    if columns is None:
        columns = [c for c in reference.columns if c in current.columns]
    missing = [c for c in columns if c not in reference.columns or c not in current.columns]
    if missing:
        raise ValueError(f"columns missing from reference or current: {missing}")
    if not columns:
        raise ValueError("no column in common between reference and current")
    if reference.empty or current.empty:
        side = "reference" if reference.empty else "current"
        raise ValueError(f"the {side} table has no rows")
    ref = _sample(reference[columns], max_rows, seed)
    cur = _sample(current[columns], max_rows, seed + 1)
    snap = Report([DataDriftPreset(drift_share=drift_share)]).run(
        reference_data=ref.reset_index(drop=True), current_data=cur.reset_index(drop=True)
    )
    found = []
    for m in snap.dict()["metrics"]:
        hit = _VALUE_DRIFT.fullmatch(m["metric_name"])
        if hit is None:
            continue
        value, thr = float(m["value"]), float(hit["thr"])
        method = hit["method"]
        if math.isnan(value):
            drifted = False
        elif "p_value" in method:
            drifted = value < thr
        else:
            drifted = value >= thr
        found.append(ColumnDrift(hit["col"], method, value, thr, drifted))
    share = sum(c.drifted for c in found) / len(found) if found else 0.0
    return DriftResult(
        columns=found,
        share=share,
        dataset_drift=share >= drift_share,
        drift_share=drift_share,
        reference_rows=len(ref),
        current_rows=len(cur),
        sampled=len(ref) < len(reference) or len(cur) < len(current),
        snapshot=snap,
    )


def save_report(snapshot: Any, out_dir: Path, name: str = "drift") -> dict[str, Path]:
    """The Evidently snapshot as ``<name>.json`` and ``<name>.html`` under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / f"{name}.json", "html": out_dir / f"{name}.html"}
    snapshot.save_json(str(paths["json"]))
    snapshot.save_html(str(paths["html"]))
    return paths
