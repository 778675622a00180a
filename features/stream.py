"""The stream processor: live telemetry -> the same window features, in the online store in seconds.

One definition, two schedules. ``features/windows.py`` splits the client features into stage 1
(events -> per client and 5-minute window: ``base`` counts and ``pairs`` of distinct values)
and stage 2 (``base`` + ``pairs`` -> rolling 5m/1h/24h features). The batch build runs both in
one statement over a day; this module runs stage 1 over the *open* windows of the clients in a
micro-batch and stage 2 over the state it keeps per client, and holds no feature SQL itself.

State (Arrow tables in memory, checkpointed as Parquet):

- ``raw``: events of the open windows (the window of the watermark and those within the
  allowed lateness), so a late event re-derives its window exactly;
- ``carry``: each client's last event per route before the open windows (an event's gap and id
  step look at the previous one; the definitions ignore gaps over 24 h, so carry expires then);
- ``base``/``pairs``: stage-1 rows of the last 24 h (the longest rolling window);
- ``first_seen``: client age.

Each micro-batch: events older than the open windows are counted (``too_late``) and left to the
next batch build; the rest update their windows; the touched clients' newest rows are pushed to
Feast's online store through the push source (stamped at the watermark: "as of the newest
event", never in the future); windows that fall out of the lateness are closed, their final rows
handed to ``on_final`` (the parity test compares them with the batch build) and pushed when they
are still a client's newest. Then the checkpoint (state + broker positions, one atomic rename),
then the broker acknowledgement: a restart resumes from the checkpoint and skips redelivered
entries at or before its positions, so no window counts an event twice.

Partitions: the gateway splits clients by ``partition_of(client_id)``; a processor owns a set of
partitions (``--partitions 0,1``) and keeps one state for them. ``shared_address_degree_1h``
counts clients on one address across the processor's own partitions: exact with one processor,
a lower bound with several (the batch build, which sees every client, corrects it).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from config.settings import Settings
from config.stream import StreamSettings
from features.windows import (
    WINDOW_MINUTES,
    client_base_sql,
    client_roll_sql,
    client_state_compact_sql,
)
from telemetry.stream import Broker, Entry, decode, make_broker, position_key

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["PUSH_SOURCE", "STATE_COLUMNS", "BatchResult", "StreamProcessor", "feast_pusher"]

log = logging.getLogger("gatewise.stream")

PUSH_SOURCE = "client_windows_push"
WINDOW = timedelta(minutes=WINDOW_MINUTES)
DAY = timedelta(hours=24)
# what stage 1 reads of an event
STATE_COLUMNS = (
    "timestamp",
    "request_id",
    "client_id",
    "client_address",
    "user_agent",
    "http_request_method",
    "url_path",
    "http_route",
    "http_response_status_code",
    "duration_ms",
    "request_bytes",
    "response_bytes",
    "ratelimit_decision",
)


def _floor(ts: datetime) -> datetime:
    step = int(WINDOW.total_seconds())
    return datetime.fromtimestamp(int(ts.timestamp()) // step * step, UTC)


@dataclass
class BatchResult:
    entries: int = 0  # broker entries read (some may be skipped redeliveries)
    events: int = 0
    applied: int = 0
    out_of_order: int = 0  # applied, though older than the watermark
    too_late: int = 0
    duplicates: int = 0
    touched: int = 0
    closed_windows: int = 0
    pushed: int = 0
    seconds: float = 0.0
    latest: Any = None  # pa.Table: newest row per touched client (what was pushed)
    final: Any = None  # pa.Table: rows of windows closed in this batch


@dataclass
class _Counters:
    events: int = 0
    applied: int = 0
    out_of_order: int = 0
    too_late: int = 0
    duplicates: int = 0
    redelivered_skipped: int = 0  # broker entries the checkpoint already holds
    batches: int = 0
    pushed_rows: int = 0
    closed_windows: int = 0
    checkpoints: int = 0
    alerts: int = 0
    busy_s: float = 0.0
    last_batch_s: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


class StreamProcessor:
    """Keeps window state for the clients of ``partitions`` and turns micro-batches of events
    into feature rows (see the module doc). ``apply`` is the pure part (tests drive it
    directly); ``poll_once``/``run`` add the broker, the online push and checkpoints."""

    def __init__(
        self,
        settings: Settings,
        partitions: Sequence[int] | None = None,
        *,
        broker: Broker | None = None,
        push: Callable[[pa.Table], None] | None = None,
        on_final: Callable[[pa.Table], None] | None = None,
        before_checkpoint: Callable[[], None] | None = None,
        alerts: Any = None,
        checkpoint_dir: Path | None = None,
        wall_clock: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        import duckdb
        import pyarrow as pa

        self.settings = settings
        self.cfg: StreamSettings = settings.stream
        self.partitions = sorted(
            range(self.cfg.partitions) if partitions is None else set(partitions)
        )
        bad = [p for p in self.partitions if not 0 <= p < self.cfg.partitions]
        if bad:
            raise ValueError(f"partitions {bad} outside 0..{self.cfg.partitions - 1}")
        self.consumer = "p" + "-".join(map(str, self.partitions))
        self.checkpoint_dir = checkpoint_dir or settings.data_dir / "stream" / self.consumer
        self.broker = broker
        self.push = push
        self.on_final = on_final
        self.before_checkpoint = before_checkpoint
        self.alerts = alerts
        self.wall_clock = wall_clock
        self.clock = clock
        self.lateness = timedelta(seconds=self.cfg.allowed_lateness_s)
        self.con = duckdb.connect()
        self.con.execute("SET TimeZone = 'UTC'")
        self.con.execute("SET threads = 1")  # one core per consumer process
        # the schema of the state tables is whatever the definitions produce; start empty
        from telemetry.schema import EVENT_SCHEMA

        ev_schema = pa.schema([EVENT_SCHEMA.field(c) for c in STATE_COLUMNS])
        self.raw: pa.Table = ev_schema.empty_table()
        self.carry: pa.Table = ev_schema.empty_table()
        self._ev_schema = ev_schema
        self.con.register("ev", self.raw)
        self.base: pa.Table = self.con.sql(client_base_sql("base")).to_arrow_table()
        self.pairs: pa.Table = self.con.sql(client_base_sql("pairs")).to_arrow_table()
        self.first_seen: dict[str, datetime] = {}
        self.watermark: datetime | None = None
        self.horizon: datetime | None = None  # start of the oldest open window
        self.positions: dict[int, str] = {}
        self.counters = _Counters()
        self._recent_ids: dict[str, datetime] = {}  # bootstrap overlap: request_id -> ts
        self._unacked: list[Entry] = []
        self._last_checkpoint = 0.0
        self._lock = threading.Lock()

    # -- the pure part -------------------------------------------------------------
    def apply(self, events: pa.Table) -> BatchResult:
        """One micro-batch of events (any columns of the telemetry contract)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        t0 = time.perf_counter()
        res = BatchResult(events=events.num_rows)
        ev = events.select(list(STATE_COLUMNS)).cast(self._ev_schema)
        if self._recent_ids and ev.num_rows:
            dup = pc.is_in(ev.column("request_id"), pa.array(list(self._recent_ids), pa.string()))
            res.duplicates = int(pc.sum(dup).as_py() or 0)
            if res.duplicates:
                ev = ev.filter(pc.invert(dup))
        h_old = self.horizon
        touched: pa.Array | None = None
        since_b: datetime | None = None
        if h_old is not None and ev.num_rows:
            on_time = pc.greater_equal(
                ev.column("timestamp"), pa.scalar(h_old, pa.timestamp("us", "UTC"))
            )
            res.too_late = ev.num_rows - int(pc.sum(on_time).as_py() or 0)
            ev = ev.filter(on_time)
        if ev.num_rows:
            if self.watermark is not None:
                res.out_of_order = int(
                    pc.sum(
                        pc.less(
                            ev.column("timestamp"),
                            pa.scalar(self.watermark, pa.timestamp("us", "UTC")),
                        )
                    ).as_py()
                    or 0
                )
            newest = pc.max(ev.column("timestamp")).as_py()
            self.watermark = newest if self.watermark is None else max(self.watermark, newest)
            if h_old is None:
                h_old = _floor(pc.min(ev.column("timestamp")).as_py())
                self.horizon = h_old
            self.raw = pa.concat_tables([self.raw, ev])
            res.applied = ev.num_rows
            touched = pc.unique(ev.column("client_id"))
            res.touched = len(touched)
            self._update_first_seen(ev)
            # only the windows this batch touched change (from its oldest event's window on)
            since_b = max(h_old, _floor(pc.min(ev.column("timestamp")).as_py()))
            self._recompute_base(touched, since_b)
        # advance the horizon: windows older than the lateness close
        h_new = None
        if self.watermark is not None:
            eff = self.watermark
            if self.wall_clock:
                eff = max(eff, datetime.fromtimestamp(self.clock(), UTC) - self.lateness)
            h_new = _floor(eff - self.lateness)
            if self.horizon is None or h_new <= self.horizon:
                h_new = None
        # one stage-2 run for the touched clients (their newest rows) and the clients of the
        # closing windows (their final rows)
        closing = self._clients_between(self.horizon, h_new) if h_new is not None else None
        if res.applied or closing is not None:
            parts = [a for a in (touched if res.applied else None, closing) if a is not None]
            clients = pc.unique(pa.concat_arrays(parts)) if len(parts) > 1 else parts[0]
            # (the touched clients need their windows from since_b on; closing ones from the
            # old horizon)
            starts = [since_b if res.applied else None]
            if closing is not None and len(closing):
                starts.append(self.horizon)
            since = min((d for d in starts if d is not None), default=None)
            rows = None
            if len(clients) and since is not None:
                rows = self._roll(clients, since=since, latest_only=False)
            if res.applied and rows is not None:
                res.latest = self._latest_of(rows, touched)
            if h_new is not None and self.horizon is not None:
                res.final = self._close(self.horizon, h_new, rows)
                res.closed_windows = 0 if res.final is None else res.final.num_rows
        to_push = self._push_rows(res)
        res.pushed = 0 if to_push is None else to_push.num_rows
        if to_push is not None and to_push.num_rows and self.push is not None:
            self.push(to_push)
        if res.final is not None and res.final.num_rows and self.on_final is not None:
            self.on_final(res.final)
        c = self.counters
        c.events += res.events
        c.applied += res.applied
        c.out_of_order += res.out_of_order
        c.too_late += res.too_late
        c.duplicates += res.duplicates
        c.batches += 1
        c.pushed_rows += res.pushed
        c.closed_windows += res.closed_windows
        res.seconds = time.perf_counter() - t0
        c.busy_s += res.seconds
        c.last_batch_s = res.seconds
        return res

    def close_all(self) -> pa.Table | None:
        """Close every open window (drain at shutdown, or the end of a replay)."""
        if self.horizon is None or self.watermark is None:
            return None
        final = self._close(self.horizon, _floor(self.watermark) + WINDOW)
        if final is not None and final.num_rows:
            rows = self._newest_final(final)
            if rows is not None and rows.num_rows and self.push is not None:
                self.push(rows)
            if self.on_final is not None:
                self.on_final(final)
        return final

    def seed_first_seen(self, table: pa.Table) -> None:
        """Client ages as the batch build knows them (``client_id``, ``first_seen``): a
        processor sees 24 h of history, the build every day since the first."""
        for cid, ts in zip(
            table.column("client_id").to_pylist(),
            table.column("first_seen").to_pylist(),
            strict=True,
        ):
            old = self.first_seen.get(cid)
            if ts is not None and (old is None or ts < old):
                self.first_seen[cid] = ts

    def _update_first_seen(self, ev: pa.Table) -> None:
        g = ev.group_by("client_id").aggregate([("timestamp", "min")])
        for cid, ts in zip(
            g.column("client_id").to_pylist(), g.column("timestamp_min").to_pylist(), strict=True
        ):
            old = self.first_seen.get(cid)
            if old is None or ts < old:
                self.first_seen[cid] = ts

    def _first_seen_table(self, clients: pa.Array) -> pa.Table:
        import pyarrow as pa

        ids = clients.to_pylist()
        return pa.table(
            {
                "client_id": pa.array(ids, pa.string()),
                "first_seen": pa.array(
                    [self.first_seen.get(c) for c in ids], pa.timestamp("us", "UTC")
                ),
            }
        )

    def _recompute_base(self, touched: pa.Array, since: datetime) -> None:
        """Stage 1 over the windows of ``touched`` from ``since`` on. Their events are all in
        ``raw``; an event's gap and id step also need the client's previous event (per route),
        which is the last per client and route of the carry and of ``raw`` before ``since``."""
        import pyarrow as pa
        import pyarrow.compute as pc

        ts = pa.scalar(since, pa.timestamp("us", "UTC"))
        raw = self.raw.filter(pc.is_in(self.raw.column("client_id"), touched))
        after = pc.greater_equal(raw.column("timestamp"), ts)
        before = pa.concat_tables(
            [
                self.carry.filter(pc.is_in(self.carry.column("client_id"), touched)),
                raw.filter(pc.invert(after)),
            ]
        )
        self.con.register("ctx", before)
        context = self.con.sql(
            "SELECT * FROM ctx QUALIFY row_number() OVER "
            "(PARTITION BY client_id, http_route ORDER BY timestamp DESC, request_id DESC) = 1"
        ).to_arrow_table()
        self.con.unregister("ctx")
        ev = pa.concat_tables([context.cast(self._ev_schema), raw.filter(after)])
        self.con.register("ev", ev)
        since_lit = f"TIMESTAMPTZ '{since.isoformat()}'"
        new = {
            rel: self.con.sql(
                f"SELECT * FROM ({client_base_sql(rel)}) WHERE window_start >= {since_lit}"
            ).to_arrow_table()
            for rel in ("base", "pairs")
        }
        self.con.unregister("ev")
        ts_type = self.base.schema.field("window_start").type
        since_s = pa.scalar(since, ts_type)
        for rel in ("base", "pairs"):
            old: pa.Table = getattr(self, rel)
            stale = pc.and_(
                pc.is_in(old.column("client_id"), touched),
                pc.greater_equal(old.column("window_start"), since_s),
            )
            setattr(
                self,
                rel,
                pa.concat_tables([old.filter(pc.invert(stale)), new[rel].cast(old.schema)]),
            )

    def _roll(self, clients: pa.Array, since: datetime, latest_only: bool) -> pa.Table:
        """Stage 2 for ``clients``: rows of windows starting at or after ``since``."""
        import pyarrow as pa
        import pyarrow.compute as pc

        base = self.base.filter(pc.is_in(self.base.column("client_id"), clients))
        # address sharing counts the other clients seen on these clients' addresses: their
        # address rows of the last hour come along (they get no rows of their own: no base)
        addr = pc.equal(self.pairs.column("dim"), "addresses")
        ts_type = self.pairs.schema.field("window_start").type
        recent = pc.and_(
            addr,
            pc.greater_equal(
                self.pairs.column("window_start"), pa.scalar(since - timedelta(hours=1), ts_type)
            ),
        )
        mine = pc.is_in(self.pairs.column("client_id"), clients)
        my_addr = self.pairs.filter(pc.and_(recent, mine)).column("v")
        others = pc.and_(
            pc.and_(recent, pc.invert(mine)), pc.is_in(self.pairs.column("v"), my_addr)
        )
        pairs = self.pairs.filter(pc.or_(mine, others))
        last = pc.max(base.column("window_start")).as_py() if base.num_rows else since
        lits = (f"TIMESTAMPTZ '{since.isoformat()}'", f"TIMESTAMPTZ '{last.isoformat()}'")
        self.con.register("base_state", base)
        self.con.register("pairs_state", pairs)
        for rel in ("base", "pairs"):
            sql = client_state_compact_sql(rel, f"{rel}_state", *lits)
            self.con.register(rel, self.con.sql(sql).to_arrow_table())
        self.con.register("first_seen", self._first_seen_table(clients))
        since_lit = f"TIMESTAMPTZ '{(since + WINDOW).isoformat()}'"
        wm = f"TIMESTAMPTZ '{self.watermark.isoformat()}'" if self.watermark else "NULL"
        sql = f"SELECT * FROM ({client_roll_sql()}) WHERE event_timestamp >= {since_lit}"
        if latest_only:
            # as of the newest event: an open window is stamped at the watermark, not its end
            sql = (
                f"SELECT * REPLACE (least(event_timestamp, {wm}) AS event_timestamp) FROM ({sql}) "
                "QUALIFY row_number() OVER (PARTITION BY client_id ORDER BY event_timestamp DESC) = 1"
            )
        out = self.con.sql(sql).to_arrow_table()
        for rel in ("base", "pairs", "first_seen", "base_state", "pairs_state"):
            self.con.unregister(rel)
        return out

    def _clients_between(self, h_old: datetime | None, h_new: datetime | None) -> pa.Array | None:
        """Clients with traffic in the windows [h_old, h_new)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if h_old is None or h_new is None:
            return None
        ts_type = self.base.schema.field("window_start").type
        in_range = pc.and_(
            pc.greater_equal(self.base.column("window_start"), pa.scalar(h_old, ts_type)),
            pc.less(self.base.column("window_start"), pa.scalar(h_new, ts_type)),
        )
        return pc.unique(self.base.filter(in_range).column("client_id"))

    def _latest_of(self, rows: pa.Table, clients: pa.Array) -> pa.Table:
        """Each client's newest row, stamped as of the newest event (an open window is stamped
        at the watermark, not at its end)."""
        import pyarrow.compute as pc

        self.con.register("r", rows.filter(pc.is_in(rows.column("client_id"), clients)))
        wm = f"TIMESTAMPTZ '{self.watermark.isoformat()}'" if self.watermark else "NULL"
        out = self.con.sql(
            f"SELECT * REPLACE (least(event_timestamp, {wm}) AS event_timestamp) FROM r "
            "QUALIFY row_number() OVER (PARTITION BY client_id ORDER BY event_timestamp DESC) = 1"
        ).to_arrow_table()
        self.con.unregister("r")
        return out

    def _close(
        self, h_old: datetime, h_new: datetime, rows: pa.Table | None = None
    ) -> pa.Table | None:
        """Close windows in [h_old, h_new): final rows, events -> carry, prune old state.
        ``rows``: stage 2 already run from ``h_old`` on for (at least) the closing clients."""
        import pyarrow as pa
        import pyarrow.compute as pc

        ts_type = self.base.schema.field("window_start").type
        clients = self._clients_between(h_old, h_new)
        final = None
        if clients is not None and len(clients):
            if rows is None:
                rows = self._roll(clients, since=h_old, latest_only=False)
            et = rows.schema.field("event_timestamp").type
            keep = pc.and_(
                pc.and_(
                    pc.greater(rows.column("event_timestamp"), pa.scalar(h_old, et)),
                    pc.less_equal(rows.column("event_timestamp"), pa.scalar(h_new, et)),
                ),
                pc.is_in(rows.column("client_id"), clients),
            )
            final = rows.filter(keep)
        # events of the closed windows leave raw; the last per client and route is carried
        ev_ts = pa.scalar(h_new, pa.timestamp("us", "UTC"))
        closing = pc.less(self.raw.column("timestamp"), ev_ts)
        if pc.any(closing).as_py():
            self.con.register("c", pa.concat_tables([self.carry, self.raw.filter(closing)]))
            self.carry = (
                self.con.sql(
                    "SELECT * FROM c QUALIFY row_number() OVER "
                    "(PARTITION BY client_id, http_route ORDER BY timestamp DESC, request_id DESC) = 1"
                )
                .to_arrow_table()
                .cast(self._ev_schema)
            )
            self.con.unregister("c")
            self.raw = self.raw.filter(pc.invert(closing))
        keep_from = h_new - DAY + WINDOW
        for rel in ("base", "pairs"):
            t: pa.Table = getattr(self, rel)
            setattr(
                self,
                rel,
                t.filter(pc.greater_equal(t.column("window_start"), pa.scalar(keep_from, ts_type))),
            )
        self.carry = self.carry.filter(
            pc.greater_equal(
                self.carry.column("timestamp"), pa.scalar(h_new - DAY, pa.timestamp("us", "UTC"))
            )
        )
        horizon_cut = h_new - timedelta(minutes=10)
        self._recent_ids = {k: v for k, v in self._recent_ids.items() if v >= horizon_cut}
        self.horizon = h_new
        return final

    def _newest_final(self, final: pa.Table) -> pa.Table | None:
        """Final rows that are still their client's newest window (no later base rows)."""
        import pyarrow.compute as pc

        if final is None or not final.num_rows:
            return None
        self.con.register("f", final)
        self.con.register("b", self.base.select(["client_id", "window_start"]))
        rows = self.con.sql(f"""
            SELECT f.* FROM f
            LEFT JOIN (SELECT client_id, max(window_start) + INTERVAL {WINDOW_MINUTES} MINUTES AS last_end
                       FROM b GROUP BY client_id) l USING (client_id)
            WHERE l.last_end IS NULL OR f.event_timestamp >= l.last_end
            QUALIFY row_number() OVER (PARTITION BY client_id ORDER BY event_timestamp DESC) = 1
        """).to_arrow_table()
        self.con.unregister("f")
        self.con.unregister("b")
        del pc
        return rows

    def _push_rows(self, res: BatchResult) -> pa.Table | None:
        import pyarrow as pa
        import pyarrow.compute as pc

        parts = []
        closed = self._newest_final(res.final) if res.final is not None else None
        if res.latest is not None and res.latest.num_rows:
            latest = res.latest
            if closed is not None and closed.num_rows:
                # a client whose newest window just closed gets its final row instead
                latest = latest.filter(
                    pc.invert(pc.is_in(latest.column("client_id"), closed.column("client_id")))
                )
            parts.append(latest)
        if closed is not None and closed.num_rows:
            parts.append(closed.cast(parts[0].schema) if parts else closed)
        if not parts:
            return None
        return pa.concat_tables(parts)

    # -- bootstrap ---------------------------------------------------------------------
    def bootstrap(self, hours: float | None = None) -> int:
        """A fresh processor seeds its state from the last ``hours`` of stored telemetry of its
        partitions, so 1 h/24 h features are whole from the first batch. Request ids of the
        last minutes are remembered: the same events arriving through the stream are skipped."""
        import pyarrow as pa
        import pyarrow.compute as pc

        from telemetry.store import TelemetryStore
        from telemetry.stream import partition_of

        hours = self.cfg.bootstrap_hours if hours is None else hours
        seen = self.settings.features_dir / "state" / "first_seen.parquet"
        if seen.exists():
            import pyarrow.parquet as pq

            self.seed_first_seen(pq.read_table(seen))
        store = TelemetryStore(self.settings.telemetry_dir)
        if hours <= 0 or not store.root.exists():
            return 0
        now = datetime.fromtimestamp(self.clock(), UTC)
        rel = store.relation_sql(now - timedelta(hours=hours), now + timedelta(minutes=5))
        cols = ", ".join(STATE_COLUMNS)
        try:
            t = self.con.sql(f"SELECT {cols} FROM ({rel}) ORDER BY timestamp").to_arrow_table()
        except Exception as exc:  # an empty store has no files to scan
            log.info("bootstrap: no stored telemetry (%s)", exc)
            return 0
        if not t.num_rows:
            return 0
        n = self.cfg.partitions
        mine = pa.array(
            [partition_of(c, n) in self.partitions for c in t.column("client_id").to_pylist()]
        )
        t = t.filter(mine).cast(self._ev_schema)
        recent = pc.greater_equal(
            t.column("timestamp"), pa.scalar(now - timedelta(minutes=10), pa.timestamp("us", "UTC"))
        )
        r = t.filter(recent)
        saved, self.push, self.on_final = (self.push, self.on_final), None, None
        try:
            self.apply(t)
        finally:
            self.push, self.on_final = saved
        self._recent_ids = dict(
            zip(r.column("request_id").to_pylist(), r.column("timestamp").to_pylist(), strict=True)
        )
        return t.num_rows

    # -- broker, checkpoints, the loop ---------------------------------------------------
    def poll_once(self, count: int = 200, block_ms: int = 0) -> BatchResult:
        """Read what is there (up to ``count`` entries per partition), apply, checkpoint, ack."""
        import pyarrow as pa

        if self.broker is None:
            self.broker = make_broker(self.cfg)
            self.broker.ensure_group(self.partitions)
        entries = self.broker.read(self.partitions, self.consumer, count, block_ms)
        fresh, tables = [], []
        for e in entries:
            seen = self.positions.get(e.partition)
            if seen is not None and position_key(e.id) <= position_key(seen):
                # in the checkpoint, never acknowledged (a crash in between): skip
                self.counters.redelivered_skipped += 1
                continue
            fresh.append(e)
            tables.append(decode(e.payload))
        if tables:
            batch = pa.concat_tables(tables, promote_options="permissive")
        else:
            from telemetry.schema import EVENT_SCHEMA

            batch = EVENT_SCHEMA.empty_table()
        if self.alerts is not None and batch.num_rows:
            try:
                self.counters.alerts += len(self.alerts.process(batch))
            except Exception:
                log.exception("alert evaluation failed on a batch of %d events", batch.num_rows)
        res = self.apply(batch)
        res.entries = len(entries)
        for e in fresh:
            prev = self.positions.get(e.partition)
            if prev is None or position_key(e.id) > position_key(prev):
                self.positions[e.partition] = e.id
        self._unacked += entries
        if self._unacked and (
            time.monotonic() - self._last_checkpoint >= self.cfg.checkpoint_interval_s
        ):
            self.checkpoint()
        return res

    def checkpoint(self) -> Path:
        """State and positions in one new directory, made current by one atomic rename of the
        pointer file; then the broker acknowledgement of what the state contains."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.before_checkpoint is not None:
            self.before_checkpoint()  # e.g. wait for pushes in flight
        root = self.checkpoint_dir
        root.mkdir(parents=True, exist_ok=True)
        self.counters.checkpoints += 1
        name = f"ckpt-{int(time.time() * 1000)}-{self.counters.checkpoints}"
        d = root / name
        d.mkdir()
        for rel in ("raw", "carry", "base", "pairs"):
            pq.write_table(getattr(self, rel), d / f"{rel}.parquet")
        fs = pa.table(
            {
                "client_id": pa.array(list(self.first_seen), pa.string()),
                "first_seen": pa.array(list(self.first_seen.values()), pa.timestamp("us", "UTC")),
            }
        )
        pq.write_table(fs, d / "first_seen.parquet")
        meta = {
            "partitions": self.partitions,
            "positions": {str(k): v for k, v in self.positions.items()},
            "watermark": self.watermark.isoformat() if self.watermark else None,
            "horizon": self.horizon.isoformat() if self.horizon else None,
            "recent_ids": {k: v.isoformat() for k, v in self._recent_ids.items()},
            "alerts": self.alerts.state() if self.alerts is not None else None,
            "written_at": datetime.now(UTC).isoformat(),
        }
        (d / "meta.json").write_text(json.dumps(meta))
        tmp = root / ".CURRENT.tmp"
        tmp.write_text(name)
        os.replace(tmp, root / "CURRENT")
        for old in root.glob("ckpt-*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)
        self._last_checkpoint = time.monotonic()
        if self._unacked and self.broker is not None:
            self.broker.ack(self._unacked)
        self._unacked = []
        return d

    def restore(self) -> bool:
        """Load the current checkpoint, if any. Returns whether one was loaded."""
        import pyarrow.parquet as pq

        ptr = self.checkpoint_dir / "CURRENT"
        if not ptr.exists():
            return False
        d = self.checkpoint_dir / ptr.read_text().strip()
        meta = json.loads((d / "meta.json").read_text())
        if sorted(meta["partitions"]) != self.partitions:
            raise ValueError(
                f"checkpoint {d} is for partitions {meta['partitions']}, not {self.partitions}"
            )
        for rel in ("raw", "carry", "base", "pairs"):
            setattr(self, rel, pq.read_table(d / f"{rel}.parquet"))
        fs = pq.read_table(d / "first_seen.parquet")
        self.first_seen = dict(
            zip(
                fs.column("client_id").to_pylist(), fs.column("first_seen").to_pylist(), strict=True
            )
        )
        self.positions = {int(k): v for k, v in meta["positions"].items()}
        self.watermark = datetime.fromisoformat(meta["watermark"]) if meta["watermark"] else None
        self.horizon = datetime.fromisoformat(meta["horizon"]) if meta["horizon"] else None
        self._recent_ids = {
            k: datetime.fromisoformat(v) for k, v in meta.get("recent_ids", {}).items()
        }
        if self.alerts is not None and meta.get("alerts") is not None:
            self.alerts.load_state(meta["alerts"])
        return True

    def status(self) -> dict[str, Any]:
        c = self.counters
        out: dict[str, Any] = {
            "consumer": self.consumer,
            "partitions": self.partitions,
            "events": c.events,
            "applied": c.applied,
            "out_of_order": c.out_of_order,
            "too_late": c.too_late,
            "duplicates": c.duplicates,
            "redelivered_skipped": c.redelivered_skipped,
            "batches": c.batches,
            "pushed_rows": c.pushed_rows,
            "closed_windows": c.closed_windows,
            "checkpoints": c.checkpoints,
            "alerts": c.alerts,
            "busy_s": round(c.busy_s, 3),
            "last_batch_s": round(c.last_batch_s, 4),
            "events_per_busy_s": round(c.applied / c.busy_s, 1) if c.busy_s else None,
            "watermark": self.watermark.isoformat() if self.watermark else None,
            "watermark_age_s": (
                round(self.clock() - self.watermark.timestamp(), 2) if self.watermark else None
            ),
            "open_windows_from": self.horizon.isoformat() if self.horizon else None,
            "state_rows": {
                "raw": self.raw.num_rows,
                "carry": self.carry.num_rows,
                "base": self.base.num_rows,
                "pairs": self.pairs.num_rows,
                "clients": len(self.first_seen),
            },
        }
        if self.broker is not None:
            try:
                out.update(self.broker.lag(self.partitions))
            except Exception as exc:
                out["lag_error"] = str(exc)
        return out

    def run(
        self,
        stop: threading.Event,
        on_batch: Callable[[BatchResult], None] | None = None,
    ) -> None:
        """Micro-batch until ``stop`` is set; then checkpoint (open windows stay open: a restart
        carries on with them)."""
        if self.broker is None:
            self.broker = make_broker(self.cfg)
        self.broker.ensure_group(self.partitions)
        period = self.cfg.batch_interval_s
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                res = self.poll_once(count=500, block_ms=int(period * 1000))
            except Exception:
                log.exception("stream batch failed; retrying")
                stop.wait(1.0)
                continue
            if on_batch is not None:
                on_batch(res)
            # micro-batch: gather for the rest of the period unless we are behind
            if res.entries and time.monotonic() - t0 < period:
                stop.wait(period - (time.monotonic() - t0))
        if self._unacked:
            self.checkpoint()


def feast_pusher(settings: Settings) -> Callable[[pa.Table], None]:
    """Writes feature rows to the online store through the Feast push source."""
    from feast.data_source import PushMode
    from feast.errors import PushSourceNotFoundException

    from features.store import apply_definitions, feature_store

    store = feature_store(settings)

    def push(rows: pa.Table) -> None:
        df = rows.to_pandas()
        try:
            store.push(PUSH_SOURCE, df, to=PushMode.ONLINE)
        except PushSourceNotFoundException:
            # a registry applied before the push source existed: apply the definitions once
            log.info("registering the push source %s (feast apply)", PUSH_SOURCE)
            apply_definitions(store, settings)
            store.push(PUSH_SOURCE, df, to=PushMode.ONLINE, allow_registry_cache=False)

    return push
