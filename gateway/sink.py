"""Telemetry off the request path: events are buffered and flushed by a background task.

The request handler only appends a dict (no I/O). A flusher task writes
batches to the telemetry store in a worker thread every ``flush_interval_s``
or ``max_batch`` events; shutdown drains everything. If the store is down
or slow and the buffer reaches ``max_buffer``, the oldest events are dropped
and counted (``dropped``), never silently.

    sink = TelemetrySink(TelemetryStore(dir), cfg)
    await sink.start(); sink.emit(event); await sink.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from pathlib import Path
from typing import Any

from gateway.config import TelemetrySink as SinkSettings

__all__ = ["TelemetrySink"]

log = logging.getLogger("gatewise.gateway.telemetry")


class TelemetrySink:
    def __init__(self, store: Any, cfg: SinkSettings, spill_dir: Path | None = None) -> None:
        self.store = store
        self.cfg = cfg
        self.spill_dir = spill_dir
        self._buf: deque[dict[str, Any]] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.emitted = self.written = self.dropped = self.failed_flushes = self.spilled = 0

    def emit(self, event: dict[str, Any]) -> None:
        if len(self._buf) >= self.cfg.max_buffer:
            self._buf.popleft()
            self.dropped += 1
        self._buf.append(event)
        self.emitted += 1
        if len(self._buf) >= self.cfg.max_batch:
            self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._buf)

    async def start(self) -> None:
        # import the Parquet writer now, not in the first flush under traffic (it holds the GIL)
        await asyncio.to_thread(_warm_writer)
        self._task = asyncio.create_task(self._run(), name="telemetry-flusher")

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.cfg.flush_interval_s)
            self._wake.clear()
            await self.flush()

    async def flush(self) -> int:
        """Write what was pending when the flush began (under steady load the buffer never
        empties; draining it in a loop wrote a tiny Parquet file per handful of events)."""
        n = 0
        todo = len(self._buf)
        while todo > 0 and self._buf:
            k = min(todo, len(self._buf), self.cfg.max_batch)
            batch = [self._buf.popleft() for _ in range(k)]
            todo -= k
            try:
                await asyncio.to_thread(self._write, batch)
            except Exception:  # keep the events; try again on the next tick
                self.failed_flushes += 1
                log.exception("telemetry flush of %d events failed; will retry", len(batch))
                self._buf.extendleft(reversed(batch))
                return n
            n += len(batch)
            self.written += len(batch)
        return n

    def _write(self, batch: list[dict[str, Any]]) -> None:
        import pyarrow as pa

        from telemetry.schema import EVENT_SCHEMA

        self.store.append(pa.Table.from_pylist(batch, schema=EVENT_SCHEMA), dedup=False)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for _ in range(3):  # drain; a transient failure gets two more chances
            await self.flush()
            if not self._buf:
                break
        if self._buf:
            self._spill()

    def _spill(self) -> None:
        """The store is unwritable at shutdown: keep the events as JSON lines, never drop them."""
        import json
        import time

        if self.spill_dir is None:
            log.error("telemetry: %d events could not be written at shutdown", len(self._buf))
            return
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        path = self.spill_dir / f"spill-{time.strftime('%Y%m%dT%H%M%S')}-{id(self):x}.jsonl"
        with open(path, "w") as fh:
            for ev in self._buf:
                fh.write(json.dumps(ev, default=str) + "\n")
        log.error("telemetry: store unwritable; %d events spilled to %s", len(self._buf), path)
        self.spilled = len(self._buf)
        self._buf.clear()


def _warm_writer() -> None:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from telemetry.schema import EVENT_SCHEMA

    pq.write_table(EVENT_SCHEMA.empty_table(), io.BytesIO())
    pa.Table.from_pylist([], schema=EVENT_SCHEMA)
