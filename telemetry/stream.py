"""The live telemetry stream: the contract between the gateway (publisher) and the stream
processor (``features/stream.py``).

Events travel in batches: one stream entry holds one Arrow IPC batch of events of one
partition (``partition_of(client_id)``), so a consumer that owns a partition sees every event
of its clients and no other's. Brokers: Redis Streams (default) or NATS JetStream, behind one
small synchronous interface (``Broker``); ``memory`` keeps the stream inside one process
(the gateway and the processor together: the demo's closed loop, tests).

The publisher never blocks or fails a request: ``emit`` appends to a bounded buffer; a
background task publishes every ``publish_interval_s``. While the broker is down the events
wait in the buffer (retried with backoff); when it overflows the oldest are dropped and
counted (``dropped``), and every event is in the Parquet store regardless, so the next batch
build has it.

    pub = StreamPublisher(cfg); await pub.start(); pub.emit(event); await pub.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from config.stream import StreamSettings
from telemetry.batching import BatchingBuffer

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "Broker",
    "Entry",
    "MemoryBroker",
    "RedisBroker",
    "StreamPublisher",
    "StreamSettings",
    "decode",
    "encode",
    "make_broker",
    "partition_of",
    "split_by_partition",
]

log = logging.getLogger("gatewise.stream")


def partition_of(client_id: str, partitions: int) -> int:
    """Stable across processes and runs (unlike ``hash``)."""
    return zlib.crc32(client_id.encode()) % partitions


# -- codec ------------------------------------------------------------------------------


def encode(table: pa.Table) -> bytes:
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    opts = pa.ipc.IpcWriteOptions(compression="lz4")
    with pa.ipc.new_stream(sink, table.schema, options=opts) as w:
        w.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def decode(payload: bytes) -> pa.Table:
    import pyarrow as pa

    return pa.ipc.open_stream(pa.py_buffer(payload)).read_all()


def split_by_partition(table: pa.Table, partitions: int) -> dict[int, pa.Table]:
    import pyarrow as pa
    import pyarrow.compute as pc

    ids = table.column("client_id").to_pylist()
    part = pa.array([zlib.crc32(c.encode()) % partitions for c in ids], pa.int32())
    if partitions == 1:
        return {0: table}
    out = {}
    for p in pc.unique(part).to_pylist():
        out[int(p)] = table.filter(pc.equal(part, p))
    return out


# -- brokers ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    partition: int
    id: str  # broker position, ordered within a partition ("ms-seq" for Redis, "seq" for NATS)
    payload: bytes


class Broker(Protocol):
    def publish(self, parts: dict[int, bytes], counts: dict[int, int]) -> None: ...
    def ensure_group(self, partitions: Sequence[int]) -> None: ...
    def read(
        self, partitions: Sequence[int], consumer: str, count: int, block_ms: int
    ) -> list[Entry]: ...
    def ack(self, entries: Sequence[Entry]) -> None: ...
    def lag(self, partitions: Sequence[int]) -> dict[str, float]: ...
    def close(self) -> None: ...


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


LAG_SCAN = 50  # undelivered entries read to count their events


def position_key(entry_id: str) -> tuple[int, ...]:
    """Order of broker positions (Redis "1700000000000-3", NATS "42")."""
    return tuple(int(x) for x in entry_id.split("-"))


class RedisBroker:
    """Redis Streams: key ``<name>:<partition>``, one consumer group, XADD with approximate
    MAXLEN trimming, XREADGROUP (own pending entries first after a restart), XACK."""

    def __init__(self, cfg: StreamSettings) -> None:
        import redis

        self.cfg = cfg
        self.r = redis.Redis.from_url(cfg.redis_url, socket_connect_timeout=0.5, socket_timeout=2.0)
        self._pending_done: set[str] = set()
        self._pending_from: dict[int, str] = {}

    def key(self, p: int) -> str:
        return f"{self.cfg.name}:{p}"

    def publish(self, parts: dict[int, bytes], counts: dict[int, int]) -> None:
        pipe = self.r.pipeline(transaction=False)
        for p, payload in parts.items():
            pipe.xadd(
                self.key(p),
                {"a": payload, "n": counts.get(p, 0)},
                maxlen=self.cfg.max_len,
                approximate=True,
            )
        pipe.execute()

    def ensure_group(self, partitions: Sequence[int]) -> None:
        import redis

        for p in partitions:
            try:
                self.r.xgroup_create(self.key(p), self.cfg.group, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def read(
        self, partitions: Sequence[int], consumer: str, count: int, block_ms: int
    ) -> list[Entry]:
        # after a (re)start, first what was delivered to this consumer and never acknowledged
        # (an explicit id returns pending entries after it: the cursor moves through them)
        todo = [p for p in partitions if self.key(p) not in self._pending_done]
        if todo:
            res = self.r.xreadgroup(
                self.cfg.group,
                consumer,
                {self.key(p): self._pending_from.get(p, "0") for p in todo},
                count=count,
            )
            out = self._entries(res)
            for p in todo:
                mine = [e.id for e in out if e.partition == p]
                if mine:
                    self._pending_from[p] = mine[-1]
                else:
                    self._pending_done.add(self.key(p))
            if out:
                return out
        res = self.r.xreadgroup(
            self.cfg.group,
            consumer,
            {self.key(p): ">" for p in partitions},
            count=count,
            block=block_ms or None,
        )
        return self._entries(res)

    def _entries(self, res: Any) -> list[Entry]:
        out = []
        for key, items in res or []:
            k = key.decode() if isinstance(key, bytes) else key
            p = int(k.rsplit(":", 1)[1])
            for eid, fields in items:
                if fields is None:  # trimmed while pending
                    continue
                out.append(Entry(p, eid.decode() if isinstance(eid, bytes) else eid, fields[b"a"]))
        return out

    def ack(self, entries: Sequence[Entry]) -> None:
        by: dict[int, list[str]] = {}
        for e in entries:
            by.setdefault(e.partition, []).append(e.id)
        if not by:
            return
        pipe = self.r.pipeline(transaction=False)
        for p, ids in by.items():
            pipe.xack(self.key(p), self.cfg.group, *ids)
        pipe.execute()

    def lag(self, partitions: Sequence[int]) -> dict[str, float]:
        """Entries and events not yet delivered to the group, and how old the oldest is."""
        entries = events = 0
        oldest_ms: int | None = None
        now_ms = time.time() * 1000
        for p in partitions:
            info: Any = self.r.xinfo_groups(self.key(p))
            groups = {_s(g["name"]): g for g in info}  # redis-py: str keys, bytes values
            g = groups.get(self.cfg.group)
            if g is None:
                continue
            lag = g.get("lag")
            last = _s(g["last-delivered-id"])
            # the first undelivered entries (payloads and all: keep it short); events of the
            # rest are estimated from their average size
            nxt: Any = self.r.xrange(self.key(p), min=f"({last}", count=LAG_SCAN)
            if lag is None:  # unknown after trimming: count what is there
                lag = len(nxt)
            entries += int(lag)
            seen = sum(int(f.get(b"n", 0)) for _, f in nxt)
            events += seen if int(lag) <= len(nxt) else round(seen / len(nxt) * int(lag))
            if nxt:
                ms = int(nxt[0][0].decode().split("-")[0])
                oldest_ms = ms if oldest_ms is None else min(oldest_ms, ms)
        return {
            "lag_entries": entries,
            "lag_events": events,
            "seconds_behind": 0.0 if oldest_ms is None else max(0.0, (now_ms - oldest_ms) / 1000),
        }

    def close(self) -> None:
        self.r.close()


class _MemoryStream:
    """One named in-process stream: per partition, entries in order and the group's cursor."""

    def __init__(self, partitions: int, max_len: int) -> None:
        self.cond = threading.Condition()
        self.max_len = max_len
        self.entries: dict[int, list[tuple[str, bytes, int, float]]] = {
            p: [] for p in range(partitions)
        }
        self.next: dict[int, int] = dict.fromkeys(range(partitions), 0)  # first undelivered
        self.last_id: dict[int, tuple[int, int]] = {}


_MEMORY: dict[str, _MemoryStream] = {}
_MEMORY_LOCK = threading.Lock()


class MemoryBroker:
    """A stream inside one process (``backend: memory``): the gateway and the stream processor
    run in the same process (``gatewise demo``'s closed loop, tests), no server to start.
    Entries of one ``name`` are shared by every broker object of that name in the process;
    one consumer group; positions are Redis-style ``ms-seq``, so a checkpoint written against
    one run's stream never hides the next run's entries. Nothing survives the process: a
    restarted processor bootstraps from stored telemetry, as with a trimmed Redis stream."""

    def __init__(self, cfg: StreamSettings) -> None:
        self.cfg = cfg
        with _MEMORY_LOCK:
            st = _MEMORY.get(cfg.name)
            if st is None or len(st.entries) != cfg.partitions:
                st = _MEMORY[cfg.name] = _MemoryStream(cfg.partitions, cfg.max_len)
        self.st = st

    @staticmethod
    def drop(name: str) -> None:
        """Forget the stream ``name`` (its entries and cursor)."""
        with _MEMORY_LOCK:
            _MEMORY.pop(name, None)

    def _next_id(self, p: int) -> str:
        ms = int(time.time() * 1000)
        last = self.st.last_id.get(p)
        nid = (ms, 0) if last is None or ms > last[0] else (last[0], last[1] + 1)
        self.st.last_id[p] = nid
        return f"{nid[0]}-{nid[1]}"

    def publish(self, parts: dict[int, bytes], counts: dict[int, int]) -> None:
        st = self.st
        with st.cond:
            now = time.time()
            for p, payload in parts.items():
                q = st.entries[p]
                q.append((self._next_id(p), payload, counts.get(p, 0), now))
                if len(q) > st.max_len:  # trimmed like Redis MAXLEN: the oldest go
                    cut = len(q) - st.max_len
                    del q[:cut]
                    st.next[p] = max(0, st.next[p] - cut)
            st.cond.notify_all()

    def ensure_group(self, partitions: Sequence[int]) -> None:
        bad = [p for p in partitions if p not in self.st.entries]
        if bad:
            raise ValueError(f"partitions {bad} outside 0..{len(self.st.entries) - 1}")

    def _undelivered(self, p: int) -> list[tuple[str, bytes, int, float]]:
        return self.st.entries[p][self.st.next[p] :]

    def read(
        self, partitions: Sequence[int], consumer: str, count: int, block_ms: int
    ) -> list[Entry]:
        st = self.st
        deadline = time.monotonic() + block_ms / 1000
        with st.cond:
            while True:
                out = []
                for p in partitions:
                    got = st.entries[p][st.next[p] : st.next[p] + count]
                    out += [Entry(p, eid, payload) for eid, payload, _, _ in got]
                    st.next[p] += len(got)
                left = deadline - time.monotonic()
                if out or left <= 0:
                    return out
                st.cond.wait(left)

    def ack(self, entries: Sequence[Entry]) -> None:
        """Delivered entries are not redelivered in a process; nothing to keep."""

    def lag(self, partitions: Sequence[int]) -> dict[str, float]:
        entries = events = 0
        oldest: float | None = None
        with self.st.cond:
            for p in partitions:
                rest = self._undelivered(p)
                entries += len(rest)
                events += sum(n for _, _, n, _ in rest)
                if rest:
                    oldest = rest[0][3] if oldest is None else min(oldest, rest[0][3])
        return {
            "lag_entries": entries,
            "lag_events": events,
            "seconds_behind": 0.0 if oldest is None else max(0.0, time.time() - oldest),
        }

    def close(self) -> None:
        """The stream stays with the process (another broker object of the name reads it)."""


def make_broker(cfg: StreamSettings) -> Broker:
    if cfg.backend == "nats":
        from telemetry.nats_broker import NatsBroker

        return NatsBroker(cfg)
    if cfg.backend == "memory":
        return MemoryBroker(cfg)
    return RedisBroker(cfg)


# -- the gateway's publisher ------------------------------------------------------------


class StreamPublisher(BatchingBuffer):
    """Bounded, batched, non-blocking publishing of gateway events (see module doc)."""

    def __init__(self, cfg: StreamSettings, broker: Broker | None = None) -> None:
        super().__init__(cfg.max_buffer, cfg.max_batch, cfg.publish_interval_s, "stream-publisher")
        self.cfg = cfg
        self._broker = broker
        self.connected = False
        self.last_error: str | None = None
        self._retry_at = 0.0
        self._backoff = 0.0

    @property
    def published(self) -> int:
        return self.delivered

    @property
    def failed_publishes(self) -> int:
        return self.failures

    def stats(self) -> dict[str, Any]:
        return {
            "backend": self.cfg.backend,
            "emitted": self.emitted,
            "published": self.published,
            "pending": self.pending,
            "dropped": self.dropped,
            "failed_publishes": self.failed_publishes,
            "connected": self.connected,
            "last_error": self.last_error,
        }

    def _ready(self) -> bool:
        return time.monotonic() >= self._retry_at

    def _failed(self, batch: list[dict[str, Any]], exc: Exception) -> None:
        """Keep the events (bounded) and back off: 0.25 s doubling to 5 s."""
        self.connected = False
        self.last_error = f"{type(exc).__name__}: {exc}"
        self._backoff = min(5.0, max(0.25, self._backoff * 2))
        self._retry_at = time.monotonic() + self._backoff
        if self.failures in (1, 10) or self.failures % 100 == 0:
            log.warning(
                "stream publish failed (%d so far, %d events waiting): %s",
                self.failures,
                len(self._buf) + len(batch),
                self.last_error,
            )
        super()._failed(batch, exc)

    def _succeeded(self) -> None:
        self.connected = True
        self._backoff = 0.0

    def _deliver(self, batch: list[dict[str, Any]]) -> None:
        self._publish(batch)

    def _publish(self, batch: list[dict[str, Any]]) -> None:
        import pyarrow as pa

        from telemetry.schema import EVENT_SCHEMA

        if self._broker is None:
            self._broker = make_broker(self.cfg)
        table = pa.Table.from_pylist(batch, schema=EVENT_SCHEMA)
        parts = split_by_partition(table, self.cfg.partitions)
        self._broker.publish(
            {p: encode(t) for p, t in parts.items()}, {p: t.num_rows for p, t in parts.items()}
        )

    async def stop(self, timeout_s: float = 5.0) -> None:
        await self._stop_task()
        self._retry_at = 0.0
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flush(), timeout_s)
        if self._buf:
            log.warning(
                "stream: %d events not published at shutdown (they are in the telemetry store)",
                len(self._buf),
            )
        if self._broker is not None:
            with contextlib.suppress(Exception):
                self._broker.close()


def publish_table(broker: Broker, table: pa.Table, partitions: int, max_batch: int = 5000) -> int:
    """Publish a table of events (a replay, a test) in entries of at most ``max_batch``."""
    n = 0
    for off in range(0, table.num_rows, max_batch):
        chunk = table.slice(off, max_batch)
        parts = split_by_partition(chunk, partitions)
        broker.publish(
            {p: encode(t) for p, t in parts.items()}, {p: t.num_rows for p, t in parts.items()}
        )
        n += chunk.num_rows
    return n
