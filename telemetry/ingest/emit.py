"""Emitters: write telemetry events as a real gateway would log them.

The inverse of the adapters, used by ``gatewise simulate --emit`` and by the
round-trip tests. Each format carries what that gateway logs and nothing
more (the combined format, for instance, has no latency and no request id).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import pyarrow as pa

__all__ = ["CARRIED", "EMITTERS", "emit_table"]

Row = dict[str, Any]

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_BASE = (
    "timestamp",
    "client_id",
    "client_address",
    "user_agent",
    "http_request_method",
    "url_path",
    "url_query",
    "http_route",
    "http_response_status_code",
    "response_bytes",
)
# contract fields each format carries through a round trip
CARRIED: dict[str, tuple[str, ...]] = {
    "combined": _BASE,
    "nginx-json": (
        *_BASE,
        "request_id",
        "api_key_id",
        "request_bytes",
        "duration_ms",
        "upstream_duration_ms",
        "upstream_service",
        "cache_status",
    ),
    "kong": (
        *_BASE,
        "request_id",
        "api_key_id",
        "request_bytes",
        "duration_ms",
        "upstream_duration_ms",
        "upstream_service",
        "cache_status",
    ),
    "envoy": (
        *_BASE,
        "request_id",
        "api_key_id",
        "request_bytes",
        "duration_ms",
        "upstream_duration_ms",
        "upstream_service",
        "cache_status",
    ),
}


def _target(r: Row) -> str:
    return r["url_path"] + (f"?{r['url_query']}" if r["url_query"] is not None else "")


def _clf_time(ts: datetime) -> str:
    ts = ts.astimezone(UTC)
    return f"{ts.day:02d}/{_MONTHS[ts.month - 1]}/{ts.year}:{ts:%H:%M:%S} +0000"


def _q(s: str | None) -> str:
    return "-" if s is None else s.replace("\\", "\\\\").replace('"', '\\"')


def emit_combined(r: Row) -> str:
    size = "-" if r["response_bytes"] is None else str(r["response_bytes"])
    return (
        f"{r['client_address']} - {r['client_id']} [{_clf_time(r['timestamp'])}] "
        f'"{r["http_request_method"]} {_target(r)} HTTP/1.1" {r["http_response_status_code"]} {size} '
        f'"-" "{_q(r["user_agent"])}"'
    )


def _ms(v: float | None, scale: float = 1.0, digits: int = 3) -> str:
    return "-" if v is None else f"{v * scale:.{digits}f}"


def emit_nginx_json(r: Row) -> str:
    # the log_format in docs/ingest.md: NGINX variables, escape=json, all strings
    ts = r["timestamp"].timestamp()
    return json.dumps(
        {
            "msec": f"{ts:.3f}",
            "request_id": r["request_id"],
            "remote_addr": r["client_address"],
            "remote_user": r["client_id"],
            "http_x_api_key_id": r["api_key_id"] or "",
            "request_method": r["http_request_method"],
            "request_uri": _target(r),
            "status": str(r["http_response_status_code"]),
            "request_length": str(r["request_bytes"]) if r["request_bytes"] is not None else "",
            "body_bytes_sent": str(r["response_bytes"]) if r["response_bytes"] is not None else "",
            # request_time has millisecond resolution in NGINX; we keep microseconds so a round trip is exact
            "request_time": _ms(r["duration_ms"], 0.001, 6),
            "upstream_response_time": _ms(r["upstream_duration_ms"], 0.001, 6),
            "proxy_host": r["upstream_service"] or "",
            "upstream_cache_status": r["cache_status"] or "",
            "http_user_agent": r["user_agent"] or "",
        },
        separators=(",", ":"),
    )


def emit_kong(r: Row) -> str:
    ts_ms = round(r["timestamp"].timestamp() * 1000)
    headers = {"user-agent": r["user_agent"]} if r["user_agent"] else {}
    resp_headers = {"x-cache-status": r["cache_status"]} if r["cache_status"] else {}
    return json.dumps(
        {
            "request": {
                "id": r["request_id"],
                "method": r["http_request_method"],
                "uri": _target(r),
                "url": f"http://api.example.com{_target(r)}",
                "size": r["request_bytes"],
                "headers": headers,
            },
            "response": {
                "status": r["http_response_status_code"],
                "size": r["response_bytes"],
                "headers": resp_headers,
            },
            "latencies": {
                "request": r["duration_ms"],
                "proxy": -1 if r["upstream_duration_ms"] is None else r["upstream_duration_ms"],
                "kong": None
                if r["duration_ms"] is None
                else round(r["duration_ms"] - (r["upstream_duration_ms"] or 0), 3),
            },
            "consumer": {"username": r["client_id"]},
            "authenticated_entity": {"id": r["api_key_id"]} if r["api_key_id"] else None,
            "service": {"name": r["upstream_service"]} if r["upstream_service"] else None,
            "client_ip": r["client_address"],
            "started_at": ts_ms,
        },
        separators=(",", ":"),
    )


def emit_envoy(r: Row) -> str:
    # Contour's documented json_format keys, plus two request headers (X-Consumer-Id, X-Api-Key-Id)
    ts = r["timestamp"].astimezone(UTC)
    return json.dumps(
        {
            "@timestamp": ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z",
            "authority": "api.example.com",
            "bytes_received": str(r["request_bytes"]) if r["request_bytes"] is not None else "-",
            "bytes_sent": str(r["response_bytes"]) if r["response_bytes"] is not None else "-",
            "downstream_remote_address": f"{r['client_address']}:443",
            "duration": _ms(r["duration_ms"]),
            "method": r["http_request_method"],
            "path": _target(r),
            "protocol": "HTTP/1.1",
            "request_id": r["request_id"],
            "response_code": str(r["http_response_status_code"]),
            "upstream_cluster": r["upstream_service"] or "-",
            "upstream_service_time": _ms(r["upstream_duration_ms"]),
            "user_agent": r["user_agent"] or "-",
            "x_forwarded_for": "-",
            "consumer": r["client_id"],
            "api_key_id": r["api_key_id"] or "-",
            "cache_status": r["cache_status"] or "-",
        },
        separators=(",", ":"),
    )


EMITTERS: dict[str, Callable[[Row], str]] = {
    "combined": emit_combined,
    "nginx-json": emit_nginx_json,
    "kong": emit_kong,
    "envoy": emit_envoy,
}


def emit_table(table: pa.Table, fmt: str, path: Path, *, batch_rows: int = 65_536) -> int:
    """Write ``table`` as ``fmt`` log lines to ``path`` (gzip if it ends in .gz)."""
    if fmt not in EMITTERS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(EMITTERS)}")
    emit = EMITTERS[fmt]
    path.parent.mkdir(parents=True, exist_ok=True)
    opener: Callable[..., IO[str]] = gzip.open if path.suffix == ".gz" else open
    n = 0
    with opener(path, "wt", encoding="utf-8") as fh:
        for batch in table.to_batches(batch_rows):
            rows: Iterable[Row] = batch.to_pylist()
            fh.write("".join(emit(r) + "\n" for r in rows))
            n += batch.num_rows
    return n
