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

__all__ = ["GRANULARITIES", "Filters", "Source", "bucket_sql", "parse_period"]

# granularity -> DuckDB interval for time_bucket
GRANULARITIES = {
    "minute": "1 minute",
    "5min": "5 minutes",
    "hour": "1 hour",
    "day": "1 day",
    "week": "7 days",
}
_PERIOD = re.compile(r"^(\d+)([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_period(text: str) -> timedelta:
    """``"7d"`` -> 7 days; units m, h, d, w. A bad period raises naming it."""
    m = _PERIOD.match(text.strip())
    if not m or int(m.group(1)) == 0:
        raise ValueError(f"period {text!r}: expected a number and a unit m/h/d/w, like 7d or 24h")
    return timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})


def bucket_sql(granularity: str) -> str:
    try:
        return f"time_bucket(INTERVAL '{GRANULARITIES[granularity]}', timestamp)"
    except KeyError:
        raise ValueError(
            f"granularity {granularity!r}: expected one of {sorted(GRANULARITIES)}"
        ) from None


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

    def where(self, *, time: bool = True) -> tuple[str, list[Any]]:
        """SQL condition and its parameters (``time=False`` leaves the range out)."""
        conds: list[str] = []
        params: list[Any] = []
        if time and self.start is not None:
            conds += ["hour >= ?", "timestamp >= ?"]
            params += [self.start.strftime(HOUR_FMT), self.start]
        if time and self.end is not None:
            conds += ["hour <= ?", "timestamp < ?"]
            params += [self.end.strftime(HOUR_FMT), self.end]
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
    """

    roots: Sequence[Path]
    threads: int | None = None
    _con: Any = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def globs(self) -> list[str]:
        return [str(Path(r) / "hour=*" / "*.parquet") for r in self.roots if self._has_data(r)]

    @staticmethod
    def _has_data(root: Path) -> bool:
        return any(Path(root).glob("hour=*/*.parquet"))

    def is_empty(self) -> bool:
        return not self.globs()

    def relation(self) -> str:
        """SQL of every stored event (the contract's columns plus ``hour``)."""
        globs = self.globs()
        if not globs:
            cols = ", ".join(
                f"CAST(NULL AS {_duck_type(f.type)}) AS {f.name}" for f in EVENT_SCHEMA
            )
            return f"SELECT {cols}, CAST(NULL AS VARCHAR) AS hour WHERE FALSE"
        listing = ", ".join(f"'{g}'" for g in globs)
        return (
            f"SELECT * FROM read_parquet([{listing}], hive_partitioning = true, "
            "hive_types = {'hour': VARCHAR}, union_by_name = true)"
        )

    def connection(self) -> Any:
        if self._con is None:
            import duckdb

            con = duckdb.connect()
            con.execute("SET TimeZone = 'UTC'")
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
        cond, fparams = filters.where(time=time)
        rel = self.relation()
        text = f"WITH all_ev AS ({rel}), ev AS (SELECT * FROM all_ev WHERE {cond}) {query}"
        return text, [*fparams, *params]

    def df(
        self, query: str, filters: Filters, *, time: bool = True, params: Sequence[Any] = ()
    ) -> pd.DataFrame:
        text, args = self.sql(query, filters, time=time, params=params)
        with self._lock:
            return self.connection().execute(text, args).df()

    def rows(
        self, query: str, filters: Filters, *, time: bool = True, params: Sequence[Any] = ()
    ) -> list[tuple[Any, ...]]:
        text, args = self.sql(query, filters, time=time, params=params)
        with self._lock:
            return list(self.connection().execute(text, args).fetchall())

    def span(self, filters: Filters | None = None) -> tuple[datetime | None, datetime | None]:
        """First and last event time in the stores (within ``filters`` if given)."""
        row = self.rows("SELECT min(timestamp), max(timestamp) FROM ev", filters or Filters())[0]
        return _aware(row[0]), _aware(row[1])

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
