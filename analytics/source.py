"""Where analytics reads from: DuckDB over one or more telemetry stores, and the filters.

Every query is pushed down to DuckDB: filters become a WHERE clause with bound
parameters (never pasted values), the time range also prunes the store's hour
partitions, and only small aggregates come back to Python.

``src = Source([Path(".gatewise/telemetry")]); src.df("SELECT count(*) FROM ev", Filters())``
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from telemetry.schema import EVENT_SCHEMA
from telemetry.store import HOUR_FMT, as_utc

__all__ = ["GRANULARITIES", "Filters", "Source", "bucket_sql", "day_number_sql", "parse_period"]

# granularity -> bucket length in microseconds
GRANULARITIES = {
    "minute": 60_000_000,
    "5min": 300_000_000,
    "hour": 3_600_000_000,
    "day": 86_400_000_000,
    "week": 7 * 86_400_000_000,
}
DAY_US = 86_400_000_000
_MONDAY_US = 4 * DAY_US  # 1970-01-05 was a Monday: weeks start on Mondays, like date_trunc
_PERIOD = re.compile(r"^(\d+)([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_period(text: str) -> timedelta:
    """``"7d"`` -> 7 days; units m, h, d, w. A bad period raises naming it."""
    m = _PERIOD.match(text.strip())
    if not m or int(m.group(1)) == 0:
        raise ValueError(f"period {text!r}: expected a number and a unit m/h/d/w, like 7d or 24h")
    return timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})


def bucket_sql(granularity: str, col: str = "timestamp") -> str:
    """SQL of the start of ``col``'s bucket (a TIMESTAMPTZ), by integer arithmetic on
    epoch microseconds: ten times faster than time_bucket/date_trunc on TIMESTAMPTZ,
    which go through the time-zone calendar for every row."""
    try:
        us = GRANULARITIES[granularity]
    except KeyError:
        raise ValueError(
            f"granularity {granularity!r}: expected one of {sorted(GRANULARITIES)}"
        ) from None
    off = _MONDAY_US if granularity == "week" else 0
    return f"to_timestamp(((epoch_us({col}) - {off}) // {us}) * {us // 10**6} + {off // 10**6})"


def day_number_sql(col: str = "timestamp") -> str:
    """Days since 1970 as an integer: the cheap key for "distinct active days"."""
    return f"(epoch_us({col}) // {DAY_US})"


@dataclass(frozen=True)
class Filters:
    """What a question is about: a time range [start, end) and attribute filters
    (each a set of allowed values; empty = all)."""

    start: datetime | None = None
    end: datetime | None = None
    tiers: tuple[str, ...] = ()
    regions: tuple[str, ...] = ()
    routes: tuple[str, ...] = ()
    services: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    clients: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", as_utc(self.start, "start"))
        object.__setattr__(self, "end", as_utc(self.end, "end"))
        if self.start and self.end and self.end <= self.start:
            raise ValueError(f"end {self.end} is not after start {self.start}")

    def with_(self, **kw: Any) -> Filters:
        return replace(self, **kw)

    def where(self, *, time: bool = True, hours: bool = True) -> tuple[str, list[Any]]:
        """SQL condition and its parameters (``time=False`` leaves the range out;
        ``hours`` also compares the store's hour partitions, which prunes files)."""
        conds: list[str] = []
        params: list[Any] = []
        if time and self.start is not None:
            conds += ["hour >= ?"] if hours else []
            conds += ["timestamp >= ?"]
            params += [self.start.strftime(HOUR_FMT)] if hours else []
            params += [self.start]
        if time and self.end is not None:
            conds += ["hour <= ?"] if hours else []
            conds += ["timestamp < ?"]
            params += [self.end.strftime(HOUR_FMT)] if hours else []
            params += [self.end]
        for col, values in (
            ("tier", self.tiers),
            ("region", self.regions),
            ("http_route", self.routes),
            ("upstream_service", self.services),
            ("device_type", self.devices),
            ("client_id", self.clients),
        ):
            if values:
                conds.append(f"{col} IN ({', '.join('?' * len(values))})")
                params += list(values)
        return (" AND ".join(conds) or "TRUE"), params


@dataclass
class Source:
    """DuckDB over the telemetry stores under ``roots`` (each a TelemetryStore root).

    ``ev`` in a query is the filtered events relation; ``all_ev`` the unfiltered one
    (for questions like "first seen ever"). One connection per Source, guarded by a
    lock: DuckDB connections are not to be shared between threads unguarded.

    With ``cache`` (the default) the events are loaded once into a DuckDB table in
    memory, sorted by time, and each later question first appends the store's new part
    files (parts are immutable once renamed in, so the set of file names says what is
    new; at most every ``refresh_s``). Thousands of hour files cost DuckDB ~1 s of file
    opening per query; the table answers in milliseconds. ``cache=False`` reads the
    Parquet files on every query.
    """

    roots: Sequence[Path]
    threads: int | None = None
    cache: bool = True
    refresh_s: float = 1.0
    # when a list: every executed (sql, params) is appended (the benchmark replays them bare)
    trace: list[tuple[str, list[Any]]] | None = None
    _con: Any = field(default=None, init=False, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, init=False, repr=False)
    _loaded: set[str] = field(default_factory=set, init=False, repr=False)
    _checked: float = field(default=-1e18, init=False, repr=False)
    stamp: int = field(default=0, init=False)  # bumps whenever new events were loaded
    _spans: dict[Any, tuple[datetime | None, datetime | None]] = field(
        default_factory=dict, init=False, repr=False
    )

    def files(self) -> list[str]:
        return sorted(str(f) for r in self.roots for f in Path(r).glob("hour=*/*.parquet"))

    def globs(self) -> list[str]:
        return [str(Path(r) / "hour=*" / "*.parquet") for r in self.roots if self._has_data(r)]

    @staticmethod
    def _has_data(root: Path) -> bool:
        return any(Path(root).glob("hour=*/*.parquet"))

    def is_empty(self) -> bool:
        return not self.globs()

    @staticmethod
    def _read(paths: list[str]) -> str:
        listing = ", ".join(f"'{p}'" for p in paths)
        return (
            f"SELECT * FROM read_parquet([{listing}], hive_partitioning = true, "
            "hive_types = {'hour': VARCHAR}, union_by_name = true)"
        )

    @staticmethod
    def _empty_relation() -> str:
        cols = ", ".join(f"CAST(NULL AS {_duck_type(f.type)}) AS {f.name}" for f in EVENT_SCHEMA)
        return f"SELECT {cols}, CAST(NULL AS VARCHAR) AS hour WHERE FALSE"

    def relation(self) -> str:
        """SQL of every stored event (the contract's columns plus ``hour``)."""
        if self.cache:
            self.refresh()
            return "SELECT * FROM events_cache" if self._loaded else self._empty_relation()
        globs = self.globs()
        if not globs:
            return self._empty_relation()
        read = self._read(globs)
        have = {r[0] for r in self.connection().execute(f"DESCRIBE {read}").fetchall()}
        extra = [
            f"CAST(NULL AS {_duck_type(f.type)}) AS {f.name}"
            for f in EVENT_SCHEMA
            if f.name not in have
        ]
        return f"SELECT *, {', '.join(extra)} FROM ({read})" if extra else read

    def refresh(self, force: bool = False) -> int:
        """Load part files that appeared since the last look; returns events added."""
        import time

        now = time.monotonic()
        if not force and now - self._checked < self.refresh_s:
            return 0
        with self._lock:
            self._checked = now
            files = self.files()
            con = self.connection()
            if self._loaded - set(files):  # parts vanished (store cleared): start over
                con.execute("DROP TABLE IF EXISTS events_cache")
                self._loaded = set()
            new = [f for f in files if f not in self._loaded]
            if not new:
                return 0
            before = self._count() if self._loaded else 0
            if self._loaded:
                con.execute(f"INSERT INTO events_cache BY NAME {self._read(new)}")
            else:
                con.execute(f"CREATE TABLE events_cache AS {self._read(new)} ORDER BY timestamp")
                # parts written before a column joined the contract (scan_*) lack it: the
                # table gets every contract column, so old and new parts insert by name
                for fld in EVENT_SCHEMA:
                    con.execute(
                        f"ALTER TABLE events_cache ADD COLUMN IF NOT EXISTS {fld.name} "
                        f"{_duck_type(fld.type)}"
                    )
            self._loaded.update(new)
            self.stamp += 1
            return self._count() - before

    def _count(self) -> int:
        return int(self.connection().execute("SELECT count(*) FROM events_cache").fetchone()[0])

    def connection(self) -> Any:
        if self._con is None:
            import duckdb

            con = duckdb.connect()
            con.execute("SET TimeZone = 'UTC'")
            con.execute("SET enable_progress_bar = false")
            if self.threads:
                con.execute(f"SET threads = {int(self.threads)}")
            self._con = con
        return self._con

    def sql(
        self, query: str, filters: Filters, *, time: bool = True, params: Sequence[Any] = ()
    ) -> tuple[str, list[Any]]:
        """The full SQL text and parameters of ``query`` with ``ev``/``all_ev`` bound.

        ``query`` may start with ``, name AS (...)`` to add CTEs after ``ev``; its own
        ``?`` parameters (``params``) follow the filters'.
        """
        cond, fparams = filters.where(time=time, hours=not self.cache)
        rel = self.relation()
        text = f"WITH all_ev AS ({rel}), ev AS (SELECT * FROM all_ev WHERE {cond}) {query}"
        return text, [*fparams, *params]

    def df(
        self, query: str, filters: Filters, *, time: bool = True, params: Sequence[Any] = ()
    ) -> pd.DataFrame:
        with self._lock:
            text, args = self.sql(query, filters, time=time, params=params)
            if self.trace is not None:
                self.trace.append((text, args))
            return self.connection().execute(text, args).df()

    def rows(
        self, query: str, filters: Filters, *, time: bool = True, params: Sequence[Any] = ()
    ) -> list[tuple[Any, ...]]:
        with self._lock:
            text, args = self.sql(query, filters, time=time, params=params)
            if self.trace is not None:
                self.trace.append((text, args))
            return list(self.connection().execute(text, args).fetchall())

    def span(self, filters: Filters | None = None) -> tuple[datetime | None, datetime | None]:
        """First and last event time in the stores (within ``filters`` if given); kept
        until new events load (every panel asks it to close an open range)."""
        f = filters or Filters()
        if self.cache:
            self.refresh()  # load what landed first: the stamp must describe the table
        key = (f, self.stamp) if self.cache else None
        if key is not None and key in self._spans:
            return self._spans[key]
        row = self.rows("SELECT min(timestamp), max(timestamp) FROM ev", f)[0]
        out = _aware(row[0]), _aware(row[1])
        if key is not None:
            if len(self._spans) > 256:
                self._spans.clear()
            self._spans[key] = out
        return out

    def resolve(self, filters: Filters) -> Filters:
        """``filters`` with an open range closed by the data's own span (end exclusive)."""
        if filters.start is not None and filters.end is not None:
            return filters
        first, last = self.span(filters.with_(start=None, end=None))
        if first is None or last is None:
            return filters
        return filters.with_(
            start=filters.start or first,
            end=filters.end or (last + timedelta(microseconds=1)),
        )

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None
            self._loaded = set()


def _aware(v: Any) -> datetime | None:
    if v is None or pd.isna(v):
        return None
    ts = pd.Timestamp(v)
    return (ts.tz_localize(UTC) if ts.tzinfo is None else ts.tz_convert(UTC)).to_pydatetime()


def _duck_type(t: Any) -> str:
    import pyarrow as pa

    if pa.types.is_timestamp(t):
        return "TIMESTAMPTZ"
    if pa.types.is_integer(t):
        return "BIGINT"
    if pa.types.is_floating(t):
        return "DOUBLE"
    return "VARCHAR"
