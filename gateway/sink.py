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
import logging
from pathlib import Path
from typing import Any

from config.gateway import TelemetrySink as SinkSettings
from telemetry.batching import BatchingBuffer

__all__ = ["TelemetrySink"]

log = logging.getLogger("gatewise.gateway.telemetry")


class TelemetrySink(BatchingBuffer):
    def __init__(self, store: Any, cfg: SinkSettings, spill_dir: Path | None = None) -> None:
        super().__init__(cfg.max_buffer, cfg.max_batch, cfg.flush_interval_s, "telemetry-flusher")
        self.store = store
        self.cfg = cfg
        self.spill_dir = spill_dir
        self.spilled = 0

    @property
    def written(self) -> int:
        return self.delivered

    @property
    def failed_flushes(self) -> int:
        return self.failures

    async def start(self) -> None:
        # import the Parquet writer now, not in the first flush under traffic (it holds the GIL)
        await asyncio.to_thread(_warm_writer)
        await super().start()

    def _failed(self, batch: list[dict[str, Any]], exc: Exception) -> None:
        log.error("telemetry flush of %d events failed; will retry: %s", len(batch), exc)
        super()._failed(batch, exc)

    def _deliver(self, batch: list[dict[str, Any]]) -> None:
        self._write(batch)

    def _write(self, batch: list[dict[str, Any]]) -> None:
        import pyarrow as pa

        from telemetry.schema import EVENT_SCHEMA

        self.store.append(pa.Table.from_pylist(batch, schema=EVENT_SCHEMA), dedup=False)

    async def stop(self) -> None:
        await self._stop_task()
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
