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
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa

from telemetry.ingest.fields import fields_from_vars, unescape
from telemetry.ingest.formats import FormatError, LogFormat, known_names, resolve
from telemetry.ingest.normalize import RejectError, device_from_user_agent
from telemetry.ingest.readers import (
    file_fingerprint,
    iter_json_records,
    iter_line_batches,
    iter_lines,
    json_records_of,
)
from telemetry.schema import EVENT_SCHEMA
from telemetry.store import TelemetryStore

__all__ = [
    "FORMATS",
    "FormatError",
    "IngestReport",
    "LogFormat",
    "ingest_files",
    "parse_record",
    "resolve",
]

FORMATS = tuple(known_names())
MAX_REJECTS_PER_REASON = 100


@dataclass
class FileReport:
    path: str
    format: str = ""
    read: int = 0
    accepted: int = 0
    rejected: int = 0
    duplicate: int = 0
    fast: int = 0  # records the columnar fast path parsed


@dataclass
class IngestReport:
    files: list[FileReport] = field(default_factory=list)
    rejects_path: Path | None = None
    reasons: dict[str, int] = field(default_factory=dict)
    # one example per reason: {"file", "line", "reason", "raw"}
    examples: dict[str, dict[str, Any]] = field(default_factory=dict)
    rejects_kept: int = 0  # records written to the rejects file (the rest are counted)
    detected: dict[str, str] = field(default_factory=dict)  # path -> what --format auto chose
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

    @property
    def fast(self) -> int:
        return self._sum("fast")

    @property
    def reject_share(self) -> float:
        return self.rejected / self.read if self.read else 0.0


def _derived_id(fingerprint: bytes, offset: int, raw: bytes) -> str:
    h = hashlib.blake2b(fingerprint, digest_size=16)
    h.update(offset.to_bytes(8, "little"))
    h.update(raw)
    return h.hexdigest()


def _derived_ids(fingerprint: bytes, offsets: np.ndarray, lines: list[bytes]) -> list[str]:
    """``_derived_id`` of many lines, with the fingerprint hashed once."""
    h0 = hashlib.blake2b(fingerprint, digest_size=16)
    out = []
    for off, raw in zip(offsets.tolist(), lines, strict=True):
        h = h0.copy()
        h.update(off.to_bytes(8, "little") + raw)
        out.append(h.hexdigest())
    return out


_VALUE = re.compile(r"'[^']*'|\"[^\"]*\"|\b\d{3,}\b")


def reason_key(reason: str) -> str:
    """The kind of a reject reason: values and numbers blanked, so one bad field is one kind."""
    return _VALUE.sub("…", reason.split(":")[0]).strip()


class _Quarantine:
    """Rejected records, in one JSON-lines file per run (opened lazily): the first
    ``per_reason`` records of each kind of reason, within ``budget`` bytes (never more
    than the input's size), and the counts of all in ``<name>.summary.json``."""

    def __init__(self, path: Path, budget: int, per_reason: int = MAX_REJECTS_PER_REASON) -> None:
        self.path = path
        self.budget = budget
        self.per_reason = per_reason
        self.fh: IO[str] | None = None
        self.reasons: dict[str, int] = {}
        self.examples: dict[str, dict[str, Any]] = {}
        self.kept = 0
        self.bytes = 0

    def add(self, path: Path, lineno: int, offset: int, reason: str, raw: bytes) -> None:
        key = reason_key(reason)
        n = self.reasons.get(key, 0)
        self.reasons[key] = n + 1
        text = raw.decode("utf-8", errors="replace")
        rec = {"file": str(path), "line": lineno, "offset": offset, "reason": reason, "raw": text}
        if n == 0:
            self.examples[key] = {**rec, "raw": text[:300]}
        if n >= self.per_reason:
            return
        line = json.dumps(rec) + "\n"
        if self.bytes + len(line) > self.budget:
            return
        if self.fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self.fh.write(line)
        self.bytes += len(line)
        self.kept += 1

    def close(self) -> Path | None:
        if not self.reasons:
            return None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.fh is not None:
            self.fh.close()
        else:
            self.path.touch()
        summary = {"counts": self.reasons, "kept": self.kept, "examples": self.examples}
        self.path.with_suffix(".summary.json").write_text(json.dumps(summary, indent=1))
        return self.path


def parse_record(fmt: LogFormat, value: Any) -> dict[str, Any]:
    """One record (a text line, or a JSON object) -> contract fields; RejectError says why not."""
    if fmt.json_adapter is not None:
        if not isinstance(value, dict):
            raise RejectError("not a JSON object")
        return fmt.json_adapter(value)
    line = value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value
    found = fmt.variables(line)
    if found is None:
        if line.count('"') % 2:
            raise RejectError("unbalanced quotes (truncated line?)")
        raise RejectError(f"does not match the {fmt.name} format")
    return fields_from_vars({k: unescape(v) for k, v in found.items()})


def ingest_files(
    paths: list[Path],
    fmt: str | LogFormat,
    store: TelemetryStore,
    *,
    rejects_dir: Path,
    consumers: dict[str, dict[str, Any]] | None = None,
    batch_size: int = 50_000,
    on_progress: Callable[[int], None] | None = None,
    fast: bool = True,
) -> IngestReport:
    """Parse ``paths`` in format ``fmt`` (a LogFormat, a name or a definition, see
    ``formats.resolve``, or ``auto``: detected per file) and append the events to ``store``.

    Args:
        consumers: client_id -> {tier, region, device_type} for attributes logs lack.
        on_progress: called with the number of records handled since the last call.
        fast: parse text formats with the columnar fast path (the per-record parser
            takes only what it leaves); False parses every record one by one.
    """
    auto = fmt == "auto"
    log_format = fmt if isinstance(fmt, LogFormat) else None if auto else resolve(str(fmt))
    for p in paths:
        if not Path(p).is_file():
            raise FileNotFoundError(f"log file {p} does not exist")
    report = IngestReport()
    started = time.perf_counter()
    budget = sum(Path(p).stat().st_size for p in paths)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", log_format.name if log_format else "auto")[:40]
    quarantine = _Quarantine(rejects_dir / f"{time.strftime('%Y%m%dT%H%M%S')}-{slug}.jsonl", budget)
    try:
        for path in map(Path, paths):
            if auto:
                from telemetry.ingest.detect import detect_format

                found = detect_format(path)
                log_format = found.format
                report.detected[str(path)] = found.describe()
            assert log_format is not None
            fr = FileReport(str(path), format=log_format.name)
            report.files.append(fr)
            ctx = _Ctx(path, file_fingerprint(path), store, fr, quarantine, consumers, on_progress)
            if log_format.is_json:
                _ingest_json(ctx, log_format, batch_size, fast)
            else:
                _ingest_text(ctx, log_format, batch_size, fast)
    finally:
        report.rejects_path = quarantine.close()
        report.reasons = quarantine.reasons
        report.examples = quarantine.examples
        report.rejects_kept = quarantine.kept
    report.seconds = time.perf_counter() - started
    return report


@dataclass
class _Ctx:
    path: Path
    fingerprint: bytes
    store: TelemetryStore
    fr: FileReport
    quarantine: _Quarantine
    consumers: dict[str, dict[str, Any]] | None
    on_progress: Callable[[int], None] | None

    def write(self, table: pa.Table) -> None:
        if table.num_rows:
            res = self.store.append(table)
            self.fr.accepted += res.written
            self.fr.duplicate += res.duplicates

    def reject(self, lineno: int, offset: int, reason: str, raw: bytes) -> None:
        self.quarantine.add(self.path, lineno, offset, reason, raw)
        self.fr.rejected += 1

    def progress(self, n: int) -> None:
        if self.on_progress and n:
            self.on_progress(n)


def _json_lines(path: Path, sample: int = 200) -> bool:
    """Whether the file starts as JSON lines (values whole on one line), not pretty-printed."""
    import itertools

    seen = whole = 0
    for _, _, raw in itertools.islice(iter_lines(path), sample):
        seen += 1
        whole += raw.lstrip()[:1] == b"{" and raw.rstrip()[-1:] == b"}"
    return seen > 0 and whole >= 0.9 * seen  # a cut line or two: still JSON lines


def _ingest_json(ctx: _Ctx, fmt: LogFormat, batch_size: int, fast: bool) -> None:
    if fast and fmt.json_vars is not None and _json_lines(ctx.path):
        for linenos, offsets, lines in iter_line_batches(ctx.path, batch_size):
            ctx.write(_json_batch(ctx, fmt, linenos, offsets, lines))
        return
    _json_records(ctx, fmt, iter_json_records(ctx.path), batch_size)


def _json_batch(
    ctx: _Ctx, fmt: LogFormat, linenos: np.ndarray, offsets: np.ndarray, lines: list[bytes]
) -> pa.Table:
    """A batch of JSON lines: Arrow's JSON reader and the column-wise conversions, the
    per-record reader for what they leave (or for the whole batch, when Arrow refuses it)."""
    from telemetry.ingest.fast import parse_fast_json

    fb = parse_fast_json(fmt, lines)
    parts = []
    if len(fb.taken):
        parts.append(_fast_table(ctx, fb, offsets, lines, None))
    ctx.fr.read += len(lines) - len(fb.left)
    slow_rows: list[dict[str, Any]] = []
    slow_idx: list[int] = []
    for i in fb.left.tolist():
        one = [(int(linenos[i]), int(offsets[i]), lines[i])]
        for _lineno, offset, raw, value, error in json_records_of(one):
            ctx.fr.read += 1  # a line of an array holds several records
            try:
                if error:
                    raise RejectError(error)
                ev = parse_record(fmt, value)
                _complete(ev, ctx.fingerprint, offset, raw, ctx.consumers)
            except RejectError as exc:
                ctx.reject(int(linenos[i]), offset, str(exc), raw)
                continue
            slow_rows.append(ev)
            slow_idx.append(i)
    if slow_rows:
        parts.append(
            (np.array(slow_idx, np.int64), pa.Table.from_pylist(slow_rows, schema=EVENT_SCHEMA))
        )
    ctx.progress(len(lines))
    return _in_line_order(parts)


def _json_records(ctx: _Ctx, fmt: LogFormat, records: Any, batch_size: int) -> None:
    """The per-record JSON path: parse, complete, write in batches."""
    rows: list[dict[str, Any]] = []
    for lineno, offset, raw, value, error in records:
        ctx.fr.read += 1
        try:
            if error:
                raise RejectError(error)
            ev = parse_record(fmt, value)
            _complete(ev, ctx.fingerprint, offset, raw, ctx.consumers)
            rows.append(ev)
        except RejectError as exc:
            ctx.reject(lineno, offset, str(exc), raw)
            ctx.progress(1)
        if len(rows) >= batch_size:
            ctx.write(pa.Table.from_pylist(rows, schema=EVENT_SCHEMA))
            ctx.progress(len(rows))
            rows.clear()
    if rows:
        ctx.write(pa.Table.from_pylist(rows, schema=EVENT_SCHEMA))
        ctx.progress(len(rows))


def _ingest_text(ctx: _Ctx, fmt: LogFormat, batch_size: int, fast: bool) -> None:
    for linenos, offsets, lines in iter_line_batches(ctx.path, batch_size):
        ctx.fr.read += len(lines)
        table = parse_lines(ctx, fmt, linenos, offsets, lines, fast)
        ctx.write(table)
        ctx.progress(len(lines))


def parse_lines(
    ctx: _Ctx,
    fmt: LogFormat,
    linenos: np.ndarray,
    offsets: np.ndarray,
    lines: list[bytes],
    fast: bool,
) -> pa.Table:
    """A batch of lines -> the table of accepted events in line order (rejects go to
    the quarantine): the fast path first, the per-record parser for what it leaves."""
    n = len(lines)
    parts: list[tuple[np.ndarray, pa.Table]] = []
    left = np.arange(n)
    if fast and n:
        from telemetry.ingest.fast import ascii_only, parse_fast, start_extract

        text, is_ascii = ascii_only(pa.array(lines, pa.binary()).view(pa.string()))
        # the regex runs in pool threads while this thread derives the request ids (Python:
        # the two overlap on two cores); formats that log a request id skip that
        extracted = start_extract(text, fmt.fast_regex, threads=max(1, (os.cpu_count() or 1) - 1))
        pre: list[str] | None = None
        if not {"request_id", "http_x_request_id"} & set(fmt.names):
            pre = _derived_ids(ctx.fingerprint, offsets, lines)
        fb = parse_fast(fmt, text, extracted, is_ascii)
        if len(fb.taken):
            parts.append(_fast_table(ctx, fb, offsets, lines, pre))
        left = fb.left
    rows: list[dict[str, Any]] = []
    row_idx: list[int] = []
    for i in left.tolist():
        raw = lines[i]
        try:
            ev = parse_record(fmt, raw)
            _complete(ev, ctx.fingerprint, int(offsets[i]), raw, ctx.consumers)
        except RejectError as exc:
            ctx.reject(int(linenos[i]), int(offsets[i]), str(exc), raw)
            continue
        rows.append(ev)
        row_idx.append(i)
    if rows:
        parts.append(
            (np.array(row_idx, dtype=np.int64), pa.Table.from_pylist(rows, schema=EVENT_SCHEMA))
        )
    return _in_line_order(parts)


def _in_line_order(parts: list[tuple[np.ndarray, pa.Table]]) -> pa.Table:
    """Tables of rows (with their line indices) -> one table in line order."""
    if not parts:
        return EVENT_SCHEMA.empty_table()
    if len(parts) == 1:
        return parts[0][1]
    order = np.argsort(np.concatenate([p[0] for p in parts]), kind="stable")
    return pa.concat_tables([p[1] for p in parts]).take(pa.array(order))


def _fast_table(
    ctx: _Ctx, fb: Any, offsets: np.ndarray, lines: list[bytes], pre: list[str] | None
) -> tuple[np.ndarray, pa.Table]:
    """The fast path's rows completed (ids, client, attributes) as a contract table, with
    their line indices; rows ``complete_fast`` gives back join ``fb.left``."""
    from telemetry.ingest.fast import complete_fast

    def ids(rows: np.ndarray) -> list[str]:
        pick = fb.taken[rows].tolist()
        if pre is not None:
            return [pre[i] for i in pick]
        return _derived_ids(ctx.fingerprint, offsets[pick], [lines[i] for i in pick])

    cols, back = complete_fast(fb.columns, ids, ctx.consumers)
    keep = np.flatnonzero(~back)
    idx = pa.array(keep)
    table = pa.table(
        {
            f.name: (
                cols[f.name].take(idx).cast(f.type)
                if f.name in cols
                else pa.nulls(len(keep), f.type)
            )
            for f in EVENT_SCHEMA
        },
        schema=EVENT_SCHEMA,
    )
    ctx.fr.fast += len(keep)
    if back.any():
        fb.left = np.sort(np.concatenate([fb.left, fb.taken[back]]))
    return fb.taken[keep], table


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
