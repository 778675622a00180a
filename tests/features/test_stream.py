"""The stream processor: the batch build's features, live.

Unit tests drive ``StreamProcessor.apply`` directly; integration tests go through a real Redis
Streams broker (publish, consumer group, checkpoint, acknowledgement, restart).
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from features.stream import StreamProcessor
from monitoring.alerts import engine_for
from telemetry.schema import EVENT_SCHEMA
from telemetry.store import TelemetryStore
from telemetry.stream import RedisBroker, partition_of, publish_table

T0 = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)


def _stream_settings(s, **update):
    name = f"gw-test-{uuid.uuid4().hex[:8]}"
    cfg = s.stream.model_copy(update={"name": name, "checkpoint_interval_s": 0.0, **update})
    return s.model_copy(update={"stream": cfg})


def _events(rows: list[dict]) -> pa.Table:
    base = {
        "http_request_method": "GET",
        "url_path": "/v1/orders",
        "http_route": "/v1/orders",
        "http_response_status_code": 200,
        "duration_ms": 10.0,
        "request_bytes": 100,
        "response_bytes": 1000,
        "client_address": "10.1.2.3",
        "user_agent": "ua",
    }
    out = []
    for i, r in enumerate(rows):
        e = {**base, "request_id": f"r{i}-{uuid.uuid4().hex[:6]}", **r}
        out.append(e)
    cols = {f.name: [e.get(f.name) for e in out] for f in EVENT_SCHEMA}
    return pa.Table.from_pydict(cols, schema=EVENT_SCHEMA)


def _arrivals(events: pa.Table, max_delay_s: float, seed: int) -> tuple[pa.Table, np.ndarray]:
    """Events in the order they reach the processor: each delayed up to ``max_delay_s``."""
    rnd = random.Random(seed)
    ts = pc.cast(events.column("timestamp"), pa.int64()).to_numpy() / 1e6
    arrive = ts + np.array([rnd.uniform(0, max_delay_s) for _ in range(len(ts))])
    order = np.argsort(arrive, kind="stable")
    return events.take(pa.array(order)), arrive[order]


def _chunks(arrive: np.ndarray, step_s: float) -> list[tuple[int, int]]:
    bucket = (arrive // step_s).astype(np.int64)
    bounds = np.flatnonzero(np.diff(bucket)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(arrive)]])
    return [(int(a), int(b - a)) for a, b in zip(starts, ends, strict=True)]


def _assert_same_rows(batch: pa.Table, stream: pa.Table) -> None:
    k = ["client_id", "event_timestamp"]
    b = batch.to_pandas().sort_values(k).reset_index(drop=True)
    s = stream.to_pandas().sort_values(k).reset_index(drop=True)
    assert not s.duplicated(k).any(), "a window was finalised twice"
    assert len(b) == len(s)
    assert (b[k] == s[k]).all().all()
    for c in b.columns:
        if c in k:
            continue
        x, y = b[c].astype(float).to_numpy(), s[c].astype(float).to_numpy()
        bad = ~np.isclose(x, y, rtol=1e-9, atol=1e-9, equal_nan=True)
        assert not bad.any(), (c, b.loc[bad, k].head(3).to_dict("records"), x[bad][:3], y[bad][:3])


# -- unit: apply ---------------------------------------------------------------------


def test_late_events_within_lateness_update_their_window_later_ones_are_counted(settings):
    s = settings.model_copy(
        update={"stream": settings.stream.model_copy(update={"allowed_lateness_s": 60})}
    )
    finals = []
    p = StreamProcessor(s, wall_clock=False, on_final=finals.append)
    r = p.apply(_events([{"client_id": "a", "timestamp": T0 + timedelta(seconds=10)}]))
    assert r.applied == 1 and r.latest.column("request_count_5m").to_pylist() == [1.0]
    # open row stamped at the watermark (as of the newest event), not the window end
    assert r.latest.column("event_timestamp")[0].as_py() == T0 + timedelta(seconds=10)
    # 30 s out of order: same window, applied
    r = p.apply(
        _events(
            [
                {"client_id": "a", "timestamp": T0 + timedelta(minutes=6)},
                {"client_id": "a", "timestamp": T0 + timedelta(minutes=5, seconds=40)},
            ]
        )
    )
    assert r.applied == 2 and r.out_of_order == 0
    r = p.apply(_events([{"client_id": "a", "timestamp": T0 + timedelta(minutes=5, seconds=30)}]))
    assert r.applied == 1 and r.out_of_order == 1
    row = r.latest.to_pylist()[0]
    assert row["request_count_5m"] == 3.0 and row["request_count_1h"] == 4.0
    # the watermark passes 12:10 + 60 s: the 12:05 window closes with its 3 events
    r = p.apply(_events([{"client_id": "a", "timestamp": T0 + timedelta(minutes=11, seconds=5)}]))
    closed = {
        x["event_timestamp"]: x["request_count_5m"] for x in pa.concat_tables(finals).to_pylist()
    }
    assert closed[T0 + timedelta(minutes=10)] == 3.0
    # an event for the closed window is too late: counted, not applied, nothing changes
    r = p.apply(_events([{"client_id": "a", "timestamp": T0 + timedelta(minutes=9)}]))
    assert r.too_late == 1 and r.applied == 0 and p.counters.too_late == 1
    final = p.close_all()
    assert final is not None
    assert final.to_pylist()[-1]["request_count_1h"] == 5.0


def test_bootstrap_overlap_is_not_counted_twice(settings):
    """Events both in the store (bootstrap) and in the stream are applied once."""
    from telemetry.store import TelemetryStore

    now = T0 + timedelta(minutes=3)
    ev = _events([{"client_id": "a", "timestamp": T0 + timedelta(seconds=i)} for i in range(5)])
    TelemetryStore(settings.telemetry_dir).append(ev)
    p = StreamProcessor(settings, wall_clock=False, clock=lambda: now.timestamp())
    assert p.bootstrap(hours=1) == 5
    r = p.apply(ev.slice(3))  # the stream redelivers the last two
    assert r.duplicates == 2 and r.applied == 0
    r = p.apply(_events([{"client_id": "a", "timestamp": T0 + timedelta(seconds=30)}]))
    assert r.latest.column("request_count_5m").to_pylist() == [6.0]


# -- integration: through Redis ---------------------------------------------------------


def _redis_or_skip(cfg):
    import redis

    try:
        redis.Redis.from_url(cfg.redis_url, socket_connect_timeout=0.5).ping()
    except Exception as exc:
        pytest.fail(f"Redis is not reachable at {cfg.redis_url}: {exc}")
    return RedisBroker(cfg)


def _drop(broker: RedisBroker, n: int) -> None:
    broker.r.delete(*[broker.key(p) for p in range(n)])
    broker.close()


@pytest.mark.integration
def test_stream_matches_the_batch_build_across_a_restart(built, tmp_path):
    """Two simulated days, events delayed up to 90 s (out of order), published to Redis in
    30-minute arrival slices. Processor A consumes, checkpoints, then applies more without
    checkpointing and "crashes"; B restores A's checkpoint, gets A's unacknowledged entries
    again, skips what the checkpoint holds, and carries on. Every window's final row equals
    the batch build's row, and no window is finalised twice."""
    s0, _ = built
    s = _stream_settings(s0.model_copy(update={"data_dir": tmp_path / "data"}))
    s = s.model_copy(update={"stream": s.stream.model_copy(update={"checkpoint_interval_s": 1e9})})
    events = TelemetryStore(s0.telemetry_dir).read()
    batch = pq.read_table(s0.features_dir / "client_windows").drop_columns(["date"])
    arrived, arrive = _arrivals(events, max_delay_s=90, seed=3)
    chunks = _chunks(arrive, 1800)
    broker = _redis_or_skip(s.stream)
    finals: dict[str, list[pa.Table]] = {"a": [], "b": []}
    try:
        a = StreamProcessor(s, broker=broker, wall_clock=False, on_final=finals["a"].append)
        broker.ensure_group(a.partitions)
        half = len(chunks) // 2
        for i, (off, n) in enumerate(chunks[: half + 3]):
            publish_table(broker, arrived.slice(off, n), s.stream.partitions, max_batch=2000)
            while a.poll_once(count=50).entries:
                pass
            if i == half:
                a.checkpoint()  # state + positions, then XACK
                kept = len(finals["a"])
        # the crash: A applied three more slices but neither checkpointed nor acknowledged
        assert a.counters.events > 0
        del finals["a"][kept:]
        b_broker = RedisBroker(s.stream)
        b = StreamProcessor(s, broker=b_broker, wall_clock=False, on_final=finals["b"].append)
        assert b.restore()
        assert b.watermark < a.watermark
        while b.poll_once(count=50).entries:
            pass
        assert b.counters.events > 0  # A's unacknowledged entries came back to B
        for off, n in chunks[half + 3 :]:
            publish_table(b_broker, arrived.slice(off, n), s.stream.partitions, max_batch=2000)
            while b.poll_once(count=50).entries:
                pass
        b.close_all()
        assert b.counters.too_late == 0 and a.counters.too_late == 0
        assert a.counters.out_of_order + b.counters.out_of_order > 1000
        stream = pa.concat_tables(finals["a"] + finals["b"])
        _assert_same_rows(batch, stream.select(batch.column_names).cast(batch.schema))
        assert b.status()["lag_events"] == 0
    finally:
        _drop(broker, s.stream.partitions)


@pytest.mark.integration
def test_entries_applied_before_a_crash_are_skipped_after_it(settings):
    """A crash between the checkpoint and the acknowledgement: the entries come back, the
    checkpoint already holds them, the restarted processor skips them (no double count)."""
    s = _stream_settings(settings)
    broker = _redis_or_skip(s.stream)
    try:
        ev = _events(
            [{"client_id": f"c{i % 7}", "timestamp": T0 + timedelta(seconds=i)} for i in range(70)]
        )
        publish_table(broker, ev, s.stream.partitions, max_batch=10)
        a = StreamProcessor(s, broker=broker, wall_clock=False)
        broker.ensure_group(a.partitions)
        a.broker.ack = lambda entries: None  # the crash: acknowledgement never happens
        while a.poll_once(count=3).entries:
            pass
        a.checkpoint()
        b = StreamProcessor(s, broker=RedisBroker(s.stream), wall_clock=False)
        assert b.restore()
        res = b.poll_once(count=100)
        assert res.events == 0 and b.counters.redelivered_skipped >= 7
        r = b.apply(_events([{"client_id": "c1", "timestamp": T0 + timedelta(seconds=80)}]))
        assert r.latest.column("request_count_5m").to_pylist() == [11.0]
        assert b.broker.lag(b.partitions)["lag_entries"] == 0
    finally:
        _drop(broker, s.stream.partitions)


@pytest.mark.integration
def test_two_processors_split_the_partitions(settings):
    s = _stream_settings(settings, partitions=4)
    broker = _redis_or_skip(s.stream)
    try:
        ev = _events(
            [{"client_id": f"c{i}", "timestamp": T0 + timedelta(seconds=i)} for i in range(200)]
        )
        publish_table(broker, ev, 4)
        procs = [
            StreamProcessor(s, parts, broker=RedisBroker(s.stream)) for parts in ([0, 1], [2, 3])
        ]
        seen = []
        for p in procs:
            p.broker.ensure_group(p.partitions)
            while (r := p.poll_once(count=100)).entries:
                seen += r.latest.column("client_id").to_pylist()
            mine = {c for c in seen if partition_of(c, 4) in p.partitions}
            assert all(partition_of(c, 4) in p.partitions for c in mine)
        assert sorted(seen) == sorted(f"c{i}" for i in range(200))
        assert procs[0].counters.events + procs[1].counters.events == 200
        assert procs[0].counters.events and procs[1].counters.events
    finally:
        _drop(broker, 4)


@pytest.mark.integration
def test_an_alert_fires_once_per_window_and_reaches_every_sink(settings, tmp_path):
    """Credential stuffing spread over two micro-batches and a redelivery: one alert, in the
    log, the webhook and the alert store."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from features.stream_service import StreamService
    from monitoring.alerts import read_alerts

    got: list[bytes] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            got.append(self.rfile.read(int(self.headers["content-length"])))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *a):
            pass

    hook = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    s = _stream_settings(settings)
    broker = _redis_or_skip(s.stream)
    try:
        svc = StreamService(
            s,
            push=False,
            bootstrap=False,
            metrics_port=0,
            alerts=engine_for(s, f"http://127.0.0.1:{hook.server_port}/alerts"),
        )
        svc.processor.wall_clock = False
        svc.start()
        login = {"http_request_method": "POST", "url_path": "/v1/auth/login"}
        login["http_route"] = "/v1/auth/login"
        fails = [
            {
                "client_id": "x",
                "timestamp": T0 + timedelta(seconds=i),
                "http_response_status_code": 401,
                **login,
            }
            for i in range(40)
        ]
        publish_table(broker, _events(fails[:20]), s.stream.partitions)
        assert svc.drain() == 20
        publish_table(broker, _events(fails[20:]), s.stream.partitions)
        assert svc.drain() == 20
        assert svc.processor.counters.alerts == 1
        svc.close()
        alerts = read_alerts(s.data_dir / "alerts")
        assert alerts.num_rows == 1
        assert alerts.column("rule").to_pylist() == ["credential_stuffing"]
        assert alerts.column("key").to_pylist() == ["x"]
        assert len(got) == 1 and b"credential_stuffing" in got[0]
    finally:
        hook.shutdown()
        _drop(broker, s.stream.partitions)
