"""Log format definitions: the ones users already have, compiled to one regex each.

A text format is a regular expression whose named groups are *variables* in
NGINX's vocabulary (``fields.py`` maps them to the contract). It is written by
hand for a few fixed formats (HAProxy, AWS ALB) or compiled from the definition
the user already has in their server's config:

- ``nginx:'<log_format string>'`` -- NGINX ``log_format`` (``$var`` / ``${var}``)
- ``apache:'<LogFormat string>'`` -- Apache ``LogFormat`` (``%h %l %u %t "%r" ...``)
- ``envoy:'<format string>'`` -- Envoy's text access log (``%REQ(USER-AGENT)%`` ...)
- ``haproxy:'<log-format string>'`` -- HAProxy ``log-format`` (``%ci:%cp [%tr] ...``)

``resolve("nginx:main")``, ``resolve("apache:combined")`` and the plain names
(``combined``, ``haproxy``, ``alb``...) pick the built-in definitions;
``from_nginx_conf(path, name)`` reads a ``log_format`` from a config file.
JSON formats name an adapter that turns one object into variables.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

__all__ = [
    "BUILTIN",
    "LogFormat",
    "apache_format",
    "envoy_format",
    "from_nginx_conf",
    "haproxy_format",
    "nginx_format",
    "resolve",
]

QUOTED = r'(?:[^"\\]|\\.)*'
_TIME_LOCAL = r"\d{2}/[A-Za-z]{3}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}"
_LIST = r"\S+(?:(?:, | : )\S+)*"  # NGINX upstream_* lists: "0.010, 0.002 : 0.001"
# unquoted variables whose values have a known shape (anything else: \S+)
_UNQUOTED = {
    "time_local": _TIME_LOCAL,
    "status": r"-1|\d{3}",  # HAProxy logs -1 when the client left before any response
    "request": r"[^\"]+?",
    "upstream_response_time": _LIST,
    "upstream_connect_time": _LIST,
    "upstream_header_time": _LIST,
    "upstream_status": _LIST,
    "upstream_addr": _LIST,
    "upstream_bytes_received": _LIST,
    "time_haproxy": r"\d{2}/[A-Za-z]{3}/\d{4}:\d{2}:\d{2}:\d{2}\.\d+",
    "args": r"[^\s\"]*",
    "uri": r"[^\s\"?]*",
}


@dataclass(frozen=True)
class LogFormat:
    """One log format.

    Text formats have ``regex`` (named groups = variables; ``_v0``... groups are
    renamed through ``names`` so that one variable may appear twice); JSON
    formats have ``json_adapter`` (one object -> variables or contract fields).
    """

    name: str
    definition: str = ""
    regex: str | None = None
    names: tuple[str, ...] = ()  # variable of each capture group, in order
    json_adapter: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    # JSON records whose keys are variables (after this renaming): the columnar fast path
    # reads them; None for JSON formats with nested records (their adapter only)
    json_vars: dict[str, str] | None = None
    # what the user pastes into their server's config to log this format
    config_line: str = ""
    # what this format cannot tell the models
    lacks: str = ""
    aliases: tuple[str, ...] = field(default=())

    @property
    def is_json(self) -> bool:
        return self.json_adapter is not None

    @cached_property
    def fast_regex(self) -> str:
        """The regex for the fast path: quoted values without escapes (a line with a
        backslash is left to the per-record parser anyway), which RE2 matches without
        backtracking alternatives; on the lines it matches, the groups are the same."""
        assert self.regex is not None, f"{self.name} is not a text format"
        return self.regex.replace(QUOTED, r'[^"\\]*')

    @cached_property
    def compiled(self) -> re.Pattern[str]:
        assert self.regex is not None, f"{self.name} is not a text format"
        return re.compile(self.regex)

    def variables(self, line: str) -> dict[str, str] | None:
        """The line's variables (still escaped), or None when it does not match."""
        m = self.compiled.match(line)
        if m is None:
            return None
        out: dict[str, str] = {}
        for var, val in zip(self.names, m.groups(), strict=True):
            if val is not None and var not in out:
                out[var] = val
        return out


class FormatError(ValueError):
    """A format definition that cannot be compiled; the message names the part."""


def _build(parts: list[tuple[str, str | None]]) -> tuple[str, tuple[str, ...]]:
    """[(regex, variable or None)] -> one anchored regex with groups _v0.. and their names."""
    out = ["^"]
    names: list[str] = []
    for rx, var in parts:
        if var is None:
            out.append(rx)
        else:
            out.append(f"(?P<_v{len(names)}>{rx})")
            names.append(var)
    out.append(r"\s*$")
    return "".join(out), tuple(names)


def _value_regex(var: str, template: str, end: int, start: int) -> str:
    """Regex of a variable from its context: inside double quotes, anything but an
    unescaped quote; else the variable's shape, or a run of non-spaces."""
    before = template[start - 1] if start > 0 else ""
    after = template[end] if end < len(template) else ""
    if before == '"' and after == '"':
        return QUOTED
    if before == "[" and after == "]" and var not in _UNQUOTED:
        return r"[^\]]*"
    return _UNQUOTED.get(var, r"\S+" if after in (" ", "") else r"[^\s" + re.escape(after) + "]+")


def _compile_template(
    name: str, template: str, token: re.Pattern[str], var_of: Callable[[re.Match[str]], str]
) -> LogFormat:
    parts: list[tuple[str, str | None]] = []
    pos = 0
    for m in token.finditer(template):
        if m.start() > pos:
            parts.append((re.escape(template[pos : m.start()]), None))
        var = var_of(m)
        rx = _value_regex(var, template, m.end(), m.start())
        if var == "time_local" and template[m.start() - 1 : m.start()] != "[":
            rx = _TIME_LOCAL
        parts.append((rx, var))
        pos = m.end()
    if pos < len(template):
        parts.append((re.escape(template[pos:]), None))
    if not any(v for _, v in parts):
        raise FormatError(f"{name}: the definition has no variables: {template!r}")
    regex, names = _build(parts)
    # a literal space in the definition matches runs of spaces (HAProxy pads, syslog pads days)
    regex = regex.replace(r"\ ", " +")
    return LogFormat(name=name, definition=template, regex=regex, names=names)


# -- NGINX -----------------------------------------------------------------------

_NGINX_VAR = re.compile(r"\$(?:\{([A-Za-z0-9_]+)\}|([A-Za-z0-9_]+))")


def nginx_format(template: str, name: str | None = None) -> LogFormat:
    """An NGINX ``log_format`` string (without ``escape=``) -> LogFormat."""
    fmt = _compile_template(
        name or f"nginx:{template}",
        template,
        _NGINX_VAR,
        lambda m: (m.group(1) or m.group(2)).lower(),
    )
    return _with(fmt, config_line=f"log_format gatewise '{template}';")


_CONF_LOG_FORMAT = re.compile(
    r"log_format\s+([A-Za-z0-9_]+)\s+(?:escape=(\w+)\s+)?((?:'[^']*'|\"[^\"]*\"|\s)+);", re.S
)
_JSON_PAIR = re.compile(r'"([^"]+)"\s*:\s*"?\$\{?([A-Za-z0-9_]+)\}?"?')


def nginx_json_format(template: str, name: str) -> LogFormat:
    """An NGINX ``escape=json`` log_format whose keys are the user's own: each key whose
    value is one ``$variable`` is renamed to that variable, so any key names work."""
    from telemetry.ingest.fields import fields_from_vars

    rename = {key: var.lower() for key, var in _JSON_PAIR.findall(template)}
    if not rename:
        raise FormatError(f'{name}: no "key": "$variable" pairs in {template[:80]!r}')

    def adapter(rec: dict[str, Any]) -> dict[str, Any]:
        return fields_from_vars({rename.get(k, k): v for k, v in rec.items()})

    return LogFormat(
        name=name,
        definition=template,
        json_adapter=adapter,
        json_vars=rename,
        config_line=f"log_format gatewise escape=json '{template}';",
    )


def from_nginx_conf(conf: Path, name: str) -> LogFormat:
    """The ``log_format NAME`` of an NGINX config file (quoted pieces joined)."""
    try:
        text = conf.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise FormatError(f"--nginx-conf {conf}: {exc.strerror}") from None
    text = re.sub(r"(?m)#.*$", "", text)
    found = {m.group(1): (m.group(2), m.group(3)) for m in _CONF_LOG_FORMAT.finditer(text)}
    if name not in found:
        if name in ("combined", "main"):
            return resolve(f"nginx:{name}")
        have = ", ".join(sorted(found)) or "none"
        raise FormatError(f"--log-format {name!r} is not defined in {conf} (it defines: {have})")
    escape, body = found[name]
    pieces = re.findall(r"'([^']*)'|\"([^\"]*)\"", body)
    template = "".join(a or b for a, b in pieces)
    if escape == "json" or template.lstrip().startswith("{"):
        return nginx_json_format(template, f"nginx:{name}")
    return nginx_format(template, name=f"nginx:{name}")


# -- Apache ----------------------------------------------------------------------

_APACHE_TOKEN = re.compile(r"%[<>]?(?:\{([^}]*)\})?([a-zA-Z%])")
_APACHE_SIMPLE = {
    "h": "remote_addr",
    "a": "remote_addr",
    "A": "server_addr",
    "l": "ident",
    "u": "remote_user",
    "t": "time_local",
    "r": "request",
    "s": "status",
    "b": "body_bytes_sent",
    "B": "body_bytes_sent",
    "D": "request_time_us",
    "T": "request_time_int",
    "I": "request_length",
    "O": "bytes_sent",
    "S": "bytes_transferred",
    "v": "server_name",
    "V": "server_name",
    "p": "server_port",
    "P": "pid",
    "H": "server_protocol",
    "m": "request_method",
    "U": "uri",
    "q": "args",
    "X": "connection_status",
    "k": "keepalive_requests",
    "L": "log_id",
    "R": "handler",
    "f": "filename",
}


def _header_var(prefix: str, header: str) -> str:
    return prefix + re.sub(r"[^a-z0-9]", "_", header.lower())


def _apache_var(m: re.Match[str]) -> str:
    arg, d = m.group(1), m.group(2)
    if d == "%":
        return "_"
    if arg is not None:
        if d == "i":
            return _header_var("http_", arg)
        if d == "o":
            return _header_var("sent_http_", arg)
        if d == "e":
            return "request_id" if arg == "UNIQUE_ID" else _header_var("env_", arg)
        if d == "C":
            return _header_var("cookie_", arg)
        if d == "T":
            return {"ms": "request_time_ms", "us": "request_time_us"}.get(arg, "request_time_int")
        if d == "t":
            return "time_custom"
        if d == "a" and arg == "c":
            return "peer_addr"
        if d == "n":
            return _header_var("note_", arg)
    if d not in _APACHE_SIMPLE:
        raise FormatError(f"apache: unknown directive %{d} in the LogFormat")
    return _APACHE_SIMPLE[d]


def apache_format(template: str, name: str | None = None) -> LogFormat:
    """An Apache ``LogFormat`` string (as in the config, ``\\"`` for quotes) -> LogFormat."""
    template = template.replace('\\"', '"')
    # %t logs "[10/Oct/2000:13:55:36 -0700]": the brackets are part of the value
    template = re.sub(r"(?<!\[)%t", "[%t]", template)
    template = template.replace("%U%q", "%U?%q")  # %q carries its own "?": split it off
    fmt = _compile_template(name or f"apache:{template}", template, _APACHE_TOKEN, _apache_var)
    if "?" in template and "%U?%q" in template:
        fmt = _with(fmt, regex=fmt.regex.replace(r"\?(?P<", r"\??(?P<") if fmt.regex else None)
    return _with(fmt, config_line=f'LogFormat "{template}" gatewise')


# -- Envoy -----------------------------------------------------------------------

_ENVOY_TOKEN = re.compile(r"%([A-Z_0-9]+)(?:\(([^)]*)\))?(?::\d+)?%")
_ENVOY_SIMPLE = {
    "START_TIME": "time_iso8601",
    "PROTOCOL": "server_protocol",
    "RESPONSE_CODE": "status",
    "RESPONSE_FLAGS": "response_flags",
    "BYTES_RECEIVED": "request_length",
    "BYTES_SENT": "body_bytes_sent",
    "DURATION": "request_time_ms",
    "UPSTREAM_HOST": "upstream_addr",
    "UPSTREAM_CLUSTER": "upstream_service",
    "DOWNSTREAM_REMOTE_ADDRESS": "remote_addr",
    "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": "remote_addr",
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS": "peer_addr",
    "REQUEST_DURATION": "request_duration_ms",
    "RESPONSE_DURATION": "response_duration_ms",
}
_ENVOY_REQ = {
    ":METHOD": "request_method",
    ":PATH": "request_uri",
    "X-ENVOY-ORIGINAL-PATH?:PATH": "request_uri",
    ":AUTHORITY": "host",
}


def _envoy_var(m: re.Match[str]) -> str:
    op, arg = m.group(1), m.group(2)
    if op in ("REQ", "RESP") and arg:
        if op == "REQ" and arg.upper() in _ENVOY_REQ:
            return _ENVOY_REQ[arg.upper()]
        if op == "RESP" and arg.upper() == "X-ENVOY-UPSTREAM-SERVICE-TIME":
            return "upstream_response_time_ms"
        return _header_var("http_" if op == "REQ" else "sent_http_", arg.split("?")[0])
    return _ENVOY_SIMPLE.get(op, op.lower())


def envoy_format(template: str, name: str | None = None) -> LogFormat:
    """An Envoy text access log format string -> LogFormat."""
    template = template.rstrip("\n").replace("\\n", "").rstrip()
    fmt = _compile_template(name or f"envoy:{template}", template, _ENVOY_TOKEN, _envoy_var)
    return _with(fmt, config_line=f'text_format_source: {{inline_string: "{template}\\n"}}')


# -- HAProxy ---------------------------------------------------------------------

_HAPROXY_TOKEN = re.compile(r"%(?:\{[^}]*\})?([a-zA-Z]+)")
_HAPROXY_VARS = {
    "ci": "remote_addr",
    "cp": "remote_port",
    "tr": "time_haproxy",
    "t": "time_haproxy",
    "ft": "frontend",
    "f": "frontend",
    "b": "upstream_service",
    "s": "server",
    "TR": "request_header_time_ms",
    "Tw": "queue_time_ms",
    "Tc": "connect_time_ms",
    "Tr": "upstream_response_time_ms",
    "Ta": "request_time_ms",
    "Tt": "session_time_ms",
    "ST": "status",
    "B": "body_bytes_sent",
    "U": "request_length",
    "CC": "captured_request_cookie",
    "CS": "captured_response_cookie",
    "tsc": "termination_state",
    "ts": "termination_state",
    "ac": "actconn",
    "fc": "feconn",
    "bc": "beconn",
    "sc": "srv_conn",
    "rc": "retries",
    "sq": "srv_queue",
    "bq": "backend_queue",
    "hr": "captured_request_headers",
    "hs": "captured_response_headers",
    "r": "request",
    "HM": "request_method",
    "HU": "request_uri",
    "ID": "request_id",
}
# syslog header HAProxy writes before the line unless told "format raw"
_SYSLOG = r"(?:<\d+>\d? ?)?(?:[A-Z][a-z]{2} +\d{1,2} \d{2}:\d{2}:\d{2} (?:\S+ )?|\S+T\S+ \S+ )?(?:\S+?(?:\[\d+\])?: )?"


def haproxy_format(template: str, name: str | None = None) -> LogFormat:
    """An HAProxy ``log-format`` string -> LogFormat (a syslog header may precede)."""

    def var_of(m: re.Match[str]) -> str:
        op = m.group(1)
        if op not in _HAPROXY_VARS:
            return op.lower()
        return _HAPROXY_VARS[op]

    # %{+Q}r is the quoted request: make the quotes literal so the value is QUOTED
    t = re.sub(r"%\{\+Q\}(\w+)", r'"%\1"', template)
    fmt = _compile_template(name or f"haproxy:{template}", t, _HAPROXY_TOKEN, var_of)
    assert fmt.regex is not None
    regex = "^" + _SYSLOG + fmt.regex[1:]
    # captured headers (%hr %hs, "{...}") are only logged when captures are configured
    for var in ("captured_request_headers", "captured_response_headers"):
        if var in fmt.names:
            i = fmt.names.index(var)
            regex = regex.replace(f"(?P<_v{i}>\\S+) +", f"(?:\\{{(?P<_v{i}>[^}}]*)\\}} +)?")
    return _with(fmt, regex=regex, config_line=f'log-format "{template}"')


def _with(fmt: LogFormat, **kw: Any) -> LogFormat:
    from dataclasses import replace

    return replace(fmt, **kw)


# -- built-ins --------------------------------------------------------------------

NGINX_MAIN = (
    '$remote_addr - $remote_user [$time_local] "$request" '
    '$status $body_bytes_sent "$http_referer" '
    '"$http_user_agent" "$http_x_forwarded_for"'
)
NGINX_COMBINED = (
    '$remote_addr - $remote_user [$time_local] "$request" '
    '$status $body_bytes_sent "$http_referer" "$http_user_agent"'
)
# what docs/ingest.md recommends to an NGINX user: everything the models use, ms timestamps
NGINX_GATEWISE = (
    '$msec $remote_addr "$remote_user" "$request" $status $body_bytes_sent $request_length '
    '$request_time "$upstream_response_time" "$http_user_agent" "$http_x_forwarded_for" '
    '$request_id "$http_x_consumer_id" "$http_x_api_key_id"'
)
APACHE_COMMON = '%h %l %u %t "%r" %>s %b'
APACHE_COMBINED = '%h %l %u %t "%r" %>s %O "%{Referer}i" "%{User-Agent}i"'
APACHE_VHOST_COMBINED = '%v:%p %h %l %u %t "%r" %>s %O "%{Referer}i" "%{User-Agent}i"'
HAPROXY_HTTPLOG = (
    "%ci:%cp [%tr] %ft %b/%s %TR/%Tw/%Tc/%Tr/%Ta %ST %B %CC %CS %tsc "
    "%ac/%fc/%bc/%sc/%rc %sq/%bq %hr %hs %{+Q}r"
)
ENVOY_DEFAULT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% "
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"'
)
# AWS Application Load Balancer access log entry (fields in the order AWS documents them;
# later fields AWS may append are accepted and ignored)
_ALB_FIELDS = [
    ("alb_type", r"\S+"),
    ("time_iso8601", r"\S+"),
    ("elb", r"\S+"),
    ("remote_addr", r"\S+"),
    ("upstream_addr", r"\S+"),
    ("request_processing_time", r"\S+"),
    ("upstream_response_time_s", r"\S+"),
    ("response_processing_time", r"\S+"),
    ("status", r"\d{3}|-"),
    ("target_status_code", r"\S+"),
    ("request_length", r"\S+"),
    ("bytes_sent", r"\S+"),
    ("request", f'"{QUOTED}"'),
    ("http_user_agent", f'"{QUOTED}"'),
    ("ssl_cipher", r"\S+"),
    ("ssl_protocol", r"\S+"),
    ("target_group_arn", r"\S+"),
    ("trace_id", f'"{QUOTED}"'),
]


def _alb() -> LogFormat:
    parts = []
    names = []
    for i, (var, rx) in enumerate(_ALB_FIELDS):
        if rx.startswith('"'):
            parts.append(f'"(?P<_v{i}>{QUOTED})"')
        else:
            parts.append(f"(?P<_v{i}>{rx})")
        names.append(var)
    regex = "^" + " ".join(parts) + r"(?: .*)?$"
    return LogFormat(
        name="alb",
        definition="AWS Application Load Balancer access log",
        regex=regex,
        names=tuple(names),
        config_line="(enable access logs on the load balancer: attribute access_logs.s3.enabled=true)",
        lacks="no consumer id; the client is the address; duration is the target's time only",
    )


def _json_formats() -> dict[str, LogFormat]:
    from telemetry.ingest import adapters

    return {
        "nginx-json": LogFormat(
            name="nginx-json",
            definition="NGINX log_format escape=json with variable names as keys",
            json_adapter=adapters.nginx_json_vars,
            json_vars={},
            config_line="see docs/ingest.md (log_format gatewise escape=json '{...}')",
        ),
        "kong": LogFormat(
            name="kong",
            definition="Kong http-log / file-log plugin",
            json_adapter=adapters.parse_kong,
            config_line="plugins: - name: file-log (or http-log) config: {path: /var/log/kong.json}",
        ),
        "envoy-json": LogFormat(
            name="envoy-json",
            definition="Envoy json_format access log (Envoy/Contour/Istio keys)",
            json_adapter=adapters.parse_envoy,
            config_line="access_log: typed_config: log_format: json_format: {...} (docs/ingest.md)",
            aliases=("envoy",),
        ),
        "caddy": LogFormat(
            name="caddy",
            definition="Caddy structured access log (format json)",
            json_adapter=adapters.caddy_vars,
            config_line="log { output file /var/log/caddy/access.log\n  format json }",
            lacks="no consumer id unless user_id is set by an auth module",
        ),
        "traefik": LogFormat(
            name="traefik",
            definition="Traefik access log, format json",
            json_adapter=adapters.traefik_vars,
            config_line="accessLog: {format: json, fields: {headers: {defaultMode: keep}}}",
            lacks="User-Agent only when headers are kept (fields.headers)",
        ),
    }


def _builtins() -> dict[str, LogFormat]:
    fmts = {
        "nginx:main": _with(
            nginx_format(NGINX_MAIN, "nginx:main"),
            config_line="(NGINX's default: log_format main in the stock nginx.conf)",
            lacks="no consumer id, latency or request id; the client is the address",
            aliases=("main", "nginx"),
        ),
        "nginx:gatewise": _with(
            nginx_format(NGINX_GATEWISE, "nginx:gatewise"),
            config_line=f"log_format gatewise '{NGINX_GATEWISE}';",
            lacks="the consumer only if an auth module sets X-Consumer-Id (else the address)",
        ),
        "combined": _with(
            nginx_format(NGINX_COMBINED, "combined"),
            config_line="access_log /var/log/nginx/access.log combined;  (Apache: CustomLog ... combined)",
            lacks="no consumer id, latency or request id; the client is the address",
            aliases=("nginx:combined", "apache:combined"),
        ),
        "apache:common": _with(
            apache_format(APACHE_COMMON, "apache:common"),
            lacks="no user agent, consumer id, latency or request id",
            aliases=("common",),
        ),
        "apache:vhost_combined": _with(
            apache_format(APACHE_VHOST_COMBINED, "apache:vhost_combined"),
            lacks="no consumer id, latency or request id; the client is the address",
            aliases=("vhost_combined",),
        ),
        "haproxy": _with(
            haproxy_format(HAPROXY_HTTPLOG, "haproxy"),
            config_line="option httplog   (log stdout format raw local0, or syslog)",
            lacks="no user agent unless captured (capture request header User-Agent len 256)",
            aliases=("haproxy:httplog",),
        ),
        "envoy:default": _with(
            envoy_format(ENVOY_DEFAULT, "envoy:default"),
            config_line="(Envoy's default text access log: no format given)",
            lacks="no consumer id; the client is X-Forwarded-For's first address",
            aliases=("envoy-text",),
        ),
        "alb": _alb(),
    }
    fmts.update(_json_formats())
    return fmts


BUILTIN: dict[str, LogFormat] = {}


def builtins() -> dict[str, LogFormat]:
    if not BUILTIN:
        BUILTIN.update(_builtins())
    return BUILTIN


def _by_name(name: str) -> LogFormat | None:
    fmts = builtins()
    if name in fmts:
        return fmts[name]
    for f in fmts.values():
        if name in f.aliases:
            return f
    return None


_DEFINERS: dict[str, Callable[[str], LogFormat]] = {
    "nginx": nginx_format,
    "apache": apache_format,
    "envoy": envoy_format,
    "haproxy": haproxy_format,
}


def known_names() -> list[str]:
    return sorted(builtins())


def resolve(spec: str) -> LogFormat:
    """A format name (``combined``, ``nginx:main``) or definition (``nginx:'$remote_addr ...'``)."""
    spec = spec.strip()
    found = _by_name(spec)
    if found:
        return found
    kind, sep, body = spec.partition(":")
    if sep and kind in _DEFINERS:
        body = body.strip()
        if len(body) >= 2 and body[0] == body[-1] and body[0] in "'\"":
            body = body[1:-1]
        if not body:
            raise FormatError(f"--format {kind}: empty definition")
        try:
            return _DEFINERS[kind](body)
        except re.error as exc:
            raise FormatError(f"--format {kind}: cannot compile the definition: {exc}") from None
    raise FormatError(
        f"unknown format {spec!r}; use auto, a definition (nginx:'...', apache:'...', "
        f"envoy:'...', haproxy:'...') or one of {', '.join(known_names())}"
    )
