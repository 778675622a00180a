"""The score push (features/score_push.py): only moved scores reach the gateways, failures
are counted and never raised. The scoring service and the gateways are upstreams here
(``httpx.MockTransport``); the end-to-end path is in tests/demo/test_closed_loop.py."""

from __future__ import annotations

import json

import httpx
import pyarrow as pa

from config.stream import ScorePushSettings
from features.score_push import ScorePusher


class World:
    """A scoring service (scores by id, a model version) and gateways recording pushes."""

    def __init__(self) -> None:
        self.scores: dict[str, float | None] = {}
        self.version = "7"
        self.score_calls: list[list[str]] = []
        self.pushes: dict[str, list[dict]] = {}
        self.keys: list[str | None] = []
        self.down: set[str] = set()

    def handler(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        if host in self.down:
            raise httpx.ConnectError("down", request=request)
        body = json.loads(request.content)
        if request.url.path == "/score":
            self.score_calls.append(body["ids"])
            res = [{"id": i, "score": self.scores.get(i)} for i in body["ids"]]
            return httpx.Response(200, json={"model_version": self.version, "results": res})
        assert request.url.path == "/admin/scores"
        self.keys.append(request.headers.get("x-api-key"))
        self.pushes.setdefault(host, []).append(body)
        return httpx.Response(200, json={"accepted": len(body["results"])})


def _pusher(world: World, **cfg) -> ScorePusher:
    c = ScorePushSettings(enabled=True, gateway_urls=["http://gw1", "http://gw2"], **cfg)
    http = httpx.Client(transport=httpx.MockTransport(world.handler))
    return ScorePusher(c, "http://scorer", api_key="admin-key", client=http)


def _rows(*ids: str) -> pa.Table:
    return pa.table({"client_id": list(ids), "request_count_5m": [1.0] * len(ids)})


def test_only_scores_that_moved_are_pushed_to_every_gateway():
    w = World()
    w.scores = {"a": 0.10, "b": 0.50, "c": None}
    p = _pusher(w, min_change=0.05)
    assert p(_rows("a", "b", "a", "c")) == 2  # c is not online yet: nothing to push
    assert w.score_calls == [["a", "b", "c"]]  # one call, each client once
    for gw in ("gw1", "gw2"):
        (push,) = w.pushes[gw]
        assert push["model_version"] == "7" and push["alias"] == "champion"
        assert push["results"] == [{"id": "a", "score": 0.10}, {"id": "b", "score": 0.50}]
    assert set(w.keys) == {"admin-key"}
    w.scores.update(a=0.12, b=0.93)  # a moved less than min_change, b jumped
    assert p(_rows("a", "b")) == 1
    assert w.pushes["gw1"][-1]["results"] == [{"id": "b", "score": 0.93}]
    w.version = "8"  # a new champion: every score it gives is news
    assert p(_rows("a")) == 1 and w.pushes["gw2"][-1]["model_version"] == "8"
    assert p.stats() == {"asked": 6, "pushed": 4, "failures": 0, "last_error": None}


def test_failures_are_counted_not_raised_and_unconfirmed_scores_are_pushed_again():
    w = World()
    w.scores = {"a": 0.9}
    p = _pusher(w)
    w.down = {"scorer"}
    assert p(_rows("a")) == 0 and p.failures == 1 and "scoring service" in p.last_error
    w.down = {"gw2"}
    assert p(_rows("a")) == 0 and p.failures == 2 and "gateway http://gw2" in p.last_error
    w.down = set()
    assert p(_rows("a")) == 1  # gw2 never had it: pushed again
    assert len(w.pushes["gw2"]) == 1 and len(w.pushes["gw1"]) == 2


def test_batches_follow_max_batch():
    w = World()
    w.scores = {f"c{i}": 0.5 for i in range(5)}
    p = _pusher(w, max_batch=2)
    assert p(_rows(*w.scores)) == 5
    assert [len(b) for b in w.score_calls] == [2, 2, 1]


def test_the_processor_metrics_count_the_push():
    from features.stream_service import metrics_text

    text = metrics_text(
        {"consumer": "p0-1", "applied": 10, "score_push": {"asked": 5, "pushed": 2, "failures": 1}}
    )
    assert 'gatewise_stream_score_push_pushed_total{consumer="p0-1"} 2.0' in text
    assert 'gatewise_stream_score_push_failures_total{consumer="p0-1"} 1.0' in text
    assert "score_push" not in metrics_text({"consumer": "p0-1", "applied": 10})
