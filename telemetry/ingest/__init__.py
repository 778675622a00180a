"""Ingest real gateway logs into the telemetry store.

``ingest_files([Path("access.log")], "combined", store, rejects_dir=Path(".gatewise/rejects"))``

Every record read ends in exactly one of three counts: accepted (written),
rejected (written with line number and reason to a rejects file), or duplicate
(its ``request_id`` is already stored). Files are streamed in batches, so
memory stays bounded whatever their size; gzip is detected by content.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pyarrow as pa

from telemetry.ingest.adapters import ADAPTERS, JSON_FORMATS
from telemetry.ingest.normalize import RejectError, device_from_user_agent
from telemetry.ingest.readers import file_fingerprint, iter_json_records, iter_lines
from telemetry.schema import EVENT_SCHEMA
from telemetry.store import TelemetryStore

__all__ = ["FORMATS", "IngestReport", "ingest_files"]

FORMATS = tuple(ADAPTERS)


@dataclass
class FileReport:
    path: str
    read: int = 0
    accepted: int = 0
    rejected: int = 0
    duplicate: int = 0


@dataclass
class IngestReport:
    files: list[FileReport] = field(default_factory=list)
    rejects_path: Path | None = None
    reasons: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def _sum(self, name: str) -> int:
        return sum(getattr(f, name) for f in self.files)

    @property
    def read(self) -> int:
        return self._sum("read")

    @property
    def accepted(self) -> int:
        return self._sum("accepted")

    @property
    def rejected(self) -> int:
        return self._sum("rejected")

    @property
    def duplicate(self) -> int:
        return self._sum("duplicate")


def _records(path: Path, fmt: str) -> Iterator[tuple[int, int, bytes, Any, str | None]]:
    if fmt in JSON_FORMATS:
        yield from iter_json_records(path)
    else:
        for lineno, offset, line in iter_lines(path):
            yield lineno, offset, line, line, None


def _derived_id(fingerprint: bytes, offset: int, raw: bytes) -> str:
    h = hashlib.blake2b(fingerprint, digest_size=16)
    h.update(offset.to_bytes(8, "little"))
    h.update(raw)
    return h.hexdigest()


class _Quarantine:
    """Rejected records, appended to one JSON-lines file per run (opened lazily)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fh: IO[str] | None = None
        self.reasons: dict[str, int] = {}

    def add(self, path: Path, lineno: int, offset: int, reason: str, raw: bytes) -> None:
        if self.fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        rec = {
            "file": str(path),
            "line": lineno,
            "offset": offset,
            "reason": reason,
            "raw": raw.decode("utf-8", errors="replace"),
        }
        self.fh.write(json.dumps(rec) + "\n")
        key = reason.split(":")[0]
        self.reasons[key] = self.reasons.get(key, 0) + 1

    def close(self) -> Path | None:
        if self.fh is None:
            return None
        self.fh.close()
        return self.path


def ingest_files(
    paths: list[Path],
    fmt: str,
    store: TelemetryStore,
    *,
    rejects_dir: Path,
    consumers: dict[str, dict[str, Any]] | None = None,
    batch_size: int = 50_000,
    on_progress: Callable[[int], None] | None = None,
) -> IngestReport:
    """Parse ``paths`` in format ``fmt`` and append the events to ``store``.

    Args:
        consumers: client_id -> {tier, region, device_type} for attributes logs lack.
        on_progress: called with the number of records handled since the last call.
    """
    if fmt not in ADAPTERS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    for p in paths:
        if not Path(p).is_file():
            raise FileNotFoundError(f"log file {p} does not exist")
    report = IngestReport()
    started = time.perf_counter()
    quarantine = _Quarantine(rejects_dir / f"{time.strftime('%Y%m%dT%H%M%S')}-{fmt}.jsonl")
    try:
        for path in map(Path, paths):
            fr = FileReport(str(path))
            report.files.append(fr)
            _ingest_one(path, fmt, store, fr, quarantine, consumers, batch_size, on_progress)
    finally:
        report.rejects_path = quarantine.close()
        report.reasons = quarantine.reasons
    report.seconds = time.perf_counter() - started
    return report


def _ingest_one(
    path: Path,
    fmt: str,
    store: TelemetryStore,
    fr: FileReport,
    quarantine: _Quarantine,
    consumers: dict[str, dict[str, Any]] | None,
    batch_size: int,
    on_progress: Callable[[int], None] | None,
) -> None:
    adapter = ADAPTERS[fmt]
    fingerprint = file_fingerprint(path)
    rows: list[dict[str, Any]] = []

    def flush() -> None:
        res = store.append(pa.Table.from_pylist(rows, schema=EVENT_SCHEMA))
        fr.accepted += res.written
        fr.duplicate += res.duplicates
        if on_progress:
            on_progress(len(rows))
        rows.clear()

    for lineno, offset, raw, value, error in _records(path, fmt):
        fr.read += 1
        try:
            if error:
                raise RejectError(error)
            ev = adapter(value)
            _complete(ev, fingerprint, offset, raw, consumers)
            rows.append(ev)
        except RejectError as exc:
            quarantine.add(path, lineno, offset, str(exc), raw)
            fr.rejected += 1
            if on_progress:
                on_progress(1)
        if len(rows) >= batch_size:
            flush()
    if rows:
        flush()


def _complete(
    ev: dict[str, Any],
    fingerprint: bytes,
    offset: int,
    raw: bytes,
    consumers: dict[str, dict[str, Any]] | None,
) -> None:
    """Fill what the contract needs and the log may lack: ids and client attributes."""
    if not ev.get("request_id"):
        ev["request_id"] = _derived_id(fingerprint, offset, raw)
    else:
        ev["request_id"] = str(ev["request_id"])
    if not ev.get("client_id"):
        if not ev.get("client_address"):
            raise RejectError("no consumer and no client address to identify the client")
        ev["client_id"] = ev["client_address"]
    ev["client_id"] = str(ev["client_id"])
    attrs = consumers.get(ev["client_id"]) if consumers else None
    if attrs:
        for k in ("tier", "region", "device_type"):
            if attrs.get(k) is not None:
                ev[k] = attrs[k]
    if not ev.get("device_type"):
        ev["device_type"] = device_from_user_agent(ev.get("user_agent"))
    if ev.get("http_response_status_code") is None:
        raise RejectError("missing status")
    for k in ("duration_ms", "upstream_duration_ms"):
        if ev.get(k) is not None and ev[k] < 0:
            raise RejectError(f"{k} is negative")
