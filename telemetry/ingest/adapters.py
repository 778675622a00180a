"""Adapters: one gateway log record -> the fields of one telemetry event.

Each adapter returns a dict of contract fields; ``request_id`` may be None
(the driver then derives one from the file and the record's byte offset) and
``client_id`` may be None (the driver falls back to the client address).
A record that cannot be mapped raises ``RejectError`` with the reason.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from telemetry.ingest.normalize import (
    RejectError,
    method_or_other,
    none_if_dash,
    parse_clf_time,
    parse_time,
    route_template,
    split_target,
    to_float,
    to_int,
)

__all__ = [
    "ADAPTERS",
    "JSON_FORMATS",
    "parse_combined",
    "parse_envoy",
    "parse_kong",
    "parse_nginx_json",
]

Fields = dict[str, Any]

_COMBINED = re.compile(
    rb'^(\S+) (\S+) (\S+) \[([^\]]+)\] "((?:[^"\\]|\\.)*)" (\d{3}) (\d+|-)'
    rb'(?: "((?:[^"\\]|\\.)*)" "((?:[^"\\]|\\.)*)")?\s*$'
)
_REQUEST_LINE = re.compile(r"^([A-Za-z]+) (\S+)(?: HTTP/\d(?:\.\d)?)?$")


def _unescape(b: bytes | None) -> str | None:
    if b is None:
        return None
    s = b.decode("utf-8", errors="replace")
    return s.replace('\\"', '"').replace("\\\\", "\\") if "\\" in s else s


def _request_fields(method: str, target: str) -> Fields:
    path, query = split_target(target)
    return {
        "http_request_method": method_or_other(method),
        "url_path": path,
        "url_query": query,
        "http_route": route_template(path),
    }


def _request_line(line: str | None) -> Fields:
    """``GET /x?y HTTP/1.1`` -> method/path/query/route; anything else (probes,
    TLS bytes sent to a plain port) is kept as method ``_OTHER`` with the raw
    text as its path, so such requests stay visible rather than dropped."""
    m = _REQUEST_LINE.match(line or "")
    if m:
        return _request_fields(m.group(1), m.group(2))
    return {
        "http_request_method": "_OTHER",
        "url_path": (line or "")[:2048],
        "url_query": None,
        "http_route": "_OTHER",
    }


def parse_combined(line: bytes) -> Fields:
    """NGINX/Apache ``combined`` (and ``common``) log format."""
    m = _COMBINED.match(line)
    if not m:
        if line.count(b'"') % 2:
            raise RejectError("unbalanced quotes (truncated line?)")
        raise RejectError("not in combined log format")
    addr, _ident, user, ts, req, status, size, _ref, ua = m.groups()
    user_s = user.decode("utf-8", errors="replace")
    fields = {
        "timestamp": parse_clf_time(ts.decode()),
        "client_address": addr.decode(),
        "client_id": None if user_s == "-" else user_s,
        "http_response_status_code": int(status),
        "response_bytes": None if size == b"-" else int(size),
        "user_agent": none_if_dash(_unescape(ua)),
    }
    fields.update(_request_line(_unescape(req)))
    return fields


def _first(rec: dict[str, Any], *keys: str) -> Any:
    for k in keys:
        v = rec.get(k)
        if v not in (None, "", "-"):
            return v
    return None


def _status(v: Any) -> int:
    code = to_int(v, "status", required=True)
    assert code is not None
    if not 100 <= code <= 599:
        raise RejectError(f"status {code} is not an HTTP status code")
    return code


def _address(v: Any) -> str | None:
    """First address of an X-Forwarded-For list, without a port."""
    v = none_if_dash(v)
    if v is None:
        return None
    first = str(v).split(",")[0].strip()
    if first.startswith("["):  # [v6]:port
        return first[1 : first.find("]")]
    if first.count(":") == 1:  # v4:port
        return first.split(":")[0]
    return first


def parse_nginx_json(rec: dict[str, Any]) -> Fields:
    """NGINX ``log_format ... escape=json`` records, keyed by NGINX variable names."""
    ts = _first(rec, "msec", "time_iso8601", "time_local", "timestamp", "time", "@timestamp")
    fields: Fields = {
        "timestamp": parse_time(ts, "time (msec, time_iso8601 or time_local)"),
        "client_address": _address(_first(rec, "remote_addr", "client_ip", "http_x_forwarded_for")),
        "client_id": none_if_dash(_first(rec, "consumer", "http_x_consumer_id", "remote_user")),
        "api_key_id": none_if_dash(_first(rec, "api_key_id", "http_x_api_key_id")),
        "http_response_status_code": _status(_first(rec, "status")),
        "response_bytes": to_int(_first(rec, "body_bytes_sent", "bytes_sent"), "body_bytes_sent"),
        "request_bytes": to_int(_first(rec, "request_length"), "request_length"),
        "duration_ms": to_float(_first(rec, "request_time"), "request_time", 1000.0),
        "upstream_duration_ms": to_float(
            _first(rec, "upstream_response_time"), "upstream_response_time", 1000.0
        ),
        "user_agent": _first(rec, "http_user_agent", "user_agent"),
        "request_id": _first(rec, "request_id", "http_x_request_id"),
        "upstream_service": _first(
            rec, "upstream_service", "proxy_host", "upstream_addr", "upstream"
        ),
        "cache_status": _first(rec, "upstream_cache_status"),
    }
    method = _first(rec, "request_method")
    uri = _first(rec, "request_uri")
    if method and uri:
        fields.update(_request_fields(method, uri))
    elif method and _first(rec, "uri"):
        target = rec["uri"] + (f"?{rec['args']}" if none_if_dash(rec.get("args")) else "")
        fields.update(_request_fields(method, target))
    elif _first(rec, "request"):
        fields.update(_request_line(rec["request"]))
    else:
        raise RejectError("missing request (request, or request_method with request_uri/uri)")
    return fields


def _obj(rec: dict[str, Any], key: str) -> dict[str, Any]:
    v = rec.get(key)
    return v if isinstance(v, dict) else {}


def parse_kong(rec: dict[str, Any]) -> Fields:
    """Kong ``http-log`` plugin records (one object; arrays are split by the reader)."""
    req = rec.get("request")
    resp = rec.get("response")
    if not isinstance(req, dict) or not isinstance(resp, dict):
        raise RejectError("missing request or response object")
    lat = _obj(rec, "latencies")
    headers = {str(k).lower(): v for k, v in (req.get("headers") or {}).items()}
    resp_headers = {str(k).lower(): v for k, v in (resp.get("headers") or {}).items()}
    consumer = _obj(rec, "consumer")
    entity = _obj(rec, "authenticated_entity")
    service = _obj(rec, "service")
    target = req.get("uri") or req.get("url")
    method = req.get("method")
    if not target or not method:
        raise RejectError("missing request.method or request.uri")
    ua = headers.get("user-agent")
    fields: Fields = {
        "timestamp": parse_time(rec.get("started_at"), "started_at"),
        "request_id": req.get("id")
        or headers.get("x-request-id")
        or resp_headers.get("x-kong-request-id"),
        "client_id": _first(consumer, "username", "custom_id", "id"),
        "api_key_id": entity.get("id"),
        "client_address": rec.get("client_ip"),
        "user_agent": ua[0] if isinstance(ua, list) else ua,
        "http_response_status_code": _status(resp.get("status")),
        "duration_ms": to_float(lat.get("request"), "latencies.request"),
        "upstream_duration_ms": to_float(lat.get("proxy"), "latencies.proxy"),
        "request_bytes": to_int(req.get("size"), "request.size"),
        "response_bytes": to_int(resp.get("size"), "response.size"),
        "upstream_service": service.get("name") or service.get("host"),
        "cache_status": resp_headers.get("x-cache-status"),
    }
    if fields["upstream_duration_ms"] is not None and fields["upstream_duration_ms"] < 0:
        fields["upstream_duration_ms"] = None  # Kong logs -1 when no upstream was reached
    fields.update(_request_fields(method, target))
    return fields


def parse_envoy(rec: dict[str, Any]) -> Fields:
    """Envoy JSON access logs (``json_format``), with the key names of Envoy's,
    Contour's and Istio's documented dictionaries."""
    ts = _first(rec, "start_time", "@timestamp", "timestamp", "request_start_time")
    method = _first(rec, "method", "request_method")
    path = _first(rec, "path", "x_envoy_original_path", "request_path")
    missing = [n for n, v in (("start_time", ts), ("method", method), ("path", path)) if v is None]
    if missing:
        raise RejectError(f"missing {', '.join(missing)} (not an HTTP access log record?)")
    fields: Fields = {
        "timestamp": parse_time(ts, "start_time"),
        "request_id": _first(rec, "request_id", "x_request_id"),
        "client_id": _first(rec, "consumer", "x_consumer_id"),
        "api_key_id": _first(rec, "api_key_id"),
        "client_address": _address(
            _first(
                rec,
                "x_forwarded_for",
                "forwarded_for",
                "downstream_remote_address",
                "remote_address",
            )
        ),
        "user_agent": _first(rec, "user_agent", "user-agent"),
        "http_response_status_code": _status(_first(rec, "response_code", "status")),
        "duration_ms": to_float(_first(rec, "duration", "request_time"), "duration"),
        "upstream_duration_ms": to_float(
            _first(rec, "upstream_service_time"), "upstream_service_time"
        ),
        "request_bytes": to_int(_first(rec, "bytes_received"), "bytes_received"),
        "response_bytes": to_int(_first(rec, "bytes_sent"), "bytes_sent"),
        "upstream_service": _first(rec, "upstream_cluster", "upstream_host"),
        "cache_status": _first(rec, "cache_status"),
    }
    fields.update(_request_fields(str(method), str(path)))
    return fields


ADAPTERS: dict[str, Callable[[Any], Fields]] = {
    "combined": parse_combined,
    "nginx-json": parse_nginx_json,
    "kong": parse_kong,
    "envoy": parse_envoy,
}
JSON_FORMATS = frozenset({"nginx-json", "kong", "envoy"})
