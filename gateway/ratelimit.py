"""GCRA rate limiting on a clock the caller gives: one algorithm, two backends.

The generic cell rate algorithm keeps one number per key, the theoretical
arrival time (TAT). A limit of ``rate`` requests per ``period`` with a burst
of ``burst`` admits a request of cost ``c`` at time ``now`` when
``max(TAT, now) + c·T − burst·T <= now`` (``T = period / rate``) and then moves
TAT forward by ``c·T``. It never over-admits, needs no timers, and its
answers carry exact ``Retry-After`` and ``RateLimit-*`` values.

Several limits (per consumer, per consumer and route) are checked together and
charged all-or-nothing, so a request refused by one limit costs nothing on the
others. ``MemoryLimiter`` serves one process and the backtest; ``RedisLimiter``
runs the same arithmetic in one Lua script, atomic across N gateway replicas.
The clock is the caller's: the gateway passes wall time, the backtest event
time. (``limits`` reads ``time.time()`` inside its storages, so it cannot
replay traffic in event time.)

    lim = MemoryLimiter()
    r = lim.hit([Check("c:alice", Limit(60, 60.0), cost=1)], now=time.time())
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["Check", "Limit", "MemoryLimiter", "RateResult", "RedisLimiter"]


@dataclass(frozen=True)
class Limit:
    """``rate`` requests per ``period`` seconds; up to ``burst`` at once (default ``rate``)."""

    rate: int
    period: float = 60.0
    burst: int | None = None

    @property
    def interval(self) -> float:
        return self.period / self.rate

    @property
    def capacity(self) -> int:
        return self.burst or self.rate


@dataclass(frozen=True)
class Check:
    key: str
    limit: Limit
    cost: int = 1


@dataclass(frozen=True)
class RateResult:
    """The outcome for the most constraining of the checked limits."""

    allowed: bool
    limit: int  # capacity of the binding limit
    remaining: int  # requests of cost 1 still admissible now
    reset_after: float  # seconds until the binding limit is fully replenished
    retry_after: float  # seconds until this request would be admitted (0 when allowed)
    key: str = ""  # the binding limit's key

    def headers(self) -> dict[str, str]:
        """IETF ``RateLimit-*`` fields, plus ``Retry-After`` (whole seconds, rounded up) on refusal."""
        h = {
            "ratelimit-limit": str(self.limit),
            "ratelimit-remaining": str(self.remaining),
            "ratelimit-reset": str(math.ceil(self.reset_after)),
        }
        if not self.allowed:
            h["retry-after"] = str(max(1, math.ceil(self.retry_after)))
        return h


def _evaluate(
    checks: list[Check], tats: list[float | None], now: float
) -> tuple[RateResult, list[float]]:
    """The GCRA arithmetic, shared by both backends (the Lua script mirrors it)."""
    new_tats: list[float] = []
    refused: list[tuple[float, Check, float]] = []
    states: list[tuple[Check, float]] = []
    for c, tat in zip(checks, tats, strict=True):
        t = c.limit.interval
        new_tat = max(tat if tat is not None else now, now) + c.cost * t
        allow_at = new_tat - c.limit.capacity * t
        if allow_at > now + 1e-9:
            refused.append((allow_at - now, c, max(tat or now, now)))
        new_tats.append(new_tat)
        states.append((c, new_tat))
    if refused:
        wait, c, tat = max(refused, key=lambda r: r[0])
        t = c.limit.interval
        remaining = max(0, math.floor((now - (tat - c.limit.capacity * t)) / t + 1e-9))
        return RateResult(False, c.limit.capacity, remaining, tat - now, wait, c.key), []
    # allowed: report the limit with the fewest remaining requests
    best: RateResult | None = None
    for c, new_tat in states:
        t = c.limit.interval
        remaining = max(0, math.floor((now - (new_tat - c.limit.capacity * t)) / t + 1e-9))
        r = RateResult(True, c.limit.capacity, remaining, new_tat - now, 0.0, c.key)
        if best is None or r.remaining < best.remaining:
            best = r
    assert best is not None
    return best, new_tats


class MemoryLimiter:
    """GCRA state in a dict: one process (the gateway's default) or the backtest.

    Expired keys are swept lazily so the table holds only active consumers.
    """

    def __init__(self, sweep_every: int = 100_000) -> None:
        self._tat: dict[str, float] = {}
        self._ops = 0
        self._sweep_every = sweep_every

    def hit(self, checks: list[Check], now: float) -> RateResult:
        if not checks:
            return RateResult(True, 0, 0, 0.0, 0.0)
        result, new = _evaluate(checks, [self._tat.get(c.key) for c in checks], now)
        for c, tat in zip(checks, new, strict=False):
            self._tat[c.key] = tat
        self._ops += 1
        if self._ops % self._sweep_every == 0:
            self._tat = {k: v for k, v in self._tat.items() if v > now}
        return result

    async def ahit(self, checks: list[Check], now: float) -> RateResult:
        return self.hit(checks, now)

    def reset(self) -> None:
        self._tat.clear()


# KEYS: the limit keys; ARGV: now, then (interval, capacity, cost) per key.
# Returns {allowed, limit, remaining, reset_after*1e6, retry_after*1e6, index}.
_LUA = """
local now = tonumber(ARGV[1])
local n = #KEYS
local new_tats = {}
local worst_wait, worst_i, worst_tat = -1, 0, 0
for i = 1, n do
  local t = tonumber(ARGV[2 + (i - 1) * 3])
  local cap = tonumber(ARGV[3 + (i - 1) * 3])
  local cost = tonumber(ARGV[4 + (i - 1) * 3])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  local new_tat = tat + cost * t
  local allow_at = new_tat - cap * t
  new_tats[i] = new_tat
  if allow_at > now + 1e-9 and allow_at - now > worst_wait then
    worst_wait, worst_i, worst_tat = allow_at - now, i, tat
  end
end
if worst_i > 0 then
  local t = tonumber(ARGV[2 + (worst_i - 1) * 3])
  local cap = tonumber(ARGV[3 + (worst_i - 1) * 3])
  local remaining = math.max(0, math.floor((now - (worst_tat - cap * t)) / t + 1e-9))
  return {0, cap, remaining, math.floor((worst_tat - now) * 1e6), math.floor(worst_wait * 1e6), worst_i}
end
local best_i, best_rem = 0, -1
for i = 1, n do
  local t = tonumber(ARGV[2 + (i - 1) * 3])
  local cap = tonumber(ARGV[3 + (i - 1) * 3])
  local ttl = math.ceil((new_tats[i] - now) * 1000) + 1000
  redis.call('SET', KEYS[i], string.format('%.6f', new_tats[i]), 'PX', ttl)
  local remaining = math.max(0, math.floor((now - (new_tats[i] - cap * t)) / t + 1e-9))
  if best_rem < 0 or remaining < best_rem then best_i, best_rem = i, remaining end
end
local cap = tonumber(ARGV[3 + (best_i - 1) * 3])
return {1, cap, best_rem, math.floor((new_tats[best_i] - now) * 1e6), 0, best_i}
"""


class RedisLimiter:
    """The same GCRA in Redis: one atomic Lua call per request, shared by all replicas.

    Keys live in one hash slot per consumer (``{client}`` tags) so the script
    also runs on Redis Cluster. The clock is the caller's (replicas should be
    NTP-synced; the backtest passes event time).
    """

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", prefix: str = "gw:rl:") -> None:
        self.url = url
        self.prefix = prefix
        self._sync: Any = None
        self._async: Any = None
        self._sync_script: Any = None
        self._async_script: Any = None

    def _args(self, checks: list[Check], now: float) -> tuple[list[str], list[float]]:
        keys = [self.prefix + c.key for c in checks]
        argv: list[float] = [now]
        for c in checks:
            argv += [c.limit.interval, c.limit.capacity, c.cost]
        return keys, argv

    @staticmethod
    def _result(raw: list[Any], checks: list[Check]) -> RateResult:
        allowed, cap, rem, reset_us, wait_us, i = (int(x) for x in raw)
        return RateResult(
            bool(allowed), cap, rem, reset_us / 1e6, wait_us / 1e6, checks[i - 1].key if i else ""
        )

    def hit(self, checks: list[Check], now: float) -> RateResult:
        if not checks:
            return RateResult(True, 0, 0, 0.0, 0.0)
        if self._sync is None:
            import redis

            self._sync = redis.Redis.from_url(self.url)
            self._sync_script = self._sync.register_script(_LUA)
        keys, argv = self._args(checks, now)
        return self._result(self._sync_script(keys=keys, args=argv), checks)

    async def ahit(self, checks: list[Check], now: float) -> RateResult:
        if not checks:
            return RateResult(True, 0, 0, 0.0, 0.0)
        if self._async is None:
            import redis.asyncio as aredis

            self._async = aredis.Redis.from_url(self.url)
            self._async_script = self._async.register_script(_LUA)
        keys, argv = self._args(checks, now)
        return self._result(await self._async_script(keys=keys, args=argv), checks)

    def reset(self) -> None:
        import redis

        r = redis.Redis.from_url(self.url)
        for k in r.scan_iter(match=self.prefix + "*", count=1000):
            r.delete(k)

    async def aclose(self) -> None:
        if self._async is not None:
            await self._async.aclose()
            self._async = None
