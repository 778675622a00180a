"""Log variables -> contract fields, defined once for every format.

Every format, text or JSON, is first read into a dict of *variables* named as
NGINX names them (``remote_addr``, ``time_local``, ``request``, ``status``,
``http_user_agent``, ...); Apache directives, HAProxy and Envoy operators and
the JSON logs of Caddy, Traefik or a load balancer are renamed to that
vocabulary by their format definition (``formats.py``). ``SOURCES`` then says,
per contract field, which variables may carry it, in order of preference, and
how each is converted. The per-record parser (``fields_from_vars``) and the
columnar fast path (``fast.py``) both read this one table, so they cannot
disagree about what a variable means.

Variables no contract field takes are kept in the event's ``attributes`` map
(``http_referer``, ``server_name``, ``http_x_forwarded_for``, ...).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

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
    "ATTRIBUTE_EXCLUDE",
    "ROUTE_VAR",
    "SOURCES",
    "Source",
    "address",
    "attributes_of",
    "fields_from_vars",
    "haproxy_time",
    "request_fields",
    "secret_id",
    "unescape",
]

Fields = dict[str, Any]
Kind = Literal["str", "int", "float", "status", "time", "epoch", "haproxy_time", "addr", "secret"]


@dataclass(frozen=True)
class Source:
    """One variable that can carry a contract field.

    ``scale`` multiplies numbers (seconds -> ms); ``neg_none`` reads a negative
    number as "not applicable" (HAProxy, Envoy and load balancers log -1 when no
    upstream answered) instead of rejecting the record.
    """

    var: str
    kind: Kind
    scale: float = 1.0
    neg_none: bool = False


def _s(var: str, kind: Kind = "str", scale: float = 1.0, neg_none: bool = False) -> Source:
    return Source(var, kind, scale, neg_none)


# contract field -> variables that may carry it, first present wins
SOURCES: dict[str, tuple[Source, ...]] = {
    "timestamp": (
        _s("msec", "epoch"),
        _s("time_iso8601", "time"),
        _s("time_local", "time"),
        _s("time_haproxy", "haproxy_time"),
        _s("timestamp", "time"),
        _s("time", "time"),
        _s("@timestamp", "time"),
    ),
    "client_address": (
        _s("remote_addr", "addr"),
        _s("client_ip", "addr"),
        _s("http_x_forwarded_for", "addr"),
    ),
    "client_id": (
        _s("gw_client_id"),
        _s("consumer"),
        _s("http_x_consumer_id"),
        _s("remote_user"),
    ),
    "api_key_id": (
        _s("gw_api_key_id"),
        _s("api_key_id"),
        _s("http_x_api_key_id"),
        # the key itself is never stored: its keyed hash stands in as the key's id
        _s("http_x_api_key", "secret"),
        _s("http_apikey", "secret"),
    ),
    "http_response_status_code": (_s("status", "status"),),
    "response_bytes": (_s("body_bytes_sent", "int"), _s("bytes_sent", "int")),
    "request_bytes": (_s("request_length", "int"),),
    "duration_ms": (
        _s("request_time", "float", 1000.0),
        _s("request_time_ms", "float", 1.0, True),
        _s("request_time_us", "float", 0.001),
    ),
    "upstream_duration_ms": (
        _s("upstream_response_time", "float", 1000.0),
        _s("upstream_response_time_s", "float", 1000.0, True),
        _s("upstream_response_time_ms", "float", 1.0, True),
    ),
    "user_agent": (_s("http_user_agent"), _s("user_agent")),
    "request_id": (_s("gw_request_id"), _s("request_id"), _s("http_x_request_id")),
    "upstream_service": (
        _s("gw_service"),
        _s("upstream_service"),
        _s("proxy_host"),
        _s("upstream_addr"),
        _s("upstream"),
    ),
    "cache_status": (_s("upstream_cache_status"),),
    # what a gatewise data plane decided (gateway/dataplane: the NGINX + Lua access log)
    "ratelimit_decision": (_s("gw_decision"),),
    "auth_result": (_s("gw_auth"),),
    "policy_version": (_s("gw_policy_version"),),
    "model_version": (_s("gw_model_version"),),
    "model_score": (_s("gw_score", "float"),),
    "tier": (_s("gw_tier"),),
    "region": (_s("gw_region"),),
    "device_type": (_s("gw_device_type"),),
}
# the route template a gateway matched (``gw_route``) wins over the one guessed from the path
ROUTE_VAR = "gw_route"
# the request itself: request_method + request_uri, request_method + uri (+ args), or request
REQUEST_VARS = ("request", "request_method", "request_uri", "uri", "args")
# variables that never become attributes: those a contract field takes, and the
# placeholders of a format (``_`` and the ident field of the common log format);
# X-Forwarded-For stays an attribute even when it only backs up remote_addr
ATTRIBUTE_EXCLUDE = frozenset(
    {s.var for srcs in SOURCES.values() for s in srcs} - {"http_x_forwarded_for"}
) | frozenset({*REQUEST_VARS, ROUTE_VAR, "_", "ident"})

# attribute names whose values are credentials: stored as a hash, never in clear
SECRET_NAME = re.compile(r"authorization|api_?key|apikey|token|secret|passw|cookie|session", re.I)


def secret_id(v: str) -> str:
    """A stable, non-reversible id for a credential (the same key gives the same id)."""
    import hashlib

    return "h:" + hashlib.blake2b(v.encode(), digest_size=8, person=b"gatewise-key").hexdigest()


_ESCAPE = re.compile(r"\\(x[0-9A-Fa-f]{2}|.)", re.S)
_SIMPLE = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}


def _unescape_one(m: re.Match[str]) -> str:
    s = m.group(1)
    if s[0] == "x" and len(s) == 3:
        return f"\x00{s[1:]}"  # marker; bytes are reassembled below
    return _SIMPLE.get(s, "\\" + s)


def unescape(s: str) -> str:
    """Undo a server's log escaping: NGINX writes ``"`` and non-ASCII bytes as
    ``\\x22``/``\\xC3\\xA9`` (UTF-8 bytes, reassembled here); Apache writes ``\\"``,
    ``\\\\`` and ``\\xhh``."""
    if "\\" not in s:
        return s
    out = _ESCAPE.sub(_unescape_one, s)
    if "\x00" not in out:
        return out
    parts = out.split("\x00")
    raw = bytearray(parts[0].encode())
    for p in parts[1:]:
        raw.append(int(p[:2], 16))
        raw += p[2:].encode()
    return raw.decode("utf-8", errors="replace")


def address(v: Any) -> str | None:
    """First address of an X-Forwarded-For list, without a port."""
    v = none_if_dash(v)
    if v is None:
        return None
    first = str(v).split(",")[0].strip()
    if first.startswith("["):  # [v6]:port
        return first[1 : first.find("]")]
    if first.count(":") == 1:  # v4:port
        return first.split(":")[0]
    return first or None


def haproxy_time(v: str) -> Any:
    """``06/Feb/2009:12:14:14.655`` (HAProxy's accept date: local time, no zone,
    read as UTC) -> aware UTC datetime."""
    head, _, ms = v.partition(".")
    if not ms.isdigit():
        raise RejectError(f"bad timestamp {v[:40]!r}")
    from datetime import timedelta

    return parse_clf_time(head + " +0000") + timedelta(milliseconds=int(ms[:3].ljust(3, "0")))


def convert(src: Source, v: Any) -> Any:
    """One variable's value (not a dash) -> the field's value; RejectError names it."""
    k = src.kind
    if k == "str":
        return str(v)
    if k == "int":
        return to_int(v, src.var)
    if k == "float":
        x = to_float(v, src.var, src.scale)
        return None if (src.neg_none and x is not None and x < 0) else x
    if k == "status":
        code = to_int(v, src.var, required=True)
        assert code is not None
        if code == -1:
            raise RejectError("status -1: the client left before any response was sent")
        if not 100 <= code <= 599:
            raise RejectError(f"status {code} is not an HTTP status code")
        return code
    if k in ("time", "epoch"):
        return parse_time(v, src.var)
    if k == "haproxy_time":
        return haproxy_time(str(v))
    if k == "addr":
        return address(v)
    if k == "secret":
        return secret_id(str(v))
    raise AssertionError(k)


def _request_target(method: str, target: str) -> Fields:
    path, query = split_target(target)
    return {
        "http_request_method": method_or_other(method),
        "url_path": path,
        "url_query": query,
        "http_route": route_template(path),
    }


REQUEST_LINE = re.compile(r"^([A-Za-z]+) (\S+)(?: HTTP/\d(?:\.\d)?)?$")


def request_line(line: str | None) -> Fields:
    """``GET /x?y HTTP/1.1`` -> method/path/query/route; anything else (probes,
    TLS bytes sent to a plain port) is kept as method ``_OTHER`` with the raw
    text as its path, so such requests stay visible rather than dropped."""
    m = REQUEST_LINE.match(line or "")
    if m:
        return _request_target(m.group(1), m.group(2))
    return {
        "http_request_method": "_OTHER",
        "url_path": (line or "")[:2048],
        "url_query": None,
        "http_route": "_OTHER",
    }


def request_fields(rec: dict[str, Any]) -> Fields:
    method = none_if_dash(rec.get("request_method"))
    uri = none_if_dash(rec.get("request_uri"))
    if method and uri:
        return _request_target(str(method), str(uri))
    path = none_if_dash(rec.get("uri"))
    if method and path:
        args = none_if_dash(rec.get("args"))
        return _request_target(str(method), f"{path}?{args}" if args else str(path))
    if "request" in rec and rec["request"] is not None:
        # "-" or "": a connection closed before a request line (a 400 or 408): kept as _OTHER
        return request_line(str(rec["request"]))
    raise RejectError("missing request (request, or request_method with request_uri/uri)")


def attributes_of(rec: dict[str, Any]) -> dict[str, str] | None:
    out = {}
    for k, v in sorted(rec.items()):  # name order: the same map whatever the log's key order
        if k in ATTRIBUTE_EXCLUDE or none_if_dash(v) is None:
            continue
        text = v if isinstance(v, str) else json.dumps(v) if isinstance(v, dict | list) else str(v)
        out[k] = secret_id(text) if SECRET_NAME.search(k) else text
    return out or None


def fields_from_vars(rec: dict[str, Any]) -> Fields:
    """Variables of one record (already unescaped) -> contract fields."""
    out: Fields = {}
    for field, sources in SOURCES.items():
        value = None
        for src in sources:
            v = none_if_dash(rec.get(src.var))
            if v is not None:
                value = convert(src, v)
                break
        out[field] = value
    if out["timestamp"] is None:
        raise RejectError("missing time (msec, time_iso8601 or time_local)")
    if out["http_response_status_code"] is None:
        raise RejectError("missing status")
    out.update(request_fields(rec))
    route = none_if_dash(rec.get(ROUTE_VAR))
    if route is not None:
        out["http_route"] = str(route)
    out["attributes"] = attributes_of(rec)
    return out
