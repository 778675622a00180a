"""Declarative event-pattern alerts, evaluated on the telemetry stream.

A rule is data (``AlertRule``): a DuckDB boolean expression over the telemetry
columns, a key column and an event-time window. ``AlertEngine.process`` runs
once per micro-batch: one DuckDB query evaluates every rule's predicates over
the Arrow batch; the matches join the window state of earlier batches (only
matches within ``window_s`` of the newest event) and numpy counts every key's
sliding window at once; Python only turns the firing rows into ``Alert`` objects.

``engine = AlertEngine(default_rules(), sinks=[LogSink()]); engine.process(batch)``

Delivery is at least once: an alert is marked fired before the sinks see it,
and ``alert_id`` is deterministic, so a consumer that dedupes on it sees each
(rule, key, bucket) once even when a batch is re-delivered after a restart.

Rules are settings (``stream.alerts`` in gatewise.yaml): ``AlertRule`` is defined in
``config/stream.py``. pyarrow, duckdb and httpx are imported where they are used.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from config.stream import AlertRule, AlertStep

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from config.settings import Settings

__all__ = [
    "Alert",
    "AlertEngine",
    "AlertRule",
    "AlertSink",
    "AlertStep",
    "LogSink",
    "StoreSink",
    "WebhookSink",
    "alert_schema",
    "default_rules",
    "engine_for",
    "read_alerts",
]

log = logging.getLogger("gatewise.alerts")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_STATE_VERSION = 1


def engine_for(settings: Settings, webhook_url: str | None = None) -> AlertEngine:
    """The engine a stream processor runs: ``stream.alerts`` (or the default rules), logged,
    stored under ``<data_dir>/alerts`` and POSTed to ``webhook_url`` or
    ``stream.webhook_url`` when set."""
    cfg = settings.stream
    sinks: list[AlertSink] = [LogSink(), StoreSink(settings.data_dir / "alerts")]
    url = webhook_url or cfg.webhook_url
    if url:
        sinks.append(WebhookSink(url))
    return AlertEngine(list(cfg.alerts) or default_rules(), sinks=sinks)


def default_rules() -> list[AlertRule]:
    """The rules a fresh deployment starts with."""
    return [
        AlertRule(
            name="account_takeover",
            kind="sequence",
            window_s=300,
            severity="high",
            description="a client that failed authentication repeatedly then logged in",
            first=AlertStep(where="http_response_status_code = 401", min_count=5),
            then=AlertStep(
                where="http_route = '/v1/auth/login' AND http_response_status_code < 300"
            ),
        ),
        AlertRule(
            name="upstream_5xx_burst",
            kind="threshold",
            key="upstream_service",
            window_s=60,
            severity="critical",
            description="an upstream service answering with server errors",
            where="http_response_status_code >= 500",
            min_count=20,
        ),
        AlertRule(
            name="credential_stuffing",
            kind="threshold",
            window_s=60,
            severity="high",
            description="a client trying many credentials on the login route",
            where="http_route = '/v1/auth/login' AND http_response_status_code = 401",
            min_count=30,
        ),
    ]


@dataclass
class Alert:
    """One firing of a rule for one key in one window bucket."""

    alert_id: str
    rule: str
    severity: str
    key_column: str
    key: str
    window_start: datetime
    window_end: datetime
    first_ts: datetime
    last_ts: datetime
    count: int
    detected_at: datetime
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in asdict(self).items()}


def _dt(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _state_schema() -> pa.Schema:
    import pyarrow as pa

    # one row per matching event of one rule: a = threshold/`first` match, b = `then` match
    return pa.schema(
        [
            ("key", pa.string()),
            ("ts", pa.int64()),
            ("rid", pa.string()),
            ("a", pa.bool_()),
            ("b", pa.bool_()),
        ]
    )


def _first_hits(
    codes: np.ndarray,
    ts: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    *,
    seq: bool,
    w: int,
    need: int,
    since: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per key, the first row of each window bucket where the pattern holds.

    Threshold: a row with >= ``need`` matches in (t - w, t]. Sequence: a ``b`` row
    with >= ``need`` ``a`` rows in [t - w, t). Only rows at or after ``since`` (the
    oldest new event) are candidates: an older row's window did not change. All keys
    at once: rows are sorted by (key, time) folded into one int64, so one
    ``searchsorted`` serves every key.

    Returns the input indices of those rows, their window counts and first times.
    """
    import numpy as np

    off = ts - ts.min()
    low = off - w
    span = int(off.max()) + w + 2
    if (int(codes.max()) + 1) * span >= 2**62:  # too wide to fold: fold time ranks instead
        vals = np.unique(np.concatenate([off, low]))
        off, low, span = np.searchsorted(vals, off), np.searchsorted(vals, low), len(vals) + 1
    base = codes.astype(np.int64) * span
    comp = base + off
    order = np.argsort(comp)  # ties share key and time, so their order does not matter
    comp, a, ts = comp[order], a[order], ts[order]
    cand = np.flatnonzero((b[order] if seq else a) & (ts >= since))
    # clamp the window start to this key's own range of the folded axis
    start = base[order][cand] + np.maximum(low[order][cand], 0 if seq else -1)
    side: Literal["left", "right"] = "left" if seq else "right"
    matches = comp[a]
    lo = np.searchsorted(matches, start, side)
    n = np.searchsorted(matches, comp[cand], side) - lo
    hit = n >= need
    cand, lo, n = cand[hit], lo[hit], n[hit]
    key, bucket = codes[order][cand], ts[cand] // w
    first = np.ones(len(cand), dtype=bool)
    first[1:] = (key[1:] != key[:-1]) | (bucket[1:] != bucket[:-1])
    return order[cand[first]], n[first], ts[a][lo[first]]


_ROLES = {(True, False): "first", (False, True): "then", (True, True): "first+then"}
_THEN = ("then", "first+then")


class AlertEngine:
    """Evaluates rules batch by batch, keeping a bounded, checkpointable window state.

    ``engine = AlertEngine(default_rules(), sinks=[LogSink()]); alerts = engine.process(batch)``
    """

    def __init__(
        self,
        rules: list[AlertRule],
        sinks: list[AlertSink] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        import duckdb

        names = [r.name for r in rules]
        if len(set(names)) != len(names):
            raise ValueError(f"rule names must be unique: {names}")
        self.rules = list(rules)
        self.sinks = list(sinks or [])
        self.clock = clock
        self.counts: dict[str, int] = {n: 0 for n in names}
        self._win_us = [max(1, round(r.window_s * 1_000_000)) for r in self.rules]
        # predicates are row filters: they never need files or the network
        self._con = duckdb.connect(config={"enable_external_access": False})
        self._con.execute("SET TimeZone = 'UTC'")
        self._validate()
        self._sql = self._query()
        self._watermark: int | None = None
        self._fired: dict[str, dict[str, int]] = {n: {} for n in names}
        self._st = [_state_schema().empty_table() for _ in self.rules]

    # -- construction ----------------------------------------------------
    def _validate(self) -> None:
        import duckdb

        from telemetry.schema import EVENT_SCHEMA

        self._con.register("_gw_batch", EVENT_SCHEMA.empty_table())
        for rule in self.rules:
            if rule.key not in EVENT_SCHEMA.names:
                raise ValueError(
                    f"rule {rule.name!r}: `key` {rule.key!r} is not a telemetry column"
                )
            for field, expr in rule.predicates().items():
                try:
                    duckdb.SQLExpression(expr)  # exactly one expression, nothing around it
                    types = self._con.sql(f'SELECT ({expr}) AS p, "timestamp" FROM _gw_batch').types
                except duckdb.Error as exc:
                    raise ValueError(
                        f"rule {rule.name!r}: invalid SQL in `{field}`: {exc}"
                    ) from exc
                if str(types[0]) != "BOOLEAN":
                    raise ValueError(
                        f"rule {rule.name!r}: `{field}` is {types[0]}, not a boolean expression"
                    )
        self._con.unregister("_gw_batch")

    def _query(self) -> str:
        """The one query per batch: every rule's matches, long format (r, key, ts, rid, a, b)."""
        keys = sorted({r.key for r in self.rules})
        kcol = {k: f"_gw_k{i}" for i, k in enumerate(keys)}
        cols = ['epoch_us("timestamp") AS _gw_ts', "request_id AS _gw_rid"]
        cols += [f'CAST("{k}" AS VARCHAR) AS {c}' for k, c in kcol.items()]
        matches = []
        for i, rule in enumerate(self.rules):
            preds = list(rule.predicates().values())
            for j, expr in enumerate(preds):
                cols.append(f"coalesce(({expr}), false) AS _gw_p{i}_{j}")
            a, b = f"_gw_p{i}_0", (f"_gw_p{i}_1" if len(preds) > 1 else "false")
            k = kcol[rule.key]
            matches.append(
                f"SELECT {i}::INTEGER AS r, {k} AS key, _gw_ts AS ts, _gw_rid AS rid, "
                f"{a} AS a, {b} AS b FROM ev WHERE {k} IS NOT NULL AND ({a} OR {b})"
            )
        return (
            f'WITH ev AS (SELECT {", ".join(cols)} FROM _gw_batch WHERE "timestamp" IS NOT NULL)'
            # DISTINCT: an event delivered twice in one batch counts once
            f" SELECT DISTINCT * FROM ({' UNION ALL '.join(matches)})"
        )

    # -- the stream ------------------------------------------------------
    def process(self, events: pa.Table) -> list[Alert]:
        """Evaluate every rule on this batch plus the window state of earlier batches.

        Emits the NEW alerts to every sink and returns them: at most one alert per
        (rule, key, window_s-aligned event-time bucket of the completing event), ever.
        """
        import pyarrow.compute as pc

        from telemetry.schema import EVENT_SCHEMA, conform

        if events.num_rows == 0 or not self.rules:
            return []
        if not events.schema.equals(EVENT_SCHEMA, check_metadata=False):
            events = conform(events)
        newest = pc.max(events.column("timestamp").cast("int64")).as_py()
        if newest is None:
            return []
        wm = newest if self._watermark is None else max(self._watermark, newest)
        self._con.register("_gw_batch", events)
        try:
            matches = self._con.sql(self._sql).to_arrow_table()
        finally:
            self._con.unregister("_gw_batch")
        rows = []
        for i in range(len(self.rules)):
            rows += self._evaluate(i, matches.filter(pc.equal(matches.column("r"), i)), wm)
        self._watermark = wm
        alerts = self._new_alerts(rows, wm)
        self._prune_fired(wm)
        self._emit(alerts)
        return alerts

    def _evaluate(self, i: int, new: pa.Table, wm: int) -> list[dict[str, Any]]:
        """Merge rule ``i``'s new matches into its window state; the rows that fire."""
        import pyarrow as pa
        import pyarrow.compute as pc

        rule, w, st = self.rules[i], self._win_us[i], self._st[i]
        new = new.select(st.column_names)
        if st.num_rows and new.num_rows:  # a re-delivered event counts once
            new = new.filter(pc.invert(pc.is_in(new.column("rid"), value_set=st.column("rid"))))
        both = pa.concat_tables([st, new]).combine_chunks()
        # older events cannot reach a bucket that may still fire (see _horizon)
        both = both.filter(pc.greater_equal(both.column("ts"), self._horizon(i, wm) - w))
        self._st[i] = both.filter(pc.greater_equal(both.column("ts"), wm - w))
        if not new.num_rows or not both.num_rows:
            return []
        keys = pc.dictionary_encode(both.column("key").chunk(0))
        idx, n, t0 = _first_hits(
            keys.indices.to_numpy(),
            both.column("ts").to_numpy(),
            both.column("a").to_numpy(zero_copy_only=False),
            both.column("b").to_numpy(zero_copy_only=False),
            seq=rule.kind == "sequence",
            w=w,
            need=rule.min_count if rule.first is None else rule.first.min_count,
            since=pc.min(new.column("ts")).as_py(),
        )
        ts, key = both.column("ts"), both.column("key")
        return [
            {"r": i, "key": key[j].as_py(), "ts": ts[j].as_py(), "n": int(c), "t0": int(t)}
            for j, c, t in zip(idx.tolist(), n, t0, strict=True)
        ]

    def _horizon(self, i: int, wm: int) -> int:
        """Start of the oldest bucket whose fired ids are still kept for rule ``i``."""
        w = self._win_us[i]
        return (wm // w - 2) * w

    def _new_alerts(self, rows: list[dict[str, Any]], wm: int) -> list[Alert]:
        detected = datetime.fromtimestamp(self.clock(), UTC)
        out = []
        for row in sorted(rows, key=lambda x: (x["ts"], x["r"], x["key"])):
            i, rule = row["r"], self.rules[row["r"]]
            w = self._win_us[i]
            start = row["ts"] // w * w
            if start < self._horizon(i, wm):
                continue  # too late to tell whether this bucket already fired
            alert = self._alert(rule, row, start, detected)
            fired = self._fired[rule.name]
            if alert.alert_id in fired:
                continue
            fired[alert.alert_id] = start
            self.counts[rule.name] += 1
            out.append(alert)
        return out

    def _alert(self, rule: AlertRule, row: dict[str, Any], start: int, at: datetime) -> Alert:
        window_start = _dt(start)
        if rule.kind == "threshold":
            pattern = f"({rule.where})"
        else:
            assert rule.first is not None and rule.then is not None
            pattern = f"({rule.first.where}) then ({rule.then.where})"
        return Alert(
            alert_id=f"{rule.name}:{row['key']}:{window_start.isoformat()}",
            rule=rule.name,
            severity=rule.severity,
            key_column=rule.key,
            key=row["key"],
            window_start=window_start,
            window_end=window_start + timedelta(seconds=rule.window_s),
            first_ts=_dt(row["t0"]),
            last_ts=_dt(row["ts"]),
            count=row["n"],
            detected_at=at,
            message=f"{rule.key} {row['key']}: {row['n']} × {pattern} within {rule.window_s:g} s",
        )

    def _prune_fired(self, wm: int) -> None:
        for i, rule in enumerate(self.rules):
            h = self._horizon(i, wm)
            fired = self._fired[rule.name]
            self._fired[rule.name] = {a: s for a, s in fired.items() if s >= h}

    def _emit(self, alerts: list[Alert]) -> None:
        if not alerts:
            return
        for sink in self.sinks:
            try:
                sink.emit(alerts)
            except Exception:  # one broken sink must not stop the stream or the others
                log.exception("alert sink %s failed on %d alerts", type(sink).__name__, len(alerts))

    # -- checkpoints -----------------------------------------------------
    def state(self) -> dict[str, Any]:
        """JSON-serialisable window state: recent matches per rule and key, fired ids.

        ``events`` maps each key to its matches, oldest first, as columns: ``ts_us``,
        ``request_id`` and, for sequences, ``role`` (``first``, ``then``, ``first+then``).
        """
        import pyarrow.compute as pc

        rules: dict[str, Any] = {}
        for rule, st in zip(self.rules, self._st, strict=True):
            st = st.sort_by([("key", "ascending"), ("ts", "ascending")])
            cols = {
                "ts_us": st.column("ts").to_pylist(),
                "request_id": st.column("rid").to_pylist(),
            }
            if rule.kind == "sequence":
                roles = zip(st.column("a").to_pylist(), st.column("b").to_pylist(), strict=True)
                cols["role"] = [_ROLES[r] for r in roles]
            runs = pc.run_end_encode(st.column("key").combine_chunks())  # one run per key
            ends = runs.run_ends.to_pylist()
            events = {
                key: {name: col[start:end] for name, col in cols.items()}
                for key, start, end in zip(runs.values.to_pylist(), [0, *ends], ends, strict=False)
            }
            rules[rule.name] = {
                "fingerprint": rule.fingerprint(),
                "key_column": rule.key,
                "events": events,
            }
        return {
            "version": _STATE_VERSION,
            "watermark_us": self._watermark,
            "rules": rules,
            "fired": {name: dict(ids) for name, ids in self._fired.items()},
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Replace the window state with one from ``state()``.

        Rules missing from ``state`` start empty; so do rules whose definition
        changed (their old matches would mean something else). Fired ids are kept
        for every rule still configured.
        """
        import pyarrow as pa

        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"alert state version {state.get('version')!r} is not supported")
        saved = state.get("rules", {})
        self._st = []
        for rule in self.rules:
            entry = saved.get(rule.name, {"fingerprint": rule.fingerprint(), "events": {}})
            if entry["fingerprint"] != rule.fingerprint():
                log.info("rule %s changed since the checkpoint; its window starts empty", rule.name)
                entry = {"events": {}}
            cols: dict[str, list[Any]] = {name: [] for name in _state_schema().names}
            for key, ev in entry["events"].items():
                n = len(ev["ts_us"])
                roles = ev.get("role", ["first"] * n)
                cols["key"] += [key] * n
                cols["ts"] += ev["ts_us"]
                cols["rid"] += ev["request_id"]
                cols["a"] += [r != "then" for r in roles]
                cols["b"] += [r in _THEN for r in roles]
            self._st.append(pa.Table.from_pydict(cols, schema=_state_schema()))
        self._watermark = state.get("watermark_us")
        fired = state.get("fired", {})
        self._fired = {
            r.name: {a: int(s) for a, s in fired.get(r.name, {}).items()} for r in self.rules
        }


# -- sinks ---------------------------------------------------------------
class AlertSink(Protocol):
    def emit(self, alerts: list[Alert]) -> None: ...


class LogSink:
    """One warning line per alert on the ``gatewise.alerts`` logger."""

    def emit(self, alerts: list[Alert]) -> None:
        for a in alerts:
            log.warning("[%s] %s %s: %s", a.severity, a.rule, a.alert_id, a.message)


class WebhookSink:
    """POSTs ``{"alerts": [...]}`` to ``url`` from a background thread.

    ``sink = WebhookSink("https://hooks.example/alerts"); ...; sink.close()``

    ``emit`` only enqueues, so the stream never waits on the network. ``sent`` and
    ``failed`` count alerts; a failed POST is logged, never raised, not retried.
    """

    def __init__(self, url: str, timeout_s: float = 2.0, max_pending: int = 1000) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.sent = 0
        self.failed = 0
        self._lock = threading.Lock()
        self._queue: queue.Queue[list[dict[str, Any]] | None] = queue.Queue(max_pending)
        self._closed = False
        self._thread = threading.Thread(
            target=self._run, name="gatewise-alert-webhook", daemon=True
        )
        self._thread.start()

    def emit(self, alerts: list[Alert]) -> None:
        if not alerts:
            return
        payload = [a.to_dict() for a in alerts]
        try:
            if self._closed:
                raise queue.Full
            self._queue.put_nowait(payload)
        except queue.Full:
            self._count(failed=len(payload))
            log.error("webhook %s: queue full or closed, dropped %d alerts", self.url, len(payload))

    def close(self, timeout_s: float = 5.0) -> None:
        """Deliver what is queued (waiting at most ``timeout_s``) and stop the thread."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout_s)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning(
                "webhook %s: %d batches not delivered at close", self.url, self._queue.qsize()
            )

    def _count(self, sent: int = 0, failed: int = 0) -> None:
        with self._lock:
            self.sent += sent
            self.failed += failed

    def _run(self) -> None:
        import httpx

        with httpx.Client(timeout=self.timeout_s) as client:
            while (payload := self._queue.get()) is not None:
                try:
                    client.post(self.url, json={"alerts": payload}).raise_for_status()
                except Exception as exc:  # the worker must outlive any one delivery
                    self._count(failed=len(payload))
                    log.warning("webhook %s failed for %d alerts: %s", self.url, len(payload), exc)
                else:
                    self._count(sent=len(payload))


@functools.cache
def alert_schema() -> pa.Schema:
    """The Parquet schema of stored alerts (``ALERT_SCHEMA``)."""
    import pyarrow as pa

    ts = pa.timestamp("us", tz="UTC")
    return pa.schema(
        [
            pa.field("alert_id", pa.string(), nullable=False),
            pa.field("rule", pa.string(), nullable=False),
            pa.field("severity", pa.string(), nullable=False),
            pa.field("key_column", pa.string(), nullable=False),
            pa.field("key", pa.string(), nullable=False),
            pa.field("window_start", ts, nullable=False),
            pa.field("window_end", ts, nullable=False),
            pa.field("first_ts", ts, nullable=False),
            pa.field("last_ts", ts, nullable=False),
            pa.field("count", pa.int64(), nullable=False),
            pa.field("detected_at", ts, nullable=False),
            pa.field("message", pa.string(), nullable=False),
        ],
        metadata={"gatewise.schema": "alerts/1"},
    )


def __getattr__(name: str) -> Any:
    if name == "ALERT_SCHEMA":  # lazy, so importing this module does not import pyarrow
        return alert_schema()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class StoreSink:
    """Appends alerts to Parquet: ``<root>/date=YYYY-MM-DD/part-<uuid>.parquet``.

    The date is the alert's ``window_start`` (event time), like the telemetry store.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def emit(self, alerts: list[Alert]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        by_date: dict[str, list[dict[str, Any]]] = {}
        for a in alerts:
            by_date.setdefault(a.window_start.strftime("%Y-%m-%d"), []).append(asdict(a))
        for date, rows in by_date.items():
            part_dir = self.root / f"date={date}"
            part_dir.mkdir(parents=True, exist_ok=True)
            name = f"part-{uuid.uuid4().hex}.parquet"
            tmp = part_dir / f".{name}.tmp"
            pq.write_table(pa.Table.from_pylist(rows, schema=alert_schema()), tmp)
            os.replace(tmp, part_dir / name)


def read_alerts(root: Path) -> pa.Table:
    """Every stored alert, once per ``alert_id`` (the earliest detection), oldest first."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted(Path(root).glob("date=*/*.parquet"))
    if not files:
        return alert_schema().empty_table()
    table = pa.concat_tables(pq.read_table(f, schema=alert_schema()) for f in files)
    table = table.sort_by([("alert_id", "ascending"), ("detected_at", "ascending")])
    ids = table.column("alert_id").to_pylist()
    keep = [i for i, a in enumerate(ids) if i == 0 or a != ids[i - 1]]
    return table.take(keep).sort_by(
        [("window_start", "ascending"), ("rule", "ascending"), ("key", "ascending")]
    )
