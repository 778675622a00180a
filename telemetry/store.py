"""Hour-partitioned Parquet store of telemetry events.

Layout: ``<root>/hour=YYYY-MM-DDTHH/part-<uuid>.parquet``. DuckDB reads any
time range in one query; the ``hour`` partition key prunes files.

Append safety: each part is written to a hidden ``.part-*.tmp`` file in the
same directory, fsynced and renamed into place, so a crashed writer leaves no
half file that a reader would pick up (readers glob ``*.parquet`` only).
Writers take an exclusive ``flock`` on the store so deduplication by
``request_id`` sees every committed id.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from telemetry.schema import EVENT_SCHEMA, conform

# Arrow types of the contract → DuckDB, for columns a part file does not have
_DUCK = {
    "float": "FLOAT",
    "double": "DOUBLE",
    "string": "VARCHAR",
    "int16": "SMALLINT",
    "int64": "BIGINT",
    "timestamp[us, tz=UTC]": "TIMESTAMPTZ",
    "map<string, string>": "MAP(VARCHAR, VARCHAR)",
}

__all__ = ["AppendResult", "TelemetryStore"]

HOUR_FMT = "%Y-%m-%dT%H"


@dataclass(frozen=True)
class AppendResult:
    written: int
    duplicates: int
    files: int


def as_utc(value: datetime | str | None, name: str = "time") -> datetime | None:
    """A UTC datetime from a datetime or an ISO string; a bad string names ``name``."""
    if value is None or isinstance(value, datetime):
        dt = value
    else:
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{name}: {value!r} is not an ISO date or time") from None
    if dt is None:
        return None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


class TelemetryStore:
    """The telemetry store under ``root``.

    ``TelemetryStore(Path(".gatewise/telemetry")).append(table)``
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        # ids already committed, per hour partition; filled lazily and kept in
        # step with our own writes while this object lives
        self._ids: dict[str, list[pa.ChunkedArray]] = {}

    # -- writing ---------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _committed_ids(self, hour: str) -> list[pa.ChunkedArray]:
        ids = self._ids.get(hour)
        if ids is None:
            part_dir = self.root / f"hour={hour}"
            ids = [
                pq.read_table(f, columns=["request_id"]).column(0)
                for f in sorted(part_dir.glob("*.parquet"))
            ]
            self._ids[hour] = ids
        return ids

    def append(self, table: pa.Table, *, dedup: bool = True) -> AppendResult:
        """Append events; rows whose ``request_id`` is already stored (or
        repeated within ``table``) are skipped and counted as duplicates."""
        table = conform(table)
        if table.num_rows == 0:
            return AppendResult(0, 0, 0)
        # one sort by timestamp, then each hour is a contiguous slice
        us = table.column("timestamp").cast(pa.int64()).to_numpy()
        if len(us) > 1 and (np.diff(us) < 0).any():
            order = np.argsort(us, kind="stable")
            table, us = table.take(order), us[order]
        hour = us // 3_600_000_000
        bounds = [0, *(np.flatnonzero(np.diff(hour)) + 1).tolist(), len(hour)]
        written = dup = files = 0
        with self._locked():
            for a, b in itertools.pairwise(bounds):
                key = (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(hours=int(hour[a]))).strftime(
                    HOUR_FMT
                )
                part = table.slice(a, b - a)
                if dedup:
                    part, n_dup = self._drop_known(key, part)
                    dup += n_dup
                if part.num_rows == 0:
                    continue
                self._write_part(key, part)
                written += part.num_rows
                files += 1
        return AppendResult(written, dup, files)

    def _drop_known(self, hour: str, part: pa.Table) -> tuple[pa.Table, int]:
        """Drop rows whose request_id is already stored or repeats within ``part``."""
        ids = part.column("request_id")
        n = part.num_rows
        if pc.count_distinct(ids).as_py() != n:
            # keep the first row of each id
            first = part.select(["request_id"]).append_column("_i", pa.array(range(n), pa.int64()))
            first = first.group_by("request_id", use_threads=False).aggregate([("_i", "min")])
            keep = first.column("_i_min")
            part = part.take(pc.take(keep, pc.sort_indices(keep)))
            ids = part.column("request_id")
        known = self._committed_ids(hour)
        if known:
            fresh = pc.invert(
                pc.is_in(ids, value_set=pa.concat_arrays([c for k in known for c in k.chunks]))
            )
            part = part.filter(fresh)
        self._ids.setdefault(hour, []).append(part.column("request_id"))
        return part, n - part.num_rows

    def _write_part(self, hour: str, part: pa.Table) -> Path:
        part_dir = self.root / f"hour={hour}"
        part_dir.mkdir(parents=True, exist_ok=True)
        name = f"part-{uuid.uuid4().hex}.parquet"
        tmp = part_dir / f".{name}.tmp"
        final = part_dir / name
        with open(tmp, "wb") as fh:
            pq.write_table(part, fh, compression="zstd", row_group_size=256_000)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        dir_fd = os.open(part_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return final

    # -- reading ---------------------------------------------------------
    def glob(self) -> str:
        return str(self.root / "hour=*" / "*.parquet")

    def is_empty(self) -> bool:
        return not any(self.root.glob("hour=*/*.parquet"))

    def relation_sql(
        self, start: datetime | str | None = None, end: datetime | str | None = None
    ) -> str:
        """SQL text of a relation over the events in ``[start, end)``.

        The hour partition column is compared too, so DuckDB reads only the
        files of the range. Use as ``SELECT ... FROM ({relation_sql()})``.
        """
        start, end = as_utc(start, "start"), as_utc(end, "end")
        conds = []
        if start is not None:
            conds.append(f"hour >= '{start.strftime(HOUR_FMT)}'")
            conds.append(f"timestamp >= TIMESTAMPTZ '{start.isoformat()}'")
        if end is not None:
            conds.append(f"hour <= '{end.strftime(HOUR_FMT)}'")
            conds.append(f"timestamp < TIMESTAMPTZ '{end.isoformat()}'")
        where = f" WHERE {' AND '.join(conds)}" if conds else ""
        have = self._stored_columns()
        cols = ", ".join(
            f.name
            if f.name in have
            else f"CAST(NULL AS {_DUCK.get(str(f.type), 'VARCHAR')}) AS {f.name}"
            for f in EVENT_SCHEMA
        )
        return (
            f"SELECT {cols} FROM read_parquet('{self.glob()}', hive_partitioning = true, "
            f"hive_types = {{'hour': VARCHAR}}, union_by_name = true){where}"
        )

    def _stored_columns(self) -> set[str]:
        """Contract columns found in the part files: a store written before a column joined
        the contract (``scan_*``) reads it as nulls instead of failing. Newest files first;
        stops as soon as every column is found (the usual case: the newest part has all)."""
        want = set(EVENT_SCHEMA.names)
        found: set[str] = set()
        files = sorted(
            self.root.glob("hour=*/*.parquet"), key=lambda p: p.parent.name, reverse=True
        )
        for f in files:
            try:
                found |= set(pq.read_schema(f).names)
            except (OSError, pa.ArrowInvalid):
                continue
            if want <= found:
                break
        return found

    def connect(self) -> Any:
        """A DuckDB connection with the view ``events`` over the whole store."""
        import duckdb

        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        if self.is_empty():
            con.register("events", EVENT_SCHEMA.empty_table())
        else:
            con.execute(f"CREATE VIEW events AS {self.relation_sql()}")
        return con

    def read(self, start: datetime | None = None, end: datetime | None = None) -> pa.Table:
        """Events in ``[start, end)`` as an Arrow table in the contract schema."""
        if self.is_empty():
            return EVENT_SCHEMA.empty_table()
        import duckdb

        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        table = con.sql(
            self.relation_sql(start, end) + " ORDER BY timestamp, request_id"
        ).to_arrow_table()
        return conform(table)

    def count(self) -> int:
        if self.is_empty():
            return 0
        return sum(pq.ParquetFile(f).metadata.num_rows for f in self.root.glob("hour=*/*.parquet"))
