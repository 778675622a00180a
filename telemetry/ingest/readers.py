"""Streaming readers: lines or JSON values of plain or gzip files, in bounded memory."""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, cast

import numpy as np

__all__ = [
    "Record",
    "file_fingerprint",
    "iter_json_records",
    "iter_line_batches",
    "iter_lines",
    "json_records_of",
    "open_maybe_gzip",
]

# (line number, byte offset in the decompressed stream, raw bytes, parsed JSON or None, error or None)
MAX_RECORD_CHARS = 16 << 20  # a JSON value longer than this is treated as malformed
Record = tuple[int, int, bytes, Any, str | None]


def open_maybe_gzip(path: Path) -> IO[bytes]:
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return cast(IO[bytes], gzip.open(path, "rb"))
    return open(path, "rb")


def file_fingerprint(path: Path) -> bytes:
    """Identity of a log file's content, independent of its name: the first line.

    A log that grows keeps its fingerprint (so re-ingesting it adds only the
    new lines); a rotated or gzipped copy of the same content has the same one.
    """
    with open_maybe_gzip(path) as fh:
        return fh.readline(4096)


def iter_lines(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """(line number from 1, byte offset, line without its newline); blank lines skipped."""
    offset = 0
    with open_maybe_gzip(path) as fh:
        for lineno, line in enumerate(fh, start=1):
            stripped = line.rstrip(b"\r\n")
            if stripped.strip():
                yield lineno, offset, stripped
            offset += len(line)


def iter_line_batches(
    path: Path, max_lines: int = 50_000, block: int = 16 << 20
) -> Iterator[tuple[np.ndarray, np.ndarray, list[bytes]]]:
    """Batches of (line numbers from 1, byte offsets, lines without their newline) with
    the same lines, numbers and offsets as ``iter_lines`` (blank lines skipped), read
    in large blocks so the per-line work is a split, not a loop."""
    lineno = 1
    base = 0
    carry = b""
    with open_maybe_gzip(path) as fh:
        while True:
            data = fh.read(block)
            if not data:
                break
            buf = carry + data
            cut = buf.rfind(b"\n")
            if cut < 0:
                carry = buf
                continue
            carry = buf[cut + 1 :]
            body = buf[:cut]
            yield from _batches(body.split(b"\n"), lineno, base, max_lines, _odd(body))
            lineno += buf.count(b"\n", 0, cut + 1)
            base += cut + 1
        if carry:
            yield from _batches([carry], lineno, base, max_lines, _odd(carry))


_WS_AFTER_NL = re.compile(rb"\n[ \t\x0b\x0c]")


def _odd(block: bytes) -> bool:
    """Whether a block has carriage returns or lines starting with whitespace (only then
    can a line need stripping or be whitespace only): scans of the block, not of lines."""
    return (
        b"\r" in block
        or block[:1] in (b" ", b"\t", b"\x0b", b"\x0c")
        or _WS_AFTER_NL.search(block) is not None
    )


def _batches(
    parts: list[bytes], lineno: int, base: int, max_lines: int, odd: bool
) -> Iterator[tuple[np.ndarray, np.ndarray, list[bytes]]]:
    lens = np.fromiter(map(len, parts), dtype=np.int64, count=len(parts)) + 1
    starts = base + np.concatenate([[0], np.cumsum(lens)[:-1]])
    numbers = lineno + np.arange(len(parts), dtype=np.int64)
    if odd:  # CRLF line ends, or lines that may be whitespace only
        parts = [p.rstrip(b"\r") for p in parts]
        keep = np.fromiter((bool(p.strip()) for p in parts), dtype=bool, count=len(parts))
    else:
        keep = lens > 1  # only empty lines are blank
    if not keep.all():
        idx = np.flatnonzero(keep)
        parts = [parts[i] for i in idx.tolist()]
        starts, numbers = starts[idx], numbers[idx]
    for a in range(0, len(parts), max_lines):
        yield numbers[a : a + max_lines], starts[a : a + max_lines], parts[a : a + max_lines]


def _expand(lineno: int, offset: int, raw: bytes, value: Any) -> Iterator[Record]:
    if isinstance(value, list):
        for i, item in enumerate(value):
            item_raw = json.dumps(item, separators=(",", ":")).encode()
            if isinstance(item, dict):
                yield lineno, offset + i, item_raw, item, None
            else:
                yield lineno, offset + i, item_raw, None, f"array member {i} is not a JSON object"
    elif isinstance(value, dict):
        yield lineno, offset, raw, value, None
    else:
        yield lineno, offset, raw, None, "not a JSON object"


def iter_json_records(path: Path) -> Iterator[Record]:
    """``json_records_of`` the lines of ``path``."""
    return json_records_of(iter_lines(path))


def json_records_of(lines: Iterable[tuple[int, int, bytes]]) -> Iterator[Record]:
    """Every JSON object in a file of JSON lines, of pretty-printed JSON values,
    or of arrays of objects (Kong's batched http-log).

    Each line is first parsed on its own (JSON lines, the fast path). Lines that
    are not a whole value are gathered until a line closing at column 0 (``}``
    or ``]``) completes a pretty-printed value. Lines that never form a value
    are yielded one by one with the parse error, so one bad record never aborts
    the file. Array members get the array's offset plus their index, keeping
    derived ids distinct.
    """
    pending: list[tuple[int, int, bytes]] = []
    pending_bytes = 0

    def reject_pending(msg: str) -> Iterator[Record]:
        for lineno, offset, line in pending:
            yield lineno, offset, line, None, msg
        pending.clear()

    for lineno, offset, line in lines:
        head = line.lstrip()[:1]
        if head in (b"{", b"["):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                pass
            else:
                # a whole value on one line: whatever was pending never closed
                yield from reject_pending("invalid JSON: not a complete value")
                pending_bytes = 0
                yield from _expand(lineno, offset, line, value)
                continue
        pending.append((lineno, offset, line))
        pending_bytes += len(line)
        if line[:1] in (b"}", b"]"):
            block = b"\n".join(p[2] for p in pending)
            try:
                value = json.loads(block)
            except json.JSONDecodeError as exc:
                if pending_bytes > MAX_RECORD_CHARS:
                    yield from reject_pending(f"invalid JSON: {exc.msg}")
                    pending_bytes = 0
                continue
            first_line, first_offset = pending[0][0], pending[0][1]
            pending.clear()
            pending_bytes = 0
            yield from _expand(first_line, first_offset, block, value)
        elif pending_bytes > MAX_RECORD_CHARS:
            yield from reject_pending("invalid JSON: value too long or never closed")
            pending_bytes = 0
    if pending:
        block = b"\n".join(p[2] for p in pending)
        try:
            value = json.loads(block)
        except json.JSONDecodeError as exc:
            yield from reject_pending(f"invalid JSON: {exc.msg}")
        else:
            yield from _expand(pending[0][0], pending[0][1], block, value)
