"""Training rows as the online store held them: as-of snapshots inside windows.

``/score`` reads the online store, where the stream processor keeps each client's *open*
window, stamped at the newest event: a minute into a window, ``request_count_5m`` counts one
minute of traffic and the 1 h / 24 h rolls hold the previous windows plus that minute. A
training row joined at a window's start sees only closed windows. To train on the
distribution that is served, the batch build replays each day through the stream processor
itself (``features/stream.py``: the same definitions, the same state, the same stamps) and
keeps the rows it would have pushed at a grid of instants inside windows:
``features.asof.every_minutes`` apart, each ``offsets_s`` seconds into its window (cycled),
e.g. every 30 minutes: 00:01:00, 00:32:30, 01:04:00, 01:31:00, ...

Those rows go to ``client_windows_asof/date=.../part-0.parquet``; the Feast source
``client_asof_source`` reads them together with the closed-window rows, so a point-in-time
join at an instant T returns what the online store held at T (the parity test drives a live
processor with arbitrary micro-batches and compares). ``models/data.py`` adds, for every
labelled window, a training row at each grid instant inside it (service ``abuse_asof_v1``).

    rows = replay_asof(settings, events, day_start, day_end, first_seen=table)  # asof_replay.py
    entity = asof_entity_rows(settings, labelled, window_minutes=5)

The grid and the training rows live here; the replay (which runs the stream processor) in
``features/asof_replay.py``, so readers of training sets never import the stream.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from config.settings import AsOfSettings, Settings
from features.windows import WINDOW_MINUTES

__all__ = ["ASOF_DATASET", "asof_days", "asof_entity_rows", "instants"]

ASOF_DATASET = "client_windows_asof"
WINDOW_S = WINDOW_MINUTES * 60


def instants(start: datetime, end: datetime, cfg: AsOfSettings) -> list[datetime]:
    """The grid instants in ``[start, end)``. The grid is laid per UTC day, so a range gives
    the same instants however it is cut."""
    out: list[datetime] = []
    day = datetime(start.year, start.month, start.day, tzinfo=UTC)
    step = timedelta(minutes=cfg.every_minutes)
    while day < end:
        nxt = day + timedelta(days=1)
        j = 0
        slot = day
        while slot < nxt:
            # the window the slot falls in, then the offset into that window
            w0 = day + timedelta(seconds=(int((slot - day).total_seconds()) // WINDOW_S) * WINDOW_S)
            t = w0 + timedelta(seconds=cfg.offsets_s[j % len(cfg.offsets_s)])
            if start <= t < end and t < nxt:
                out.append(t)
            j += 1
            slot += step
        day = nxt
    return out


def asof_days(settings: Settings) -> list[str]:
    """Days (ISO dates) whose as-of snapshots are built."""
    root = settings.features_dir / ASOF_DATASET
    return sorted(p.parent.name.split("=", 1)[1] for p in root.glob("date=*/part-0.parquet"))


def asof_entity_rows(settings: Settings, entity_df: Any, window_minutes: int) -> Any:
    """``entity_df`` (rows stamped at the start of a ``window_minutes`` labelled window) plus,
    for each, a copy at every grid instant inside its window on the days that have
    snapshots: the label of a window also holds at the instants the gateway scores it. The
    copies are marked ``as_of = True``; the originals (``False``) join the closed windows
    before the label, as always."""
    import pandas as pd

    df = entity_df.copy()
    df["as_of"] = False
    days = asof_days(settings)
    if not days or df.empty:
        return df
    grid: list[datetime] = []
    for d in days:
        d0 = datetime.fromisoformat(d).replace(tzinfo=UTC)
        grid += instants(d0, d0 + timedelta(days=1), settings.features.asof)
    g = pd.DataFrame({"_t": pd.to_datetime(grid, utc=True)})
    g["_w"] = g["_t"].dt.floor(f"{window_minutes}min")
    ts = pd.to_datetime(df["event_timestamp"], utc=True)
    left = df.assign(_w=ts.dt.floor(f"{window_minutes}min"))
    # only rows stamped at a window start expand; others (an imported label at 10:02) stay
    left = left[left["_w"] == ts]
    extra = left.merge(g, on="_w", how="inner")
    if extra.empty:
        return df
    extra["event_timestamp"] = extra["_t"].astype(df["event_timestamp"].dtype)
    extra["as_of"] = True
    extra = extra.drop(columns=["_w", "_t"])
    return pd.concat([df, extra[df.columns]], ignore_index=True)
