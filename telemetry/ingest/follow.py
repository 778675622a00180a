"""``gatewise ingest --follow``: a gateway's growing access logs, live, into the telemetry
stream and the store.

``Tailer`` (``tail.py``) hands over the new complete lines of each file; they are parsed
like a batch ingest (the fast path, the per-record parser for the rest, rejects to the
quarantine) and

1. published to the telemetry stream at once (the stream processor turns them into online
   features within seconds, as it does for the gateway's own events), and
2. appended to the Parquet store in larger batches (every ``store_every_s`` seconds or
   ``store_rows`` rows: one part file per few seconds, not per poll);

a chunk's checkpoint is committed only once its events are in the store. A crash replays at
most the uncommitted chunks: the store drops them as duplicates and the stream processor
too, because request ids are derived from the file's first line, the byte offset and the
line, exactly as a batch ingest of the same file derives them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from telemetry.ingest import FileReport, LogFormat, _Ctx, _json_batch, _Quarantine, parse_lines
from telemetry.ingest.tail import Chunk, Tailer
from telemetry.schema import EVENT_SCHEMA
from telemetry.store import TelemetryStore

__all__ = ["FollowStats", "Follower"]

log = logging.getLogger("gatewise.follow")


@dataclass
class FollowStats:
    files: dict[str, FileReport] = field(default_factory=dict)
    published: int = 0
    publish_failures: int = 0
    stored_batches: int = 0
    last_line_at: float | None = None  # monotonic time the newest line was read

    @property
    def read(self) -> int:
        return sum(f.read for f in self.files.values())

    @property
    def accepted(self) -> int:
        return sum(f.accepted for f in self.files.values())

    @property
    def rejected(self) -> int:
        return sum(f.rejected for f in self.files.values())

    @property
    def duplicate(self) -> int:
        return sum(f.duplicate for f in self.files.values())


class Follower:
    """Follow ``paths`` in format ``fmt``; ``publish(table)`` sends events to the stream."""

    def __init__(
        self,
        paths: list[Path],
        fmt: LogFormat,
        store: TelemetryStore,
        *,
        checkpoint: Path,
        rejects_dir: Path,
        publish: Callable[[pa.Table], Any] | None = None,
        consumers: dict[str, dict[str, Any]] | None = None,
        poll_s: float = 0.25,
        store_every_s: float = 5.0,
        store_rows: int = 50_000,
        rotate_wait_s: float = 5.0,
    ) -> None:
        if fmt.is_json and fmt.json_vars is None:
            raise ValueError(
                f"--follow reads text logs and JSON lines keyed by variables (nginx-json); "
                f"{fmt.name} records are nested: ingest its files in batches"
            )
        self.fmt = fmt
        self.store = store
        self.publish = publish
        self.consumers = consumers
        self.poll_s = poll_s
        self.store_every_s = store_every_s
        self.store_rows = store_rows
        self.tailer = Tailer(
            paths, checkpoint, poll_s=poll_s, max_lines=store_rows, rotate_wait_s=rotate_wait_s
        )
        self.quarantine = _Quarantine(
            rejects_dir / f"{time.strftime('%Y%m%dT%H%M%S')}-follow.jsonl",
            budget=64 << 20,
        )
        self.stats = FollowStats({str(p): FileReport(str(p), format=fmt.name) for p in paths})
        self._fps: dict[tuple[str, int], bytes] = {}
        self._pending: list[tuple[Chunk, pa.Table]] = []
        self._pending_rows = 0
        self._last_store = time.monotonic()

    # -- one chunk -----------------------------------------------------------------------

    def _fingerprint(self, chunk: Chunk) -> bytes:
        key = (chunk.path, chunk.inode)
        fp = self._fps.get(key)
        if fp is None:
            fp = self.tailer.first_line(chunk) or f"inode:{chunk.inode}".encode()
            self._fps[key] = fp
        return fp

    def _parse(self, chunk: Chunk) -> pa.Table:
        fr = self.stats.files[chunk.path]
        ctx = _Ctx(
            Path(chunk.path),
            self._fingerprint(chunk),
            self.store,
            fr,
            self.quarantine,
            self.consumers,
            None,
        )
        offsets = np.array([o for o, _ in chunk.lines], dtype=np.int64)
        lines = [raw for _, raw in chunk.lines]
        # line numbers are unknown while following: the rejects name the byte offset
        linenos = np.zeros(len(lines), np.int64)
        if self.fmt.is_json:
            return _json_batch(ctx, self.fmt, linenos, offsets, lines)  # counts what it reads
        fr.read += len(lines)
        return parse_lines(ctx, self.fmt, linenos, offsets, lines, True)

    def _send(self, table: pa.Table) -> None:
        if self.publish is None or table.num_rows == 0:
            return
        try:
            self.publish(table)
            self.stats.published += table.num_rows
        except Exception as exc:  # the store still gets them; the next batch build has them
            self.stats.publish_failures += 1
            log.warning("follow: publishing %d events failed: %s", table.num_rows, exc)

    def flush(self) -> None:
        """Append the pending events to the store, then commit their chunks."""
        if not self._pending:
            return
        tables = [t for _, t in self._pending if t.num_rows]
        if tables:
            res = self.store.append(pa.concat_tables(tables))
            # accepted/duplicate are counted per file: attribute by share of rows
            by_file: dict[str, int] = {}
            for ch, t in self._pending:
                by_file[ch.path] = by_file.get(ch.path, 0) + t.num_rows
            total = sum(by_file.values())
            dup_left = res.duplicates
            for i, (path, n) in enumerate(by_file.items()):
                d = dup_left if i == len(by_file) - 1 else round(res.duplicates * n / total)
                dup_left -= d
                self.stats.files[path].accepted += n - d
                self.stats.files[path].duplicate += d
            self.stats.stored_batches += 1
        for ch, _ in self._pending:
            self.tailer.commit(ch)
        self._pending.clear()
        self._pending_rows = 0
        self._last_store = time.monotonic()

    def step(self) -> int:
        """One poll: parse and publish the new lines; store and commit when due. Returns the
        number of lines read."""
        chunks = self.tailer.poll()
        n = 0
        for ch in chunks:
            table = self._parse(ch) if ch.lines else EVENT_SCHEMA.empty_table()
            self._send(table)
            self._pending.append((ch, table))
            self._pending_rows += table.num_rows
            n += len(ch.lines)
        if n:
            self.stats.last_line_at = time.monotonic()
        due = time.monotonic() - self._last_store >= self.store_every_s
        if self._pending and (due or self._pending_rows >= self.store_rows):
            self.flush()
        return n

    def run(
        self,
        stop: threading.Event,
        on_step: Callable[[FollowStats], None] | None = None,
        idle_exit_s: float | None = None,
    ) -> None:
        """Follow until ``stop`` is set (or, with ``idle_exit_s``, until no line came for that
        long); the pending events are stored and committed on the way out."""
        idle_since = time.monotonic()
        try:
            while not stop.is_set():
                if self.step():
                    idle_since = time.monotonic()
                elif idle_exit_s is not None and time.monotonic() - idle_since >= idle_exit_s:
                    break
                else:
                    stop.wait(self.poll_s)
                if on_step is not None:
                    on_step(self.stats)
        finally:
            self.flush()
            self.quarantine.close()

    def close(self) -> None:
        self.tailer.close()
