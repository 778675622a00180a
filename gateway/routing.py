"""Routes, upstream instances, load balancing, health and circuit breakers.

``Router.match("GET", "/v1/orders/42")`` → ``("/v1/orders/{id}", "orders")``.
``Upstream`` picks a healthy instance whose breaker admits a call (round
robin); a breaker opens after consecutive failures, answers fast while open,
and lets ``half_open_probes`` calls through after its reset timeout.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from config.gateway import BreakerSettings, RouteSettings, ServiceSettings

__all__ = ["CircuitBreaker", "Instance", "Router", "Upstream"]

_PARAM = re.compile(r"\{[^/}]+\}")


class Router:
    """Method + path → route template and service; literal segments win over parameters."""

    def __init__(self, routes: list[RouteSettings]) -> None:
        self._exact: dict[tuple[str, str], RouteSettings] = {}
        self._patterns: list[tuple[str, re.Pattern[str], RouteSettings]] = []
        for r in routes:
            method, template = r.route.split(" ", 1)
            if _PARAM.search(template):
                rx = "^" + "[^/]+".join(re.escape(x) for x in _PARAM.split(template)) + "$"
                self._patterns.append((method, re.compile(rx), r))
            else:
                self._exact[(method, template)] = r
        # more literal characters first: /v1/orders/export before /v1/orders/{id}
        self._patterns.sort(key=lambda x: -len(_PARAM.sub("", x[2].route)))
        self._cache: dict[tuple[str, str], RouteSettings | None] = {}

    def match(self, method: str, path: str) -> RouteSettings | None:
        key = (method, path)
        if key in self._cache:
            return self._cache[key]
        hit = self._exact.get(key)
        if hit is None:
            for m, rx, r in self._patterns:
                if m == method and rx.match(path):
                    hit = r
                    break
        if len(self._cache) < 50_000:
            self._cache[key] = hit
        return hit

    def allowed_methods(self, path: str) -> list[str]:
        out = [m for (m, p) in self._exact if p == path]
        out += [m for m, rx, _ in self._patterns if rx.match(path)]
        return sorted(set(out))


class CircuitBreaker:
    """closed → (N consecutive failures) → open → (reset timeout) → half-open → closed | open."""

    def __init__(self, cfg: BreakerSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.clock = clock
        self.state = "closed"
        self.failures = 0
        self.opened_at = 0.0
        self._probes = 0
        self.transitions: list[tuple[str, str]] = []

    def _to(self, state: str) -> None:
        if state != self.state:
            self.transitions.append((self.state, state))
            self.state = state

    def allow(self) -> bool:
        if self.state == "open":
            if self.clock() - self.opened_at < self.cfg.reset_timeout_s:
                return False
            self._to("half_open")
            self._probes = 0
        if self.state == "half_open":
            if self._probes >= self.cfg.half_open_probes:
                return False
            self._probes += 1
        return True

    def success(self) -> None:
        self.failures = 0
        self._to("closed")

    def failure(self) -> None:
        self.failures += 1
        if self.state == "half_open" or self.failures >= self.cfg.failure_threshold:
            self.opened_at = self.clock()
            self._to("open")

    def retry_after(self) -> float:
        return max(0.0, self.cfg.reset_timeout_s - (self.clock() - self.opened_at))


@dataclass
class Instance:
    url: str
    breaker: CircuitBreaker
    healthy: bool = True
    in_flight: int = 0


@dataclass
class Upstream:
    name: str
    cfg: ServiceSettings
    instances: list[Instance] = field(default_factory=list)
    _next: int = 0

    @classmethod
    def build(
        cls, name: str, cfg: ServiceSettings, clock: Callable[[], float] = time.monotonic
    ) -> Upstream:
        return cls(
            name, cfg, [Instance(u, CircuitBreaker(cfg.breaker, clock)) for u in cfg.instances]
        )

    def pick(self, exclude: set[str] | None = None) -> Instance | None:
        """Round robin over healthy instances whose breaker admits a call."""
        n = len(self.instances)
        for healthy_only in (True, False):  # all unhealthy: still try one (health may lag)
            for k in range(n):
                inst = self.instances[(self._next + k) % n]
                if exclude and inst.url in exclude:
                    continue
                if healthy_only and not inst.healthy:
                    continue
                if inst.breaker.allow():
                    self._next = (self._next + k + 1) % n
                    return inst
        return None

    def retry_after(self) -> float:
        return min((i.breaker.retry_after() for i in self.instances), default=1.0)
