"""The as-of replay: a built day through the stream processor, cut at the grid's instants
(``features/asof.py`` says why; this module runs it for ``features/build.py``)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from config.settings import Settings
from features.asof import WINDOW_S, instants
from features.stream import STATE_COLUMNS, StreamProcessor

__all__ = ["replay_asof"]


def replay_asof(
    settings: Settings,
    events: pa.Table,
    start: datetime,
    end: datetime,
    *,
    first_seen: pa.Table | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> pa.Table | None:
    """Replay ``events`` (time-ordered; with the 24 h before ``start`` so the rolls are whole)
    through a stream processor, cut exactly at each grid instant of ``[start, end)``, and
    return the rows it pushes for the windows open at those instants (stamped, as pushed, at
    the newest event before the instant). Rows of closed windows are left out: the batch build
    writes those (None: no window open at any instant). ``first_seen`` (client_id, first_seen): client ages as the batch knows them."""
    grid = instants(start, end, settings.features.asof)
    ev = events.select(list(STATE_COLUMNS))
    ts = pc.cast(pc.cast(ev.column("timestamp"), pa.timestamp("us", "UTC")), pa.int64())
    t_us = ts.to_numpy(zero_copy_only=False)
    if len(t_us) > 1 and np.any(np.diff(t_us) < 0):
        raise ValueError("replay_asof: events must be ordered by timestamp")
    with tempfile.TemporaryDirectory(prefix="gatewise-asof-") as tmp:
        proc = StreamProcessor(settings, wall_clock=False, checkpoint_dir=Path(tmp))
        proc.con.execute(
            f"SET threads = {max(1, os.cpu_count() or 1)}"
        )  # a batch job, not a consumer
        if first_seen is not None:
            proc.seed_first_seen(first_seen)
        bounds = np.array([int(t.timestamp() * 1_000_000) for t in grid], dtype=np.int64)
        cuts = np.searchsorted(t_us, bounds, side="left")  # events strictly before the instant
        out: list[pa.Table] = []
        prev = 0
        for k, cut in enumerate(cuts):
            cut = int(cut)
            if cut > prev:
                res = proc.apply(ev.slice(prev, cut - prev))
                if res.latest is not None and res.latest.num_rows:
                    out.append(res.latest)
            prev = cut
            if progress is not None:
                progress(k + 1, len(cuts))
    if not out:
        return None
    rows = pa.concat_tables(out)
    et = rows.column("event_timestamp")
    et_us = pc.cast(pc.cast(et, pa.timestamp("us", "UTC")), pa.int64())
    w_us = WINDOW_S * 1_000_000
    # a client whose newest window had closed by the cut gets its final row: the build has it
    on_boundary = pc.equal(pc.subtract(et_us, pc.multiply(pc.divide(et_us, w_us), w_us)), 0)
    lo = pa.scalar(start, et.type)
    hi = pa.scalar(end, et.type)
    keep = pc.and_(
        pc.invert(on_boundary),
        pc.and_(pc.greater(et, lo), pc.less(et, hi)),
    )
    return rows.filter(keep)
