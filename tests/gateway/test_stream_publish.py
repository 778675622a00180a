"""The gateway's live stream: events reach Redis in batches; a broker outage never fails a
request, and what waits or is lost is reported."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from telemetry.stream import RedisBroker, decode
from tests.gateway.conftest import key_headers, running


def _with_stream(s, **update):
    cfg = s.stream.model_copy(
        update={"enabled": True, "name": f"gw-test-{uuid.uuid4().hex[:8]}", **update}
    )
    return s.model_copy(update={"stream": cfg})


@pytest.mark.integration
def test_gateway_publishes_every_event_to_redis(gw_settings):
    s, keys = gw_settings
    s = _with_stream(s, partitions=2, publish_interval_s=0.05)
    broker = RedisBroker(s.stream)

    async def main():
        async with running(s) as (gw, c):
            for i in range(30):
                r = await c.get(f"/v1/orders/{i}", headers=key_headers(keys["alice"]))
                assert r.status_code == 200
            await gw.stream.flush()
            st = (await c.get("/admin/status", headers=key_headers(keys["bob"]))).json()
            metrics = (await c.get("/metrics")).text
        return st, metrics

    try:
        st, metrics = asyncio.run(main())
        assert st["stream"]["published"] >= 30 and st["stream"]["dropped"] == 0
        assert st["stream"]["connected"] is True
        assert "gatewise_stream_published_total" in metrics
        rows = []
        for p in range(2):
            for _, fields in broker.r.xrange(broker.key(p)):
                rows += decode(fields[b"a"]).to_pylist()
        alice = [r for r in rows if r["client_id"] == "alice"]
        assert sorted(r["url_path"] for r in alice) == sorted(f"/v1/orders/{i}" for i in range(30))
    finally:
        broker.r.delete(broker.key(0), broker.key(1))
        broker.close()


@pytest.mark.integration
def test_broker_down_the_gateway_serves_and_counts_what_waits_and_what_is_lost(gw_settings):
    """Redis URL pointing at a closed port: every request still succeeds; events wait in the
    bounded buffer, the overflow is counted as dropped, and the status says so. The Parquet
    telemetry store still gets every event."""
    from telemetry.store import TelemetryStore

    s, keys = gw_settings
    s = _with_stream(s, redis_url="redis://127.0.0.1:1/0", max_buffer=20, publish_interval_s=0.05)

    async def main():
        async with running(s) as (_gw, c):
            for i in range(50):
                r = await c.get(f"/v1/orders/{i}", headers=key_headers(keys["alice"]))
                assert r.status_code == 200
                if i % 10 == 0:
                    await asyncio.sleep(0.1)  # let the publisher try (and fail)
            st = (await c.get("/admin/status", headers=key_headers(keys["bob"]))).json()
            metrics = (await c.get("/metrics")).text
        return st, metrics

    st, metrics = asyncio.run(main())
    stream = st["stream"]
    assert stream["connected"] is False and stream["failed_publishes"] >= 1
    assert "Connection" in (stream["last_error"] or "")
    assert stream["published"] == 0
    assert stream["emitted"] >= 50
    # nothing vanished silently: every emitted event either waits or was counted as lost
    assert stream["pending"] + stream["dropped"] == stream["emitted"]
    assert stream["pending"] <= 20 and stream["dropped"] >= 30
    assert "gatewise_stream_dropped_total" in metrics
    stored = TelemetryStore(s.telemetry_dir).read()
    assert sum(c == "alice" for c in stored.column("client_id").to_pylist()) == 50
