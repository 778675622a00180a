"""Helpers every adapter shares: route templates, device types, numbers, time."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from functools import lru_cache
from typing import Any

__all__ = ["RejectError", "device_from_user_agent", "route_template", "split_target"]


class RejectError(ValueError):
    """A record that cannot become an event; the message is the reason."""


_ID_SEGMENT = re.compile(
    r"^(?:\d+|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-fA-F]{16,})$"
)
# opaque tokens (base62/base64url ids): long, and at least a quarter digits
_TOKEN = re.compile(r"^[A-Za-z0-9_]{20,}$")


def _is_id(segment: str) -> bool:
    if _ID_SEGMENT.match(segment):
        return True
    return bool(_TOKEN.match(segment)) and sum(c.isdigit() for c in segment) * 4 >= len(segment)


KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"}
)


@lru_cache(maxsize=65536)
def route_template(path: str) -> str:
    """``/v1/orders/12345`` -> ``/v1/orders/{id}``: numeric, UUID, long hex or
    token-like segments become ``{id}`` so routes group by endpoint."""
    if not path or path == "/":
        return path or "/"
    parts = path.split("/")
    return "/".join("{id}" if p and _is_id(p) else p for p in parts)


def split_target(target: str) -> tuple[str, str | None]:
    """Request target -> (path, query or None). Absolute-form targets keep only the path."""
    if target.startswith(("http://", "https://")):
        rest = target.split("://", 1)[1]
        slash = rest.find("/")
        target = rest[slash:] if slash >= 0 else "/"
    path, sep, query = target.partition("?")
    return path, (query if sep else None)


def method_or_other(method: str) -> str:
    m = method.upper()
    return m if m in KNOWN_METHODS else "_OTHER"


_UA_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"bot|crawl|spider|slurp|scanner|monitor", re.I), "bot"),
    (re.compile(r"ESP32|esp-idf|Zephyr|Mbed|Tasmota|Shelly", re.I), "iot"),
    (re.compile(r"iPhone|iPad|Android|Mobile|Dalvik|CFNetwork", re.I), "mobile"),
    (
        re.compile(
            r"^(python-requests|python-urllib|Go-http-client|curl|Wget|Java/|Apache-HttpClient|node-fetch|axios|okhttp|libwww|aiohttp|httpx)",
            re.I,
        ),
        "server",
    ),
    (re.compile(r"^Mozilla/", re.I), "browser"),
)


@lru_cache(maxsize=4096)
def device_from_user_agent(ua: str | None) -> str | None:
    if not ua:
        return None
    for rx, kind in _UA_RULES:
        if rx.search(ua):
            return kind
    return "other"


def none_if_dash(v: Any) -> Any:
    return None if v in ("-", "", None) else v


def to_int(v: Any, field: str, *, required: bool = False) -> int | None:
    v = none_if_dash(v)
    if v is None:
        if required:
            raise RejectError(f"missing {field}")
        return None
    try:
        n = int(float(v))
    except (TypeError, ValueError, OverflowError):
        raise RejectError(f"{field} is not a number: {str(v)[:40]!r}") from None
    if not -(2**63) <= n < 2**63:
        raise RejectError(f"{field} is out of range: {str(v)[:40]!r}")
    return n


def to_float(v: Any, field: str, scale: float = 1.0) -> float | None:
    """Number (or NGINX's comma-separated list of upstream tries, summed) times ``scale``."""
    v = none_if_dash(v)
    if v is None:
        return None
    if isinstance(v, str) and ("," in v or ":" in v):
        parts = [p.strip() for p in re.split(r"[,:]", v) if p.strip() not in ("", "-")]
        try:
            return sum(float(p) for p in parts) * scale if parts else None
        except ValueError:
            raise RejectError(f"{field} is not a number: {v[:40]!r}") from None
    try:
        return float(v) * scale
    except (TypeError, ValueError):
        raise RejectError(f"{field} is not a number: {str(v)[:40]!r}") from None


def epoch_to_dt(seconds: float) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=round(seconds * 1_000_000))


_MONTHS = {
    m: i
    for i, m in enumerate(
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"], 1
    )
}


def parse_clf_time(s: str) -> datetime:
    """``17/May/2015:10:05:03 +0000`` (common log format) -> aware UTC datetime."""
    try:
        day, mon, rest = s[:2], s[3:6], s[7:]
        year, hh, mm, ss = int(rest[0:4]), int(rest[5:7]), int(rest[8:10]), int(rest[11:13])
        tz = rest[14:]
        sign = -1 if tz[0] == "-" else 1
        off = timedelta(hours=int(tz[1:3]), minutes=int(tz[3:5])) * sign
        dt = datetime(year, _MONTHS[mon], int(day), hh, mm, ss, tzinfo=timezone(off))
    except (KeyError, ValueError, IndexError):
        raise RejectError(f"bad timestamp {s[:40]!r}") from None
    return dt.astimezone(UTC)


def parse_time(v: Any, field: str) -> datetime:
    """ISO 8601, common log format, or epoch seconds/milliseconds -> aware UTC datetime."""
    v = none_if_dash(v)
    if v is None:
        raise RejectError(f"missing {field}")
    if isinstance(v, int | float) or (isinstance(v, str) and re.fullmatch(r"\d+(\.\d+)?", v)):
        x = float(v)
        return epoch_to_dt(x / 1000.0 if x > 1e11 else x)
    if isinstance(v, str):
        if len(v) >= 26 and v[2] == "/" and v[6] == "/":
            return parse_clf_time(v)
        try:
            dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            raise RejectError(f"{field} is not a timestamp: {v[:40]!r}") from None
        return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
    raise RejectError(f"{field} is not a timestamp: {str(v)[:40]!r}")
