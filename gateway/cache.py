"""A shared HTTP cache for upstream responses (the RFC 9111 subset a gateway needs).

Stores GET responses that say ``public`` with ``s-maxage`` or ``max-age``;
never ``no-store`` or ``private`` ones. Fresh entries are served as HIT; a
stale entry with an ``ETag`` is revalidated with ``If-None-Match`` (a 304
refreshes it); a client's own ``If-None-Match`` that matches gets a 304.
Bodies are kept uncompressed; compression happens per client on the way out.

    cache = ResponseCache(max_entries=10_000)
    entry = cache.get(key, now)
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["CacheEntry", "ResponseCache", "freshness"]

_DIRECTIVE = re.compile(r"([a-z-]+)(?:=\"?(\d+)\"?)?")


def freshness(cache_control: str | None) -> float | None:
    """Seconds a shared cache may keep a response, or None when it must not store it."""
    if not cache_control:
        return None
    d = {m.group(1): m.group(2) for m in _DIRECTIVE.finditer(cache_control.lower())}
    if "no-store" in d or "private" in d or "no-cache" in d:
        return None
    for name in ("s-maxage", "max-age"):
        if d.get(name) is not None:
            return float(d[name])
    return None


@dataclass
class CacheEntry:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    etag: str | None
    stored_at: float
    ttl: float

    def fresh(self, now: float) -> bool:
        return now - self.stored_at < self.ttl

    def age(self, now: float) -> int:
        return int(now - self.stored_at)


class ResponseCache:
    """LRU over entries; stale ones stay (for revalidation) until evicted."""

    def __init__(self, max_entries: int = 10_000, max_body_bytes: int = 1 << 20) -> None:
        self.max_entries = max_entries
        self.max_body_bytes = max_body_bytes
        self._d: OrderedDict[str, CacheEntry] = OrderedDict()
        self.hits = self.misses = self.revalidated = 0

    def __len__(self) -> int:
        return len(self._d)

    def get(self, key: str) -> CacheEntry | None:
        e = self._d.get(key)
        if e is not None:
            self._d.move_to_end(key)
        return e

    def store(
        self, key: str, status: int, headers: list[tuple[str, str]], body: bytes, now: float
    ) -> bool:
        if status != 200 or len(body) > self.max_body_bytes:
            return False
        h = {k.lower(): v for k, v in headers}
        ttl = freshness(h.get("cache-control"))
        if ttl is None or ttl <= 0:
            return False
        self._d[key] = CacheEntry(status, headers, body, h.get("etag"), now, ttl)
        self._d.move_to_end(key)
        while len(self._d) > self.max_entries:
            self._d.popitem(last=False)
        return True

    def refresh(self, key: str, now: float) -> None:
        e = self._d.get(key)
        if e is not None:
            e.stored_at = now
            self.revalidated += 1

    def invalidate(self, key: str) -> None:
        self._d.pop(key, None)
