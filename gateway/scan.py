"""Payload scanning in the request path: which values, scored where, and when it fails.

Every request with a query string or a body has its parameter values scanned by the
``payload`` champion; the most suspicious value decides. Two
ways to score, set by ``gateway.scanning.mode``:

- ``local`` (default): the champion's compact export (``<data_dir>/scanner/payload.npz``,
  written when the champion moves) scored in process by ``features/scanner.py``, well under a millisecond. The file
  is watched and swapped in when it changes (hot reload); an unreadable file is refused
  and the last good scanner stays. No file yet (no champion, or a non-linear one):
  requests pass unscanned (``scan_label`` stays empty; ``/admin/status`` says why).
- ``remote``: ``POST /scan`` on the BentoML service, for champions that are not linear,
  with a timeout and a circuit breaker. Down, slow or open: ``failure_mode`` decides —
  ``open`` lets the request on with ``scan_label = "unavailable"``, ``closed`` refuses it
  (503 ``scanning_unavailable``).

Values: query-string values, form and JSON body leaf values (strings and numbers), and
path segments that are not plain identifiers; at most ``max_values`` values of at most
``max_value_bytes`` each, bodies up to ``max_body_bytes`` (beyond: scanned up to there).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote

from config.gateway import ScanningSettings
from gateway.routing import CircuitBreaker

__all__ = ["LocalScanner", "RemoteScanner", "ScanResult", "parse_record", "request_values"]

log = logging.getLogger("gatewise.gateway")

_PLAIN_SEGMENT = re.compile(r"^[A-Za-z0-9_\-.~]*$")


@dataclass(frozen=True)
class ScanResult:
    label: str | None  # benign | <attack class> | unavailable | None (not scanned)
    score: float | None
    model_version: str | None
    available: bool
    reason: str = "ok"  # ok | no_values | no_scanner | timeout | error | breaker_open


NOT_SCANNED = ScanResult(None, None, None, True, "no_values")


def _leaves(obj: Any, out: list[str], limit: int) -> None:
    if len(out) >= limit:
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(k, str) and not _PLAIN_SEGMENT.match(k):
                out.append(k)  # an odd key is content too
            _leaves(v, out, limit)
    elif isinstance(obj, list):
        for v in obj:
            _leaves(v, out, limit)
    elif isinstance(obj, str):
        if obj:
            out.append(obj)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out.append(str(obj))


def request_values(
    path: str,
    query: str,
    body: bytes,
    content_type: str | None,
    cfg: ScanningSettings,
) -> list[str]:
    """The values of a request the scanner looks at (see the module docstring)."""
    out: list[str] = []
    limit = cfg.max_values
    for seg in path.split("/"):
        if seg and not _PLAIN_SEGMENT.match(seg):
            out.append(unquote(seg))
    if query:
        # values stay as sent (percent-encoded): the scanner's normalisation decodes them,
        # and counts the decoding rounds as a signal
        for k, v in parse_qsl(query, keep_blank_values=False):
            if not _PLAIN_SEGMENT.match(k):
                out.append(k)
            out.append(v)
    if body:
        raw = body[: cfg.max_body_bytes]
        ctype = (content_type or "").split(";")[0].strip().lower()
        text = raw.decode("utf-8", errors="replace")
        if ctype == "application/json" or ctype.endswith("+json"):
            try:
                _leaves(json.loads(text), out, limit)
            except ValueError:
                out.append(text)
        elif ctype == "application/x-www-form-urlencoded":
            for k, v in parse_qsl(text, keep_blank_values=False):
                if not _PLAIN_SEGMENT.match(k):
                    out.append(k)
                out.append(v)
        elif ctype.startswith("text/") or not ctype:
            out.append(text)
        # other types (files, protobuf, ...) are not parameter content
    cap = cfg.max_value_bytes
    return [v[:cap] for v in out[:limit] if v]


class LocalScanner:
    """The compact champion in process, reloaded when its file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
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
        self.reloads += 1
        log.info("payload scanner v%s (%s) in force", new.version, new.family)
        return True

    def scan(self, values: list[str]) -> ScanResult:
        if not values:
            return NOT_SCANNED
        sc = self.scanner
        if sc is None:
            return ScanResult(None, None, None, True, "no_scanner")
        best = sc.scan_max(values)
        assert best is not None
        return ScanResult(best[0], best[1], sc.version, True)

    def status(self) -> dict[str, Any]:
        sc = self.scanner
        return {
            "mode": "local",
            "version": sc.version if sc else None,
            "family": sc.family if sc else None,
            "threshold": sc.threshold if sc else None,
            "reloads": self.reloads,
            "error": self.error,
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

    async def scan(self, values: list[str]) -> ScanResult:
        if not values:
            return NOT_SCANNED
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
            res = ScanResult(
                str(best["label"]), float(best["score"]), str(body.get("model_version")), True
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


def parse_record(line: str, cfg: ScanningSettings) -> tuple[list[str], str]:
    """One input line → (values to scan, kind). A JSON object with ``url`` (and optional
    ``method``, ``headers``, ``body``) is a raw request; any other line is one bare value.
    Raises ``ValueError`` naming what is wrong with a malformed request object."""
    from urllib.parse import urlsplit

    text = line.rstrip("\n")
    if text.lstrip().startswith("{"):
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"not valid JSON: {exc}") from None
        if isinstance(obj, dict) and "url" in obj:
            url = obj["url"]
            if not isinstance(url, str):
                raise ValueError("url: must be a string")
            headers = obj.get("headers")
            headers = {} if headers is None else headers
            if not isinstance(headers, dict):
                raise ValueError("headers: must be an object")
            ctype = next((str(v) for k, v in headers.items() if k.lower() == "content-type"), None)
            body = obj.get("body")
            if isinstance(body, (dict, list)):
                raw, ctype = json.dumps(body).encode(), ctype or "application/json"
            elif body is None:
                raw = b""
            else:
                raw = str(body).encode()
            parts = urlsplit(url)
            return request_values(parts.path, parts.query, raw, ctype, cfg), "request"
    return ([text] if text else []), "value"
