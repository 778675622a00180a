"""The labels table: ground truth per client window, kept apart from telemetry.

One row per (client, window start): ``label`` 1 = abusive, 0 = legitimate, ``source`` says
where it came from (``simulator``, ``import``, ``review``, ``weak``), ``scenario`` is the
simulator's role or an importer's note. Training joins it point in time with the features
(``models/data.py``); the backtest judges policies with it (``gateway/backtest.py``).

Stored as Parquet files under ``<data_dir>/labels/``; each named batch is one
file written atomically, so re-importing the same batch replaces it rather
than adding duplicates.

When several batches label the same window, one label counts (``resolve``): a reviewer's
over an imported one over the simulator's over a weak (labelling-function) one, and within a
source the most recently labelled.
"""

from __future__ import annotations

import os
import re
from datetime import datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from telemetry.schema import TS, conform

__all__ = ["LABELS_SCHEMA", "SOURCES", "LabelStore"]

# label sources, weakest first: resolve() keeps the strongest label of each window
SOURCES = ("weak", "simulator", "import", "review")

LABELS_SCHEMA = pa.schema(
    [
        pa.field("client_id", pa.string(), nullable=False),
        pa.field("event_timestamp", TS, nullable=False),  # start of the labelled window
        pa.field("label", pa.int8(), nullable=False),  # 1 = abusive
        pa.field("source", pa.string(), nullable=False),
        pa.field("scenario", pa.string()),  # the simulator's role, or an importer's note
        pa.field("labelled_at", TS),  # when the label was given (import time by default)
        pa.field("labelled_by", pa.string()),  # a reviewer, a team, a labelling model
        pa.field("probability", pa.float64()),  # weak labels: P(abusive)
    ]
)


class LabelStore:
    """``LabelStore(Path(".gatewise/labels")).write(table, "simulator-seed7")``"""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def write(self, table: pa.Table, name: str) -> Path:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ValueError(
                f"label batch name {name!r} may use letters, digits, '_', '.', '-' only"
            )
        table = conform(table, LABELS_SCHEMA)
        labels = table.column("label").to_pylist()
        if any(v not in (0, 1) for v in labels):
            raise ValueError("column 'label': values must be 0 (legitimate) or 1 (abusive)")
        unknown = sorted(set(table.column("source").to_pylist()) - set(SOURCES))
        if unknown:
            raise ValueError(f"column 'source': {unknown} not one of {list(SOURCES)}")
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / f"{name}.parquet"
        tmp = self.root / f".{name}.parquet.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, final)
        return final

    def read(
        self, available_at: datetime | None = None, delay: timedelta | None = None
    ) -> pa.Table:
        """All labels; with ``available_at`` and ``delay``, only those whose
        window started at least ``delay`` before ``available_at`` (labels arrive late)."""
        files = sorted(self.root.glob("*.parquet"))
        if not files:
            return LABELS_SCHEMA.empty_table()
        table = pa.concat_tables([conform(pq.read_table(f), LABELS_SCHEMA) for f in files])
        if available_at is not None:
            import pyarrow.compute as pc

            cutoff = pa.scalar(
                available_at - (delay or timedelta(0)), LABELS_SCHEMA.field("event_timestamp").type
            )
            table = table.filter(pc.less_equal(table.column("event_timestamp"), cutoff))
        return table

    def batches(self) -> list[tuple[str, pa.Table]]:
        """Every stored batch by name, oldest file first."""
        files = sorted(self.root.glob("*.parquet"), key=lambda f: (f.stat().st_mtime, f.name))
        return [(f.stem, conform(pq.read_table(f), LABELS_SCHEMA)) for f in files]

    @staticmethod
    def resolve(table: pa.Table) -> pa.Table:
        """One label per (client, window): the strongest source's (``SOURCES``), then the
        most recently labelled."""
        if table.num_rows == 0:
            return table
        import pyarrow.compute as pc

        rank = {s: i for i, s in enumerate(SOURCES)}
        ranks = pa.array([rank.get(s, -1) for s in table.column("source").to_pylist()], pa.int8())
        at = pc.fill_null(table.column("labelled_at"), pa.scalar(0, TS))
        t = table.append_column("_rank", ranks).append_column("_at", at)
        t = t.append_column("_row", pa.array(range(t.num_rows), pa.int64()))
        t = t.sort_by(
            [
                ("client_id", "ascending"),
                ("event_timestamp", "ascending"),
                ("_rank", "descending"),
                ("_at", "descending"),
                ("_row", "descending"),
            ]
        )
        cid, ts = t.column("client_id"), t.column("event_timestamp")
        same = pc.and_(
            pc.equal(cid.slice(1), cid.slice(0, t.num_rows - 1)),
            pc.equal(ts.slice(1), ts.slice(0, t.num_rows - 1)),
        )
        keep = pa.concat_arrays([pa.array([True]), pc.invert(same).combine_chunks()])
        return (
            t.filter(keep)
            .drop_columns(["_rank", "_at", "_row"])
            .sort_by([("event_timestamp", "ascending"), ("client_id", "ascending")])
        )
