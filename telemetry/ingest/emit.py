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
    "nginx:main": _BASE,
    "apache:common": tuple(c for c in _BASE if c != "user_agent"),
    "apache:vhost_combined": _BASE,
    "nginx:gatewise": (
        *_BASE,
        "request_id",
        "api_key_id",
        "request_bytes",
        "duration_ms",
        "upstream_duration_ms",
    ),
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


def emit_nginx_main(r: Row) -> str:
    # NGINX's default main format: combined plus X-Forwarded-For (none here)
    return emit_combined(r) + ' "-"'


def _nx(s: str | None) -> str:
    """NGINX's escaping of a logged value: ``"``, ``\\`` and bytes outside ASCII as \\xHH."""
    if s is None or s == "":
        return "-"
    out: list[str] = []
    for ch in s:
        if ch in '"\\' or not (32 <= ord(ch) < 127):
            out.extend(f"\\x{b:02X}" for b in ch.encode())
        else:
            out.append(ch)
    return "".join(out)


def emit_nginx_gatewise(r: Row) -> str:
    # the NGINX log_format docs/ingest.md recommends (formats.NGINX_GATEWISE)
    ts = r["timestamp"].timestamp()
    up = _ms(r["upstream_duration_ms"], 0.001, 6)
    return (
        f'{ts:.3f} {r["client_address"]} "-" "{r["http_request_method"]} {_nx(_target(r))} HTTP/1.1" '
        f"{r['http_response_status_code']} {r['response_bytes'] if r['response_bytes'] is not None else 0} "
        f"{r['request_bytes'] if r['request_bytes'] is not None else 0} "
        f'{_ms(r["duration_ms"], 0.001, 6)} "{up}" "{_nx(r["user_agent"])}" "-" '
        f'{r["request_id"]} "{_nx(r["client_id"])}" "{_nx(r["api_key_id"])}"'
    )


def emit_apache_common(r: Row) -> str:
    size = "-" if r["response_bytes"] is None else str(r["response_bytes"])
    return (
        f"{r['client_address']} - {r['client_id']} [{_clf_time(r['timestamp'])}] "
        f'"{r["http_request_method"]} {_target(r)} HTTP/1.1" {r["http_response_status_code"]} {size}'
    )


def emit_apache_vhost(r: Row) -> str:
    size = "-" if r["response_bytes"] is None else str(r["response_bytes"])
    return (
        f"api.example.com:443 {r['client_address']} - {r['client_id']} "
        f"[{_clf_time(r['timestamp'])}] "
        f'"{r["http_request_method"]} {_target(r)} HTTP/1.1" {r["http_response_status_code"]} '
        f'{size} "-" "{_q(r["user_agent"])}"'
    )


def _int_ms(v: float | None) -> str:
    return "-1" if v is None else str(round(v))


def emit_haproxy(r: Row) -> str:
    ts = r["timestamp"].astimezone(UTC)
    clf = _clf_time(ts)[:-6] + f".{ts.microsecond // 1000:03d}"
    return (
        f"{r['client_address']}:443 [{clf}] https-in {r['upstream_service'] or 'api'}/srv1 "
        f"0/0/0/{_int_ms(r['upstream_duration_ms'])}/{_int_ms(r['duration_ms'])} "
        f"{r['http_response_status_code']} {r['response_bytes'] or 0} - - ---- 1/1/0/0/0 0/0 "
        f'"{r["http_request_method"]} {_target(r)} HTTP/1.1"'
    )


def emit_envoy_text(r: Row) -> str:
    ts = r["timestamp"].astimezone(UTC)
    iso = ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"
    return (
        f'[{iso}] "{r["http_request_method"]} {_target(r)} HTTP/1.1" '
        f"{r['http_response_status_code']} - {r['request_bytes'] or 0} {r['response_bytes'] or 0} "
        f"{_int_ms(r['duration_ms'])} {'-' if r['upstream_duration_ms'] is None else round(r['upstream_duration_ms'])} "
        f'"{r["client_address"]}" "{_q(r["user_agent"])}" "{r["request_id"]}" '
        f'"api.example.com" "10.0.0.5:8080"'
    )


def emit_alb(r: Row) -> str:
    ts = r["timestamp"].astimezone(UTC)
    iso = ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    up = "-1" if r["upstream_duration_ms"] is None else f"{r['upstream_duration_ms'] / 1000:.3f}"
    return (
        f"https {iso} app/api-lb/50dc6c495c0c9188 {r['client_address']}:2817 10.0.0.1:80 "
        f"0.000 {up} 0.000 {r['http_response_status_code']} {r['http_response_status_code']} "
        f"{r['request_bytes'] or 0} {r['response_bytes'] or 0} "
        f'"{r["http_request_method"]} https://api.example.com:443{_target(r)} HTTP/1.1" '
        f'"{_q(r["user_agent"])}" ECDHE-RSA-AES128-GCM-SHA256 TLSv1.2 '
        f"arn:aws:elasticloadbalancing:us-east-2:123456789012:targetgroup/api/73e2d6bc24d8a067 "
        f'"Root=1-{r["request_id"][:24]}" "api.example.com" "-" 0 {iso} "forward" "-" "-" '
        f'"10.0.0.1:80" "200" "-" "-"'
    )


EMITTERS: dict[str, Callable[[Row], str]] = {
    "nginx:main": emit_nginx_main,
    "nginx:gatewise": emit_nginx_gatewise,
    "apache:common": emit_apache_common,
    "apache:vhost_combined": emit_apache_vhost,
    "haproxy": emit_haproxy,
    "envoy:default": emit_envoy_text,
    "alb": emit_alb,
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
