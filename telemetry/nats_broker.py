"""NATS JetStream behind the synchronous ``Broker`` interface of ``telemetry/stream.py``.

Layout: one stream ``<name>`` with the subjects ``<name>.<partition>`` (``max_msgs_per_subject``
= ``max_len``: each partition keeps its newest ``max_len`` entries), one message per entry with
the Arrow IPC batch as payload and the header ``n`` = events in it. The consumer group is one
durable pull consumer per partition, ``<group>-<partition>``, filtered to that partition's
subject, explicit acks, delivering everything from the start of the stream.

Semantics compared with ``RedisBroker``:

* ``Entry.id`` is the stream sequence (``"42"``): ordered within a partition, as
  ``position_key`` expects (sequences are shared by all partitions of the stream, so they have
  gaps within one partition; they only grow).
* An entry read and not acknowledged within ``ack_wait_s`` (default 30 s) is delivered again by
  JetStream, to this instance or the next. After a restart Redis hands a consumer its own
  pending entries first; to keep that order here, the first read of a partition by a new
  ``NatsBroker`` instance that finds unacknowledged entries (a previous instance died holding
  them) re-creates the durable consumer at the acknowledgement floor, so they come back at once
  and before anything newer (``rewind_on_start``). Entries already applied are skipped by the
  reader by position, as with Redis. One group member per partition is assumed (as the
  processor's partition ownership does).
* ``consumer`` (Redis' consumer within the group) has no meaning: a partition's durable
  consumer is the unit.
* ``lag``: ``lag_entries`` = the consumers' ``num_pending`` (entries not yet delivered: Redis'
  group ``lag``); ``lag_events`` sums the ``n`` headers of the first ``lag_scan`` undelivered
  entries per partition and extrapolates the rest by their mean; ``seconds_behind`` is the age
  of the oldest undelivered entry (its stream timestamp).
* An entry is one NATS message: it must fit the server's ``max_payload`` (1 MiB by default).

nats-py is asyncio; this class runs a private event loop in a daemon thread and waits for each
operation with a bound, so nothing hangs: connection failures and timeouts raise (the callers
count and retry). The connection is made lazily and made again after it was closed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from config.stream import StreamSettings
from telemetry.stream import Entry

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS
    from nats.js import JetStreamContext

__all__ = ["NatsBroker"]

log = logging.getLogger("gatewise.stream.nats")

T = TypeVar("T")

# a read with block_ms=0 still gives the server this long to answer the pull request
_MIN_WAIT_S = 0.05


class NatsBroker:
    """JetStream broker (see the module doc)."""

    def __init__(
        self,
        cfg: StreamSettings,
        *,
        ack_wait_s: float = 30.0,
        rewind_on_start: bool = True,
        connect_timeout_s: int = 2,
        op_timeout_s: float = 5.0,
        lag_scan: int = 100,
    ) -> None:
        self.cfg = cfg
        self.ack_wait_s = ack_wait_s
        self.rewind_on_start = rewind_on_start
        self.connect_timeout_s = connect_timeout_s
        self.op_timeout_s = op_timeout_s
        self.lag_scan = lag_scan
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._subs: dict[int, JetStreamContext.PullSubscription] = {}
        self._started: set[int] = set()  # partitions this instance has read (rewound) already
        self._stream_ok = False
        self._replies: dict[tuple[int, str], str] = {}  # (partition, id) -> ack subject
        self._closed = False
        self._lock: asyncio.Lock | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"nats-broker-{cfg.name}", daemon=True
        )
        self._thread.start()

    # -- plumbing -------------------------------------------------------------------------
    def subject(self, p: int) -> str:
        return f"{self.cfg.name}.{p}"

    def durable(self, p: int) -> str:
        return f"{self.cfg.group}-{p}"

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run ``coro`` on the private loop and wait for it, at most ``timeout`` seconds."""
        if self._closed:
            coro.close()
            raise RuntimeError("NatsBroker is closed")
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(timeout)
        except TimeoutError as exc:
            fut.cancel()
            raise TimeoutError(
                str(exc) or f"NATS at {self.cfg.nats_url}: no answer within {timeout:.1f} s"
            ) from None

    @property
    def _budget(self) -> float:
        """Wall-clock bound of one call: a (re)connection plus a few server round trips."""
        return self.connect_timeout_s * 3 + 2.0 + self.op_timeout_s * 2

    async def _conn(self) -> tuple[NATS, JetStreamContext]:
        import nats

        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._nc is None or self._nc.is_closed:
                self._nc = self._js = None
                self._subs.clear()
                self._stream_ok = False
                nc = await nats.connect(
                    self.cfg.nats_url,
                    name="gatewise-stream",
                    connect_timeout=self.connect_timeout_s,
                    allow_reconnect=True,
                    max_reconnect_attempts=2,
                    reconnect_time_wait=1,
                    error_cb=_on_error,
                    disconnected_cb=_on_disconnected,
                    reconnected_cb=_on_reconnected,
                )
                self._nc = nc
                self._js = nc.jetstream(timeout=self.op_timeout_s)
            elif not self._nc.is_connected:
                raise ConnectionError(f"NATS at {self.cfg.nats_url}: not connected (reconnecting)")
            assert self._js is not None
            return self._nc, self._js

    def _check_connected(self) -> None:
        if self._nc is None or not self._nc.is_connected:
            raise ConnectionError(f"NATS at {self.cfg.nats_url}: connection lost")

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        if self._stream_ok:
            return
        from nats.js.api import StorageType
        from nats.js.errors import NotFoundError

        subjects = [f"{self.cfg.name}.*"]
        try:
            info = await js.stream_info(self.cfg.name)
        except NotFoundError:
            await js.add_stream(
                name=self.cfg.name,
                subjects=subjects,
                max_msgs_per_subject=self.cfg.max_len,
                storage=StorageType.FILE,
            )
        else:
            c = info.config
            if c.subjects != subjects or c.max_msgs_per_subject != self.cfg.max_len:
                await js.update_stream(
                    c.evolve(subjects=subjects, max_msgs_per_subject=self.cfg.max_len)
                )
        self._stream_ok = True

    def _consumer_config(self, p: int, start_seq: int = 0) -> Any:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        return ConsumerConfig(
            name=self.durable(p),
            durable_name=self.durable(p),
            filter_subject=self.subject(p),
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if start_seq else DeliverPolicy.ALL,
            opt_start_seq=start_seq or None,
            ack_wait=self.ack_wait_s,
            # the reader acknowledges at its checkpoints: never stall it on unacked entries
            max_ack_pending=self.cfg.max_len,
        )

    async def _ensure_consumer(self, js: JetStreamContext, p: int) -> None:
        from nats.js.errors import NotFoundError

        try:
            await js.consumer_info(self.cfg.name, self.durable(p))
        except NotFoundError:
            await js.add_consumer(self.cfg.name, config=self._consumer_config(p))

    async def _sub(self, js: JetStreamContext, p: int) -> JetStreamContext.PullSubscription:
        sub = self._subs.get(p)
        if sub is not None:
            return sub
        await self._ensure_stream(js)
        await self._ensure_consumer(js, p)
        if self.rewind_on_start and p not in self._started:
            info = await js.consumer_info(self.cfg.name, self.durable(p))
            if info.num_ack_pending:
                # a previous instance died holding these: have them now, before newer ones
                floor = info.ack_floor.stream_seq if info.ack_floor is not None else 0
                log.info(
                    "stream %s partition %d: %d unacknowledged entries, redelivering from %d",
                    self.cfg.name,
                    p,
                    info.num_ack_pending,
                    floor + 1,
                )
                await js.delete_consumer(self.cfg.name, self.durable(p))
                await js.add_consumer(self.cfg.name, config=self._consumer_config(p, floor + 1))
        self._started.add(p)
        sub = await js.pull_subscribe_bind(durable=self.durable(p), stream=self.cfg.name)
        self._subs[p] = sub
        return sub

    # -- the Broker interface -------------------------------------------------------------
    def publish(self, parts: dict[int, bytes], counts: dict[int, int]) -> None:
        if parts:
            self._call(self._publish(parts, counts), self._budget)

    async def _publish(self, parts: dict[int, bytes], counts: dict[int, int]) -> None:
        _, js = await self._conn()
        await self._ensure_stream(js)
        futs: list[asyncio.Future[Any]] = []
        try:
            for p, payload in parts.items():
                futs.append(
                    await js.publish_async(
                        self.subject(p),
                        payload,
                        wait_stall=self.op_timeout_s,
                        stream=self.cfg.name,
                        headers={"n": str(counts.get(p, 0))},
                    )
                )
            await asyncio.wait_for(asyncio.gather(*futs), self.op_timeout_s)
        except BaseException as exc:
            for f in futs:
                f.cancel()  # frees its slot in nats-py's table of pending acks
            if isinstance(exc, TimeoutError):
                raise TimeoutError(
                    f"NATS at {self.cfg.nats_url}: publish not acknowledged within "
                    f"{self.op_timeout_s:.1f} s"
                ) from None
            raise

    def ensure_group(self, partitions: Sequence[int]) -> None:
        self._call(self._ensure_group(partitions), self._budget + len(partitions))

    async def _ensure_group(self, partitions: Sequence[int]) -> None:
        _, js = await self._conn()
        await self._ensure_stream(js)
        for p in partitions:
            await self._ensure_consumer(js, p)

    def read(
        self, partitions: Sequence[int], consumer: str, count: int, block_ms: int
    ) -> list[Entry]:
        wait = max(block_ms / 1000, _MIN_WAIT_S)
        return self._call(self._read(partitions, count, wait), self._budget + wait)

    async def _read(self, partitions: Sequence[int], count: int, wait: float) -> list[Entry]:
        _, js = await self._conn()
        subs = [(p, await self._sub(js, p)) for p in partitions]
        t0 = time.monotonic()
        # first what is there now, on every partition; only if nothing, wait up to block_ms
        got = await asyncio.gather(*(self._fetch(s, count, _MIN_WAIT_S) for _, s in subs))
        rest = wait - (time.monotonic() - t0)
        if not any(got) and rest > _MIN_WAIT_S:
            got = await asyncio.gather(*(self._fetch(s, count, rest) for _, s in subs))
        out = []
        for (p, _), msgs in zip(subs, got, strict=True):
            for m in msgs:
                eid = str(m.metadata.sequence.stream)
                assert m.reply
                self._replies[(p, eid)] = m.reply
                out.append(Entry(p, eid, m.data))
        return out

    async def _fetch(
        self, sub: JetStreamContext.PullSubscription, count: int, wait: float
    ) -> list[Any]:
        try:
            return await sub.fetch(batch=max(1, count), timeout=wait)
        except TimeoutError:  # nothing there (nats' TimeoutError and FetchTimeoutError too)
            self._check_connected()
            return []

    def ack(self, entries: Sequence[Entry]) -> None:
        if entries:
            self._call(self._ack(entries), self._budget)

    async def _ack(self, entries: Sequence[Entry]) -> None:
        nc, _ = await self._conn()
        keys = [k for e in entries if (k := (e.partition, e.id)) in self._replies]
        # an entry not read by this instance has no ack subject here: JetStream delivers it
        # again after ack_wait (the reader skips it by position)
        for k in keys:
            await nc.publish(self._replies[k], b"+ACK")
        await nc.flush(timeout=max(1, int(self.op_timeout_s)))
        for k in keys:
            self._replies.pop(k, None)

    def lag(self, partitions: Sequence[int]) -> dict[str, float]:
        """Entries and events not yet delivered to the group, and how old the oldest is."""
        return self._call(self._lag(partitions), self._budget * 2 + len(partitions))

    async def _lag(self, partitions: Sequence[int]) -> dict[str, float]:
        from nats.js.errors import NotFoundError

        _, js = await self._conn()
        entries = 0
        events = 0.0
        oldest: float | None = None
        for p in partitions:
            try:
                info = await js.consumer_info(self.cfg.name, self.durable(p))
            except NotFoundError:
                continue
            pending = int(info.num_pending or 0)
            entries += pending
            if not pending:
                continue
            seq = (info.delivered.stream_seq if info.delivered is not None else 0) + 1
            seen = n = 0
            while seen < min(pending, self.lag_scan):
                try:
                    m = await js.get_msg(self.cfg.name, seq, subject=self.subject(p), next=True)
                except NotFoundError:
                    break
                if seen == 0 and m.time is not None:
                    ts = m.time.timestamp()
                    oldest = ts if oldest is None else min(oldest, ts)
                n += int((m.headers or {}).get("n", 0))
                seen += 1
                seq = int(m.seq or seq) + 1
            events += n + (pending - seen) * (n / seen if seen else 0.0)
        return {
            "lag_entries": entries,
            "lag_events": round(events),
            "seconds_behind": 0.0 if oldest is None else max(0.0, time.time() - oldest),
        }

    def close(self) -> None:
        if self._closed:
            return
        try:
            self._call(self._close(), self.op_timeout_s + 2)
        except Exception as exc:
            log.debug("closing the NATS connection: %s", exc)
        finally:
            self._closed = True
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            if not self._thread.is_alive():
                self._loop.close()

    async def _close(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        self._subs.clear()
        if nc is None or nc.is_closed:
            return
        try:
            if nc.is_connected:
                await nc.flush(timeout=max(1, int(self.op_timeout_s)))
        finally:
            await nc.close()


async def _on_error(exc: Exception) -> None:
    log.debug("nats: %s: %s", type(exc).__name__, exc)


async def _on_disconnected() -> None:
    log.debug("nats: disconnected")  # also on every close: the callers log failed calls


async def _on_reconnected() -> None:
    log.info("nats: reconnected")
