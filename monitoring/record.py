"""Where check results go: a queryable history table and the MLflow run they judge.

History: ``<data_dir>/monitoring/history/date=YYYY-MM-DD/<check_id>.parquet``, one row per
check and feature (drift) or per check, sensitive feature and group (bias), so "how has
``rate_401_1h`` drifted this month" or "region=ap's FPR over time" is one DuckDB query
(``read_history``). MLflow: the reports as artifacts under ``monitoring/<check_id>/`` of the run
(usually the champion's training run) and the drift share and worst FPR ratio as metrics,
stepped by check time, so the run's page shows how the model has fared since it shipped.
"""

from __future__ import annotations

import math
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

    from config.settings import Settings
    from monitoring.bias import BiasFinding
    from monitoring.drift import DriftResult

__all__ = ["append_history", "log_to_run", "new_check_id", "read_history"]


def new_check_id(at: datetime | None = None) -> str:
    at = at or datetime.now(UTC)
    return f"{at.strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:6]}"


def _schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            ("check_id", pa.string()),
            ("checked_at", pa.timestamp("us", "UTC")),
            ("source", pa.string()),  # what was compared, e.g. "files ref.csv vs cur.csv"
            ("kind", pa.string()),  # drift | bias
            ("feature", pa.string()),
            ("group", pa.string()),  # bias: the group; drift: null
            ("method", pa.string()),
            ("value", pa.float64()),  # drift: statistic; bias: FPR
            ("threshold", pa.float64()),
            ("flagged", pa.bool_()),  # drift: drifted; bias: worst group over the bound
            ("n", pa.int64()),
            ("selection_rate", pa.float64()),
            ("fnr", pa.float64()),
            ("judgeable", pa.bool_()),
            ("share", pa.float64()),  # drift: drifted share of the check; bias: FPR ratio
        ]
    )


def append_history(
    root: Path,
    check_id: str,
    at: datetime,
    source: str,
    drift: DriftResult | None,
    bias: list[BiasFinding],
    max_fpr_ratio: float = 1.25,
) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = []
    base = {"check_id": check_id, "checked_at": at, "source": source}
    if drift is not None:
        for c in drift.columns:
            rows.append(
                base
                | {
                    "kind": "drift",
                    "feature": c.column,
                    "method": c.method,
                    "value": c.value,
                    "threshold": c.threshold,
                    "flagged": c.drifted,
                    "share": drift.share,
                }
            )
    for b in bias:
        ratio = None if b.fpr_ratio is None or math.isinf(b.fpr_ratio) else b.fpr_ratio
        for g in b.groups:
            rows.append(
                base
                | {
                    "kind": "bias",
                    "feature": b.feature,
                    "group": g.group,
                    "method": "fpr",
                    "value": g.fpr,
                    "threshold": max_fpr_ratio,
                    "flagged": g.group == b.worst_fpr_group
                    and b.fpr_ratio is not None
                    and b.fpr_ratio > max_fpr_ratio,
                    "n": g.n,
                    "selection_rate": g.selection_rate,
                    "fnr": g.fnr,
                    "judgeable": g.judgeable,
                    "share": ratio,
                }
            )
    part = root / f"date={at.strftime('%Y-%m-%d')}"
    part.mkdir(parents=True, exist_ok=True)
    path = part / f"{check_id}.parquet"
    tmp = part / f".{check_id}.tmp"
    pq.write_table(pa.Table.from_pylist(rows, schema=_schema()), tmp)
    os.replace(tmp, path)
    return path


def read_history(root: Path) -> pa.Table:
    """Every recorded check row, oldest first."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted(Path(root).glob("date=*/*.parquet"))
    if not files:
        return _schema().empty_table()
    t = pa.concat_tables(pq.read_table(f, schema=_schema()) for f in files)
    return t.sort_by([("checked_at", "ascending"), ("kind", "ascending")])


def log_to_run(
    settings: Settings,
    run_id: str,
    check_id: str,
    at: datetime,
    files: list[Path],
    drift: DriftResult | None,
    bias: list[BiasFinding],
) -> None:
    """Reports as artifacts of ``run_id`` under ``monitoring/<check_id>``; metrics stepped by
    check time (seconds)."""
    from mlflow.entities import Metric

    from models.tracking import client

    c = client(settings)
    for f in files:
        c.log_artifact(run_id, str(f), artifact_path=f"monitoring/{check_id}")
    ts = int(at.timestamp() * 1000)
    step = int(at.timestamp())
    metrics = []
    if drift is not None:
        metrics.append(Metric("monitor_drift_share", drift.share, ts, step))
    for b in bias:
        if b.fpr_ratio is not None and not math.isinf(b.fpr_ratio):
            metrics.append(Metric(f"monitor_fpr_ratio_{b.feature}", b.fpr_ratio, ts, step))
    if metrics:
        c.log_batch(run_id, metrics=metrics)
