"""The in-process stream (``stream.backend: memory``): the Broker contract without a server,
and the gateway's publisher → the stream processor through it."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from config.stream import StreamSettings
from telemetry.schema import EVENT_SCHEMA
from telemetry.stream import (
    MemoryBroker,
    StreamPublisher,
    decode,
    encode,
    make_broker,
    position_key,
    publish_table,
)


@pytest.fixture()
def cfg():
    c = StreamSettings(backend="memory", name=f"mem-{uuid.uuid4().hex[:8]}", partitions=3)
    yield c
    MemoryBroker.drop(c.name)


def _table(n: int, client: str = "c1") -> pa.Table:
    t0 = datetime(2026, 11, 2, 12, tzinfo=UTC)
    rows = [
        {
            "request_id": f"r{i}-{uuid.uuid4().hex[:6]}",
            "client_id": client,
            "timestamp": t0 + timedelta(seconds=i),
            "http_request_method": "GET",
            "url_path": "/v1/orders",
            "http_route": "/v1/orders",
            "http_response_status_code": 200,
        }
        for i in range(n)
    ]
    return pa.Table.from_pylist(rows, schema=EVENT_SCHEMA)


def test_make_broker_picks_memory(cfg):
    assert isinstance(make_broker(cfg), MemoryBroker)


def test_entries_come_in_order_once_and_count_limits_a_read(cfg):
    b = MemoryBroker(cfg)
    b.ensure_group([0, 1, 2])
    for i in range(5):
        b.publish({1: f"p{i}".encode()}, {1: 10})
    first = b.read([1], "x", count=2, block_ms=0)
    assert [e.payload for e in first] == [b"p0", b"p1"]
    rest = b.read([0, 1, 2], "x", count=10, block_ms=0)
    assert [e.payload for e in rest] == [b"p2", b"p3", b"p4"]
    assert b.read([0, 1, 2], "x", count=10, block_ms=0) == []
    ids = [position_key(e.id) for e in first + rest]
    assert ids == sorted(ids) and len(set(ids)) == 5
    # positions are Redis-style ms-seq: later than a checkpoint taken a moment ago
    assert ids[0] > position_key(f"{int(time.time() * 1000) - 60_000}-0")


def test_partitions_are_isolated_and_objects_of_one_name_share_the_stream(cfg):
    pub, sub = MemoryBroker(cfg), MemoryBroker(cfg)
    pub.publish({0: b"a", 2: b"c"}, {0: 1, 2: 1})
    assert [e.payload for e in sub.read([2], "x", 10, 0)] == [b"c"]
    assert [(e.partition, e.payload) for e in sub.read([0, 1], "x", 10, 0)] == [(0, b"a")]
    other = StreamSettings(backend="memory", name=cfg.name + "-other", partitions=3)
    assert MemoryBroker(other).read([0, 1, 2], "x", 10, 0) == []
    MemoryBroker.drop(other.name)


def test_a_blocked_read_wakes_on_publish(cfg):
    b = MemoryBroker(cfg)
    threading.Timer(0.05, lambda: MemoryBroker(cfg).publish({0: b"late"}, {0: 1})).start()
    got = b.read([0], "x", 10, block_ms=5_000)
    assert [e.payload for e in got] == [b"late"]
    assert b.read([0], "x", 10, block_ms=20) == []  # times out empty


def test_trimming_drops_the_oldest_and_lag_counts_the_rest(cfg):
    small = cfg.model_copy(update={"max_len": 10})
    b = MemoryBroker(small)
    for i in range(4):
        b.publish({0: f"p{i}".encode()}, {0: 7})
    assert [e.payload for e in b.read([0], "x", 2, 0)] == [b"p0", b"p1"]
    lag = b.lag([0, 1, 2])
    assert lag["lag_entries"] == 2 and lag["lag_events"] == 14 and lag["seconds_behind"] >= 0
    for i in range(4, 20):
        b.publish({0: f"p{i}".encode()}, {0: 7})
    got = [e.payload for e in b.read([0], "x", 100, 0)]
    assert got == [f"p{i}".encode() for i in range(10, 20)]  # p2..p9 were trimmed unread
    assert b.lag([0])["lag_entries"] == 0


def test_publish_table_roundtrips_events(cfg):
    b = MemoryBroker(cfg)
    t = _table(25, "client-a")
    assert publish_table(b, t, cfg.partitions, max_batch=10) == 25
    got = pa.concat_tables(decode(e.payload) for e in b.read([0, 1, 2], "x", 100, 0))
    assert got.column("request_id").to_pylist() == t.column("request_id").to_pylist()
    assert decode(encode(t)).equals(t)


def test_the_gateway_publisher_reaches_a_stream_processor_in_the_same_process(settings, cfg):
    """StreamPublisher (the gateway's side) → memory stream → StreamProcessor.poll_once: the
    events become feature rows, with no server anywhere."""
    from features.stream import StreamProcessor

    s = settings.model_copy(
        update={"stream": cfg.model_copy(update={"enabled": True, "publish_interval_s": 0.01})}
    )
    t = _table(40, "client-live")

    async def publish() -> None:
        pub = StreamPublisher(s.stream)
        await pub.start()
        for row in t.to_pylist():
            pub.emit(row)
        await pub.stop()
        assert pub.published == 40 and pub.dropped == 0

    asyncio.run(publish())
    pushed: list[pa.Table] = []
    proc = StreamProcessor(s, wall_clock=False, push=pushed.append)
    res = proc.poll_once(count=100)
    assert res.events == 40
    rows = pa.concat_tables(pushed).to_pylist()
    mine = [r for r in rows if r["client_id"] == "client-live"]
    assert mine and max(r["request_count_5m"] for r in mine) == 40.0
    assert proc.status()["lag_events"] == 0
