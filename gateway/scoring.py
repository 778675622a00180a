"""The gateway's client of the serving ``/score`` endpoint.

The contract (served by ``serving/``):
    POST /score  {"target": "abuse", "ids": ["c1", ...], "alias": "champion"}
    200 → {"model_version": "7", "results": [{"id": "c1", "score": 0.93, ...}, ...]}

Scores are cached per client for ``cache_ttl_s``; calls have a tight timeout
and sit behind a circuit breaker. When scoring is slow, failing or open,
``Score.available`` is False and the configured ``failure_mode`` decides:
``open`` lets the limits alone judge, ``closed`` refuses the request (503).

    scorer = ScoringClient(cfg)
    s = await scorer.score("c1")
"""

from __future__ import annotations

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
        self._cache: dict[str, tuple[float, Score]] = {}
        self.calls = self.failures = 0

    async def score(self, client_id: str, alias: str | None = None) -> Score:
        now = self.clock()
        hit = self._cache.get(client_id)
        if hit is not None and now - hit[0] < self.cfg.cache_ttl_s:
            s = hit[1]
            return Score(s.value, s.model_version, s.available, "cached")
        if not self.breaker.allow():
            return Score(None, None, False, "breaker_open")
        import httpx

        self.calls += 1
        try:
            r = await self._client.post(
                "/score",
                json={
                    "target": self.cfg.target,
                    "ids": [client_id],
                    "alias": alias or self.cfg.alias,
                },
            )
            r.raise_for_status()
            body = r.json()
            row = body["results"][0]
            value = row.get("score")
            s = Score(
                None if value is None else float(value),
                str(body.get("model_version")) if body.get("model_version") is not None else None,
                True,
                "ok" if value is not None else "unknown_client",
            )
        except httpx.TimeoutException:
            self.failures += 1
            self.breaker.failure()
            return Score(None, None, False, "timeout")
        except (httpx.HTTPError, KeyError, IndexError, TypeError, ValueError):
            self.failures += 1
            self.breaker.failure()
            return Score(None, None, False, "error")
        self.breaker.success()
        if len(self._cache) > 200_000:
            self._cache.clear()
        self._cache[client_id] = (now, s)
        return s

    async def aclose(self) -> None:
        await self._client.aclose()
