"""Payload scanning in the request path: which values, scored where, and when it fails.

Every request has its parts scanned by the ``payload`` champion, each value in its context
(``features/request_parts.py``: path, query, form, JSON, multipart, headers, cookies); the most
suspicious value decides. Two ways to score, set by ``gateway.scanning.mode``:

- ``local`` (default): the champion's compact export (``<data_dir>/scanner/payload.npz``,
  written when the champion moves) scored in process by ``features/scanner.py``. The file
  is watched and swapped in when it changes (hot reload); an unreadable file is refused
  and the last good scanner stays. No file yet (no champion, or a non-linear one):
  requests pass unscanned (``scan_label`` stays empty; ``/admin/status`` says why).
  Verdicts are remembered by value (``cache_entries``): a User-Agent or an Accept header
  seen on every request is scored once per scanner version.
- ``remote``: ``POST /scan`` on the BentoML service, for champions that are not linear,
  with a timeout and a circuit breaker. Down, slow or open: ``failure_mode`` decides —
  ``open`` lets the request on with ``scan_label = "unavailable"``, ``closed`` refuses it
  (503 ``scanning_unavailable``).

No silent gaps: when a budget runs out (values, bytes, body size, scoring time) and no
attack was found in what was read, the verdict is ``unscanned`` with the reason, never
``benign``; the route's ``unscanned`` action applies (``gateway.scanning.unscanned_action``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from config.gateway import ScanningSettings
from features.request_parts import extract
from gateway.routing import CircuitBreaker

__all__ = ["UNSCANNED", "LocalScanner", "RemoteScanner", "ScanResult", "parse_record", "verdict"]

log = logging.getLogger("gatewise.gateway")

UNSCANNED = "unscanned"
BENIGN = "benign"


@dataclass(slots=True)
class ScanResult:
    label: str | None  # benign | <attack class> | unscanned | unavailable | None (not scanned)
    score: float | None
    model_version: str | None
    available: bool
    reason: str = "ok"  # ok | no_values | no_scanner | unscanned | timeout | error | breaker_open
    gap: str | None = None  # what was left unread (label unscanned), e.g. "body: 2 MB, over ..."
    values: int = 0  # values scored


NOT_SCANNED = ScanResult(None, None, None, True, "no_values")


def verdict(
    best: tuple[str, float] | None, gaps: list[str], version: str | None, n: int
) -> ScanResult:
    """An attack found decides; otherwise a gap makes the request unscanned, not benign."""
    if best is not None and best[0] != BENIGN:
        return ScanResult(best[0], best[1], version, True, values=n)
    if gaps:
        score = None if best is None else best[1]
        return ScanResult(UNSCANNED, score, version, True, UNSCANNED, "; ".join(gaps), n)
    if best is None:
        return NOT_SCANNED
    return ScanResult(best[0], best[1], version, True, values=n)


class LocalScanner:
    """The compact champion in process, reloaded when its file changes."""

    def __init__(
        self,
        path: Path,
        cfg: ScanningSettings | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.path = path
        self.cfg = cfg or ScanningSettings()
        self.clock = clock
        self._cache: dict[str, tuple[str, float]] = {}
        self.cache_hits = self.cache_misses = 0
        self.scanner: Any = None
        self.error: str | None = None
        self._stamp: tuple[int, int] | None = (-1, -1)  # never a real stamp: first look loads
        self.reloads = 0
        self.reload()

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def reload(self) -> bool:
        """Swap in the file if it changed and loads; keep the last good scanner otherwise.
        A removed file (the champion is no longer linear) stops local scanning."""
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        if stamp is None:
            if self.scanner is not None:
                log.warning("scanner file %s removed: local scanning stops", self.path)
            self.scanner, self.error = None, f"no compact scanner at {self.path}"
            return True
        from features.scanner import CompactScanner

        try:
            new = CompactScanner.load(self.path)
            new.score_one("warm up ' <x> ../")  # a scanner that cannot score never serves
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"[:300]
            log.error("scanner %s rejected, keeping the previous one: %s", self.path, exc)
            return False
        self.scanner, self.error = new, None
        self._cache = {}  # verdicts belong to the scanner that gave them
        self.reloads += 1
        log.info("payload scanner v%s (%s) in force", new.version, new.family)
        return True

    def scan(self, values: list[str], gaps: list[str] | None = None) -> ScanResult:
        """The most suspicious of ``values`` (context-tagged), within the time budget."""
        gaps = list(gaps or [])
        if not values:
            return verdict(None, gaps, None, 0)
        sc = self.scanner
        if sc is None:
            return ScanResult(None, None, None, True, "no_scanner")
        cache, cap = self._cache, self.cfg.cache_entries
        deadline = self.clock() + self.cfg.max_scan_ms / 1000.0
        best: tuple[str, float] | None = None
        n = 0
        for i, v in enumerate(values):
            r = cache.get(v)
            if r is None:
                if i and self.clock() > deadline:
                    gaps.append(
                        f"scoring: {len(values) - i} values left at max_scan_ms "
                        f"{self.cfg.max_scan_ms:g}"
                    )
                    break
                r = sc.score_one(v)
                self.cache_misses += 1
                if cap:
                    if len(cache) >= cap:
                        cache.clear()
                    cache[v] = r
            else:
                self.cache_hits += 1
            n += 1
            if best is None or r[1] > best[1]:
                best = r
        return verdict(best, gaps, sc.version, n)

    def status(self) -> dict[str, Any]:
        sc = self.scanner
        return {
            "mode": "local",
            "version": sc.version if sc else None,
            "family": sc.family if sc else None,
            "threshold": sc.threshold if sc else None,
            "reloads": self.reloads,
            "error": self.error,
            "cache": {
                "entries": len(self._cache),
                "hits": self.cache_hits,
                "misses": self.cache_misses,
            },
        }


class RemoteScanner:
    """``POST /scan`` on the serving service, behind a timeout and a circuit breaker."""

    def __init__(
        self,
        cfg: ScanningSettings,
        client: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        import httpx

        self.cfg = cfg
        self.breaker = CircuitBreaker(cfg.breaker, clock)
        self._client = client or httpx.AsyncClient(
            base_url=cfg.url,
            timeout=httpx.Timeout(cfg.timeout_ms / 1000.0),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
        )
        self.calls = self.failures = 0
        self.version: str | None = None

    async def scan(self, values: list[str], gaps: list[str] | None = None) -> ScanResult:
        gaps = list(gaps or [])
        if not values:
            return verdict(None, gaps, None, 0)
        if not self.breaker.allow():
            return ScanResult("unavailable", None, None, False, "breaker_open")
        import httpx

        self.calls += 1
        try:
            r = await self._client.post(
                "/scan",
                json={"values": values, "target": self.cfg.target, "alias": self.cfg.alias},
            )
            r.raise_for_status()
            body = r.json()
            rows = body["results"]
            best = max(rows, key=lambda x: float(x["score"]))
            res = verdict(
                (str(best["label"]), float(best["score"])),
                gaps,
                str(body.get("model_version")),
                len(rows),
            )
        except httpx.TimeoutException:
            self.failures += 1
            self.breaker.failure()
            return ScanResult("unavailable", None, None, False, "timeout")
        except (httpx.HTTPError, KeyError, IndexError, TypeError, ValueError):
            self.failures += 1
            self.breaker.failure()
            return ScanResult("unavailable", None, None, False, "error")
        self.breaker.success()
        self.version = res.model_version
        return res

    def status(self) -> dict[str, Any]:
        return {
            "mode": "remote",
            "url": self.cfg.url,
            "version": self.version,
            "calls": self.calls,
            "failures": self.failures,
            "breaker": self.breaker.state,
        }

    async def aclose(self) -> None:
        await self._client.aclose()


# --- offline: `gatewise scan --input FILE` ------------------------------------------------


def parse_record(line: str, cfg: ScanningSettings) -> tuple[list[str], list[str], str]:
    """One input line → (tagged values to scan, gaps, kind). A JSON object with ``url`` (and
    optional ``method``, ``headers``, ``body``) is a raw request, read as the gateway reads
    one; any other line (``{{7*7}}``, ``{"page":2}``, text) is one bare value. Raises
    ``ValueError`` naming what is wrong with a malformed request object."""
    from urllib.parse import urlsplit

    text = line.rstrip("\r\n")
    obj: Any = None
    if text.lstrip().startswith("{"):
        try:
            obj = json.loads(text)
        except ValueError:
            obj = None  # not JSON: a bare value that happens to start with a brace
    if isinstance(obj, dict) and "url" in obj:
        url = obj["url"]
        if not isinstance(url, str):
            raise ValueError("url: must be a string")
        headers = obj.get("headers")
        headers = {} if headers is None else headers
        if not isinstance(headers, dict):
            raise ValueError("headers: must be an object")
        if not all(isinstance(v, str) for v in headers.values()):
            raise ValueError("headers: every value must be a string")
        ctype = next((str(v) for k, v in headers.items() if k.lower() == "content-type"), None)
        body = obj.get("body")
        if isinstance(body, (dict, list)):
            raw, ctype = json.dumps(body).encode(), ctype or "application/json"
        elif body is None:
            raw = b""
        else:
            raw = str(body).encode()
        parts = urlsplit(url)
        ex = extract(parts.path, parts.query, headers.items(), raw, ctype, cfg)
        return ex.values, ex.gaps, "request"
    return ([text] if text else []), [], "value"
