"""NatsBroker on a real NATS server with JetStream (127.0.0.1:4222); skipped when none answers.

Each test has its own stream (a uuid name), deleted at teardown.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa
import pytest

from config.stream import StreamSettings
from telemetry.nats_broker import NatsBroker
from telemetry.stream import Entry, decode, encode, make_broker, position_key

pytestmark = pytest.mark.integration

NATS_URL = "nats://127.0.0.1:4222"


def _nats_answers() -> str | None:
    """None when a NATS server greets us on 127.0.0.1:4222, else why not."""
    try:
        with socket.create_connection(("127.0.0.1", 4222), timeout=2) as s:
            s.settimeout(2)
            hello = s.recv(4096)
    except OSError as exc:
        return f"no NATS server on 127.0.0.1:4222 ({exc})"
    if not hello.startswith(b"INFO"):
        return f"127.0.0.1:4222 is not a NATS server (it said {hello[:40]!r})"
    if b'"jetstream":true' not in hello.replace(b" ", b""):
        return "the NATS server on 127.0.0.1:4222 has no JetStream (start it with -js)"
    return None


@pytest.fixture(scope="module")
def nats_server() -> None:
    why = _nats_answers()
    if why is not None:
        pytest.skip(why)


async def _jsm(fn: Callable[[Any], Any]) -> Any:
    import nats

    nc = await nats.connect(NATS_URL, allow_reconnect=False, connect_timeout=2)
    try:
        return await fn(nc.jetstream())
    finally:
        await nc.close()


@pytest.fixture()
def cfg(nats_server: None) -> Iterator[StreamSettings]:
    name = f"gw-test-{uuid.uuid4().hex[:12]}"
    yield StreamSettings(
        backend="nats", nats_url=NATS_URL, name=name, group="gw-test", partitions=2, max_len=50
    )

    async def delete(js: Any) -> None:
        from nats.js.errors import NotFoundError

        with contextlib.suppress(NotFoundError):
            await js.delete_stream(name)

    asyncio.run(_jsm(delete))


@pytest.fixture()
def brokers(cfg: StreamSettings) -> Iterator[Callable[..., NatsBroker]]:
    made: list[NatsBroker] = []

    def make(**kw: Any) -> NatsBroker:
        b = NatsBroker(cfg, **kw)
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


def table(n: int, client: str = "c1", start: int = 0) -> pa.Table:
    return pa.table(
        {
            "client_id": pa.array([client] * n, pa.string()),
            "i": pa.array(range(start, start + n), pa.int64()),
        }
    )


def publish(b: NatsBroker, p: int, *sizes: int) -> list[pa.Table]:
    """One entry per size on partition ``p``; returns the tables published."""
    out = []
    for k, n in enumerate(sizes):
        t = table(n, client=f"p{p}", start=100 * k)
        b.publish({p: encode(t)}, {p: n})
        out.append(t)
    return out


def read_until(
    b: NatsBroker, partitions: list[int], want: int, count: int = 10, tries: int = 20
) -> list[Entry]:
    got: list[Entry] = []
    for _ in range(tries):
        got += b.read(partitions, "proc-1", count, 500)
        if len(got) >= want:
            break
    return got


def test_make_broker_picks_nats(cfg: StreamSettings) -> None:
    b = make_broker(cfg)
    try:
        assert isinstance(b, NatsBroker)
    finally:
        b.close()


def test_publish_then_read_in_order(cfg: StreamSettings, brokers: Any) -> None:
    b = brokers()
    sent = publish(b, 0, 3, 5, 2)
    b.ensure_group([0, 1])
    b.ensure_group([0, 1])  # idempotent
    info = asyncio.run(_jsm(lambda js: js.stream_info(cfg.name)))
    assert info.config.subjects == [f"{cfg.name}.*"]
    assert info.config.max_msgs_per_subject == cfg.max_len

    got = b.read([0, 1], "proc-1", 10, 0)
    assert [e.partition for e in got] == [0, 0, 0]
    keys = [position_key(e.id) for e in got]
    assert keys == sorted(keys) and len(set(keys)) == 3
    tables = [decode(e.payload) for e in got]
    assert [t.num_rows for t in tables] == [3, 5, 2]
    assert [t.column("i").to_pylist() for t in tables] == [t.column("i").to_pylist() for t in sent]
    # nothing more, and an empty read does not fail
    assert b.read([0, 1], "proc-1", 10, 0) == []
    assert b.read([0, 1], "proc-1", 10, 100) == []


def test_count_limits_one_read(brokers: Any) -> None:
    b = brokers()
    b.ensure_group([0])
    publish(b, 0, 1, 1, 1, 1, 1)
    first = b.read([0], "proc-1", 2, 0)
    assert len(first) == 2
    rest = read_until(b, [0], 3)
    assert len(rest) == 3
    assert [position_key(e.id) for e in first + rest] == sorted(
        position_key(e.id) for e in first + rest
    )


def test_acked_entries_are_not_read_again(brokers: Any) -> None:
    b1 = brokers()
    b1.ensure_group([0])
    publish(b1, 0, 2, 2)
    got = b1.read([0], "proc-1", 10, 0)
    assert len(got) == 2
    b1.ack(got)
    b1.close()

    publish(brokers(), 0, 4)  # a new entry after the acknowledged ones
    b2 = brokers()
    b2.ensure_group([0])
    again = read_until(b2, [0], 1)
    assert [decode(e.payload).num_rows for e in again] == [4]
    assert position_key(again[0].id) > max(position_key(e.id) for e in got)
    assert b2.read([0], "proc-1", 10, 200) == []


def test_unacked_entries_come_back_first_to_a_new_instance(brokers: Any) -> None:
    b1 = brokers()
    b1.ensure_group([0])
    publish(b1, 0, 1, 2)
    got = b1.read([0], "proc-1", 10, 0)
    assert len(got) == 2
    b1.ack(got[:1])  # the second one is applied but never acknowledged: the process dies
    b1.close()
    publish(brokers(), 0, 3)

    b2 = brokers()  # default: at once, before the newer entry (as Redis' own pending)
    b2.ensure_group([0])
    again = read_until(b2, [0], 2)
    assert [e.id for e in again] == [got[1].id, again[1].id]
    assert [decode(e.payload).num_rows for e in again] == [2, 3]
    b2.ack(again)
    b2.close()

    b3 = brokers()
    assert b3.read([0], "proc-1", 10, 200) == []


def test_unacked_entries_are_redelivered_after_ack_wait(brokers: Any) -> None:
    b1 = brokers(ack_wait_s=1.0, rewind_on_start=False)
    b1.ensure_group([0])
    publish(b1, 0, 1, 2)
    got = b1.read([0], "proc-1", 10, 0)
    assert len(got) == 2
    b1.close()  # none acknowledged

    b2 = brokers(ack_wait_s=1.0, rewind_on_start=False)
    again = read_until(b2, [0], 2)
    assert [e.id for e in again] == [e.id for e in got]
    assert [e.payload for e in again] == [e.payload for e in got]
    b2.ack(again)
    time.sleep(1.5)  # past ack_wait: acknowledged entries stay acknowledged
    assert b2.read([0], "proc-1", 10, 200) == []


def test_lag(brokers: Any) -> None:
    b = brokers()
    assert b.lag([0, 1]) == {"lag_entries": 0, "lag_events": 0, "seconds_behind": 0.0}  # no group
    b.ensure_group([0, 1])
    publish(b, 0, 2, 3)
    publish(b, 1, 4)
    lag = b.lag([0, 1])
    assert lag["lag_entries"] == 3
    assert lag["lag_events"] == 9
    assert lag["seconds_behind"] >= 0.0
    assert b.lag([1])["lag_events"] == 4

    got = read_until(b, [0, 1], 3)
    assert len(got) == 3
    b.ack(got)
    assert b.lag([0, 1]) == {"lag_entries": 0, "lag_events": 0, "seconds_behind": 0.0}


def test_lag_events_are_extrapolated_past_the_scan(brokers: Any) -> None:
    b = brokers(lag_scan=2)
    b.ensure_group([0])
    publish(b, 0, 2, 2, 2, 2, 2)
    lag = b.lag([0])
    assert lag["lag_entries"] == 5
    assert lag["lag_events"] == 10


def test_partitions_are_isolated(brokers: Any) -> None:
    b = brokers()
    b.ensure_group([0, 1])
    publish(b, 0, 1, 1)
    publish(b, 1, 5)
    zero = read_until(b, [0], 2)
    assert len(zero) == 2
    assert {e.partition for e in zero} == {0}
    assert all(decode(e.payload).column("client_id").to_pylist() == ["p0"] for e in zero)
    assert b.read([0], "proc-1", 10, 200) == []
    one = b.read([1], "proc-1", 10, 0)
    assert [(e.partition, decode(e.payload).num_rows) for e in one] == [(1, 5)]
    assert {decode(e.payload).column("client_id")[0].as_py() for e in one} == {"p1"}


def test_a_server_that_is_down_raises() -> None:
    import nats.errors

    DOWN = (nats.errors.Error, OSError, TimeoutError)  # NoServersError, ConnectionError, ...
    cfg = StreamSettings(backend="nats", nats_url="nats://127.0.0.1:1", name="gw-test-down")
    b = NatsBroker(cfg, connect_timeout_s=1, op_timeout_s=1.0)
    try:
        t = table(2)
        with pytest.raises(DOWN):  # an error, promptly: not a hang
            b.publish({0: encode(t)}, {0: 2})
        with pytest.raises(DOWN):
            b.read([0], "proc-1", 10, 0)
        with pytest.raises(DOWN):
            b.lag([0])
    finally:
        b.close()
    with pytest.raises(RuntimeError):
        b.publish({0: b"x"}, {0: 1})
