"""Events off the request path: a bounded buffer drained by a background task.

``emit`` only appends a dict (no I/O). A task delivers batches in a worker thread every
``interval_s`` or as soon as ``max_batch`` events wait. When the buffer reaches
``max_buffer`` the oldest events are dropped and counted (``dropped``), never silently.
Subclasses say how a batch is delivered (``_deliver``) and what a failure does
(``_failed``: the default puts the batch back in front and tries on the next tick).

Used by the gateway's telemetry sink (Parquet store) and its stream publisher (broker).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any

__all__ = ["BatchingBuffer"]


class BatchingBuffer:
    def __init__(self, max_buffer: int, max_batch: int, interval_s: float, name: str) -> None:
        self.max_buffer = max_buffer
        self.max_batch = max_batch
        self.interval_s = interval_s
        self.name = name
        self._buf: deque[dict[str, Any]] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.emitted = self.delivered = self.dropped = self.failures = 0

    def emit(self, event: dict[str, Any]) -> None:
        if len(self._buf) >= self.max_buffer:
            self._buf.popleft()
            self.dropped += 1
        self._buf.append(event)
        self.emitted += 1
        if len(self._buf) >= self.max_batch:
            self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._buf)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval_s)
            self._wake.clear()
            await self.flush()

    def _ready(self) -> bool:
        """Whether to try now (a subclass backing off after failures says no)."""
        return True

    async def flush(self) -> int:
        """Deliver what was pending when the flush began (under steady load the buffer never
        empties; draining it in a loop would deliver a handful of events at a time)."""
        n = 0
        if not self._ready():
            return 0
        todo = len(self._buf)
        while todo > 0 and self._buf:
            k = min(todo, len(self._buf), self.max_batch)
            batch = [self._buf.popleft() for _ in range(k)]
            todo -= k
            try:
                await asyncio.to_thread(self._deliver, batch)
            except Exception as exc:
                self.failures += 1
                self._failed(batch, exc)
                return n
            n += len(batch)
            self.delivered += len(batch)
            self._succeeded()
        return n

    def _deliver(self, batch: list[dict[str, Any]]) -> None:
        raise NotImplementedError

    def _failed(self, batch: list[dict[str, Any]], exc: Exception) -> None:
        """Keep the events, in order, for the next tick (bounded: the oldest go first)."""
        room = self.max_buffer - len(self._buf)
        if room < len(batch):
            self.dropped += len(batch) - max(room, 0)
            batch = batch[len(batch) - max(room, 0) :]
        self._buf.extendleft(reversed(batch))

    def _succeeded(self) -> None:
        pass

    async def _stop_task(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
