"""Adapters: one gateway log record -> the fields of one telemetry event.

Each adapter returns a dict of contract fields; ``request_id`` may be None
(the driver then derives one from the file and the record's byte offset) and
``client_id`` may be None (the driver falls back to the client address).
A record that cannot be mapped raises ``RejectError`` with the reason.
"""

from __future__ import annotations

from typing import Any

from telemetry.ingest.fields import address, fields_from_vars, request_fields
from telemetry.ingest.normalize import RejectError, parse_time, to_float, to_int

__all__ = ["caddy_vars", "nginx_json_vars", "parse_envoy", "parse_kong", "traefik_vars"]

Fields = dict[str, Any]


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
    fields.update(request_fields({"request_method": method, "request_uri": target}))
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
        "client_address": address(
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
    fields.update(request_fields({"request_method": str(method), "request_uri": str(path)}))
    return fields


def nginx_json_vars(rec: dict[str, Any]) -> Fields:
    """NGINX ``log_format ... escape=json`` records keyed by NGINX variable names
    (other keys become attributes)."""
    return fields_from_vars(rec)


def _header(headers: Any, name: str) -> Any:
    if not isinstance(headers, dict):
        return None
    for k, v in headers.items():
        if str(k).lower() == name:
            return v[0] if isinstance(v, list) and v else v
    return None


def caddy_vars(rec: dict[str, Any]) -> Fields:
    """Caddy's JSON access log (``log { format json }``): one ``http.log.access`` record."""
    req = rec.get("request")
    if not isinstance(req, dict):
        raise RejectError("missing request object (not a Caddy access log record?)")
    headers = req.get("headers")
    resp_headers = rec.get("resp_headers")
    v: dict[str, Any] = {
        "msec": rec.get("ts"),
        "remote_addr": req.get("client_ip") or req.get("remote_ip"),
        "remote_user": rec.get("user_id"),
        "request_method": req.get("method"),
        "request_uri": req.get("uri"),
        "status": rec.get("status"),
        "body_bytes_sent": rec.get("size"),
        "request_length": rec.get("bytes_read"),
        "request_time": rec.get("duration"),
        "http_user_agent": _header(headers, "user-agent"),
        "http_x_request_id": _header(headers, "x-request-id"),
        "http_x_forwarded_for": _header(headers, "x-forwarded-for"),
        "http_referer": _header(headers, "referer"),
        "host": req.get("host"),
        "server_protocol": req.get("proto"),
        "upstream_cache_status": _header(resp_headers, "x-cache-status"),
    }
    return fields_from_vars(v)


def traefik_vars(rec: dict[str, Any]) -> Fields:
    """Traefik's JSON access log: CLF-like keys, durations in nanoseconds, kept
    headers as ``request_<Name>``."""
    if "RequestMethod" not in rec and "DownstreamStatus" not in rec:
        raise RejectError("missing RequestMethod/DownstreamStatus (not a Traefik access log?)")

    def ns(key: str) -> Any:
        x = rec.get(key)
        return None if x is None else float(x) / 1e9

    user = rec.get("ClientUsername")
    v: dict[str, Any] = {
        "time_iso8601": rec.get("StartUTC") or rec.get("time"),
        "remote_addr": rec.get("ClientHost") or rec.get("ClientAddr"),
        "remote_user": None if user == "-" else user,
        "request_method": rec.get("RequestMethod"),
        "request_uri": rec.get("RequestPath"),
        "status": rec.get("DownstreamStatus"),
        "body_bytes_sent": rec.get("DownstreamContentSize"),
        "request_length": rec.get("RequestContentSize"),
        "request_time": ns("Duration"),
        "upstream_response_time": ns("OriginDuration") if rec.get("OriginStatus") else None,
        "upstream_service": rec.get("ServiceName"),
        "upstream_addr_url": rec.get("ServiceURL"),
        "router": rec.get("RouterName"),
        "host": rec.get("RequestHost"),
        "server_protocol": rec.get("RequestProtocol"),
        "http_user_agent": rec.get("request_User-Agent"),
        "http_x_request_id": rec.get("request_X-Request-Id"),
        "http_x_forwarded_for": rec.get("request_X-Forwarded-For"),
        "http_referer": rec.get("request_Referer"),
    }
    return fields_from_vars(v)
