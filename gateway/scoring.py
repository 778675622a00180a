"""The gateway's client of the serving ``/score`` endpoint.

The contract (served by ``serving/``):
    POST /score  {"target": "abuse", "ids": ["c1", ...], "alias": "champion"}
    200 → {"model_version": "7", "results": [{"id": "c1", "score": 0.93, ...}, ...]}

Under load the gateway must not make one call per request:

- **cache**: a client's score younger than ``cache_ttl_s`` is used as is (a client the online
  store does not know yet is asked again after ``unknown_ttl_s``: a new client is scored from
  its first requests once the stream has them);
- **single flight**: concurrent lookups of one client wait for the same call;
- **batching**: lookups of different clients arriving within ``batch_window_ms`` go out as one
  call (up to ``max_batch`` ids), so a flood of requests costs a handful of calls;
- **stale on failure**: when a call times out or fails, or the circuit breaker is open, a
  cached score up to ``max_stale_s`` old still counts (``reason="stale"``): enforcement does
  not flicker while the scoring service struggles.

Calls have a tight timeout and sit behind a circuit breaker. When no score is available
(``Score.available`` False) the configured ``failure_mode`` decides: ``open`` lets the limits
alone judge, ``closed`` refuses the request (503).

    scorer = ScoringClient(cfg)
    s = await scorer.score("c1")
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from config.gateway import ScoringSettings
from gateway.routing import CircuitBreaker

__all__ = ["Score", "ScoringClient"]


@dataclass(frozen=True)
class Score:
    value: float | None
    model_version: str | None
    available: bool
    reason: str = "ok"  # ok | cached | timeout | error | breaker_open | unknown_client | disabled


class ScoringClient:
    def __init__(
        self,
        cfg: ScoringSettings,
        client: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        import httpx

        self.cfg = cfg
        self.clock = clock
        self.breaker = CircuitBreaker(cfg.breaker, clock)
        self._client = client or httpx.AsyncClient(
            base_url=cfg.url,
            timeout=httpx.Timeout(cfg.timeout_ms / 1000.0),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
        )
        self._cache: dict[tuple[str, str], tuple[float, Score]] = {}
        self._inflight: dict[tuple[str, str], asyncio.Future[Score]] = {}
        self._pending: dict[str, list[str]] = {}  # alias -> ids waiting for the next call
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.calls = self.failures = 0  # /score calls, failed calls
        self.lookups = self.stale = self.unavailable = 0  # score() answers
        self.pushed = 0  # scores pushed by the stream (``put``)

    def put(
        self, client_id: str, value: float | None, model_version: str | None, alias: str | None
    ) -> None:
        """A score pushed to the gateway (``POST /admin/scores``: the stream processor, for a
        client whose score moved): it counts as a fresh answer of the service."""
        key = (alias or self.cfg.alias, client_id)
        self._cache[key] = (self.clock(), Score(value, model_version, True, "pushed"))
        self.pushed += 1

    async def score(self, client_id: str, alias: str | None = None) -> Score:
        alias = alias or self.cfg.alias
        key = (alias, client_id)
        self.lookups += 1
        hit = self._cache.get(key)
        ttl = self.cfg.cache_ttl_s
        if hit is not None and hit[1].value is None:
            ttl = min(ttl, self.cfg.unknown_ttl_s)  # not in the online store yet: ask again soon
        if hit is not None and self.clock() - hit[0] < ttl:
            s = hit[1]
            return Score(s.value, s.model_version, s.available, "cached")
        fut = self._inflight.get(key)
        if fut is None:
            if not self.breaker.allow():
                return self._fallback(hit, "breaker_open")
            fut = asyncio.get_running_loop().create_future()
            self._inflight[key] = fut
            self._enqueue(alias, client_id)
        s = await asyncio.shield(fut)
        return s if s.available else self._fallback(hit, s.reason)

    def _fallback(self, hit: tuple[float, Score] | None, reason: str) -> Score:
        """No fresh score: a cached one within ``max_stale_s``, else none."""
        if hit is not None and hit[1].available and self.clock() - hit[0] < self.cfg.max_stale_s:
            self.stale += 1
            return Score(hit[1].value, hit[1].model_version, True, "stale")
        self.unavailable += 1
        return Score(None, None, False, reason)

    def _enqueue(self, alias: str, client_id: str) -> None:
        ids = self._pending.setdefault(alias, [])
        ids.append(client_id)
        if len(ids) >= self.cfg.max_batch:
            self._flush(alias)
        elif alias not in self._timers:
            loop = asyncio.get_running_loop()
            self._timers[alias] = loop.call_later(
                self.cfg.batch_window_ms / 1000.0, self._flush, alias
            )

    def _flush(self, alias: str) -> None:
        timer = self._timers.pop(alias, None)
        if timer is not None:
            timer.cancel()
        ids = self._pending.pop(alias, [])
        if ids:
            task = asyncio.get_running_loop().create_task(self._call(alias, ids))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _call(self, alias: str, ids: list[str]) -> None:
        import httpx

        self.calls += 1
        answers: dict[str, Score] = {}
        failed: Score | None = None
        try:
            r = await self._client.post(
                "/score", json={"target": self.cfg.target, "ids": ids, "alias": alias}
            )
            r.raise_for_status()
            body = r.json()
            version = body.get("model_version")
            version = None if version is None else str(version)
            for row in body["results"]:
                value = row.get("score")
                answers[str(row["id"])] = Score(
                    None if value is None else float(value),
                    version,
                    True,
                    "ok" if value is not None else "unknown_client",
                )
        except httpx.TimeoutException:
            failed = Score(None, None, False, "timeout")
        except (httpx.HTTPError, KeyError, IndexError, TypeError, ValueError):
            failed = Score(None, None, False, "error")
        except BaseException:
            failed = Score(None, None, False, "error")
            raise
        finally:
            if failed is not None:
                self.failures += 1
                self.breaker.failure()
            else:
                self.breaker.success()
            now = self.clock()
            if len(self._cache) > 200_000:
                self._cache.clear()
            for cid in ids:
                key = (alias, cid)
                s = failed or answers.get(cid) or Score(None, None, True, "unknown_client")
                if failed is None:
                    self._cache[key] = (now, s)
                fut = self._inflight.pop(key, None)
                if fut is not None and not fut.done():
                    fut.set_result(s)

    async def aclose(self) -> None:
        for t in self._timers.values():
            t.cancel()
        self._timers.clear()
        for alias in list(self._pending):
            for cid in self._pending.pop(alias):
                fut = self._inflight.pop((alias, cid), None)
                if fut is not None and not fut.done():
                    fut.set_result(Score(None, None, False, "error"))
        await self._client.aclose()
