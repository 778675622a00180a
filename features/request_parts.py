"""Which parts of a request the payload scanner reads, each tagged with where it was found.

It lives with the features because training must see what the gateway scores and nothing
else: ``scored`` drops from the training data the values the gateway never reads (plain
identifiers, opaque tokens, header values that conform to their grammar).

Every part, in its own context (``features.payload.in_context``): the path (decoded, ``..``
segments included), query and form values and keys, JSON string leaves and odd keys,
multipart fields and file names, headers and cookies. Headers get per-field handling: the
ones with a fixed grammar (``Accept``, ``Accept-Language``, dates, entity tags, addresses,
trace context, ...) are checked against it and need no model when they conform; a cookie is
split into its pairs; an ``Authorization`` header's parameters are read one by one, a bare
credential is not content; a User-Agent is judged as a User-Agent, a Referer as a Referer,
anything else as a header. Values that cannot carry an attack (plain identifiers, numbers,
long opaque tokens) are skipped, and a request's repeated values are scanned once.

Bodies are read in bounded chunks: a long value is split into overlapping windows of
``max_value_bytes``, JSON string literals are found by a scanner that needs no complete
document (a body cut by a limit, or malformed on purpose, is still read string by string),
and a text body is windowed. Nothing is silently dropped: when a budget (values, bytes) runs
out, the part left over is recorded as a gap, and the verdict for the request is
``unscanned`` with that reason unless an attack was already found.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl, unquote, unquote_plus

from config.gateway import ScanningSettings
from features.payload import cookie_pairs, in_context

__all__ = ["Extracted", "extract", "header_values", "query_pairs", "scored"]

_PLAIN = re.compile(r"^[A-Za-z0-9_\-.~]*$")
_PLAIN_PATH = re.compile(r"^[A-Za-z0-9_\-.~/]*$")
_NUMBER = re.compile(r"^-?\d+(\.\d+)?([eE][+-]?\d+)?$")
_TOKEN = re.compile(r"^[A-Za-z0-9_\-+/.]{16,}={0,2}$")
_JSON_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"(\s*:)?', re.S)
_OVERLAP = 64

# headers whose value is protocol, not content: never scanned
_SKIP = frozenset(
    {
        "content-length",
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "upgrade",
        "proxy-connection",
        "x-request-id",
    }
)
_QVALUE = r"(;\s*q=[01](\.\d{0,3})?)?"
_GRAMMARS = {
    # RFC 9110 lists; a value that conforms holds nothing but its grammar
    "accept": re.compile(
        r"^\s*([\w.+\-*]+/[\w.+\-*]+(\s*;\s*[\w.\-]+=(\"[\w.\-/ ]*\"|[\w.\-]+))*"
        r"\s*(,\s*|$))+$"
    ),
    "accept-language": re.compile(
        rf"^\s*((\*|[A-Za-z]{{1,8}}(-[A-Za-z0-9]{{1,8}})*){_QVALUE}\s*(,\s*|$))+$"
    ),
    "accept-encoding": re.compile(rf"^\s*(([\w\-*]+){_QVALUE}\s*(,\s*|$))+$"),
    "accept-charset": re.compile(rf"^\s*(([\w\-*]+){_QVALUE}\s*(,\s*|$))+$"),
    "cache-control": re.compile(r'^\s*([\w\-]+(=("[\w\-, ]*"|[\w\-]+))?\s*(,\s*|$))+$'),
    "pragma": re.compile(r"^\s*no-cache\s*$", re.I),
    "content-type": re.compile(
        r'^\s*[\w.+\-]+/[\w.+\-]+(\s*;\s*[\w.\-]+=("[\w.\-/=+ ]*"|[\w.\-/=+]+))*\s*$'
    ),
    "content-encoding": re.compile(r"^\s*[\w\-]+(\s*,\s*[\w\-]+)*\s*$"),
    "x-forwarded-for": re.compile(r"^\s*[0-9A-Fa-f:.\[\]]+(\s*,\s*[0-9A-Fa-f:.\[\]]+)*\s*$"),
    "x-real-ip": re.compile(r"^\s*[0-9A-Fa-f:.]+\s*$"),
    "x-forwarded-proto": re.compile(r"^\s*(https?|wss?)\s*$", re.I),
    "x-forwarded-port": re.compile(r"^\s*\d{1,5}\s*$"),
    "traceparent": re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"),
    "range": re.compile(r"^\s*bytes=\d*-\d*(\s*,\s*\d*-\d*)*\s*$"),
    "if-none-match": re.compile(r'^\s*(\*|(W/)?"[^"\\]*"(\s*,\s*(W/)?"[^"\\]*")*)\s*$'),
    "if-match": re.compile(r'^\s*(\*|(W/)?"[^"\\]*"(\s*,\s*(W/)?"[^"\\]*")*)\s*$'),
    "dnt": re.compile(r"^[01]$"),
    "upgrade-insecure-requests": re.compile(r"^1$"),
    "sec-fetch-site": re.compile(r"^[\w\-]+$"),
    "sec-fetch-mode": re.compile(r"^[\w\-]+$"),
    "sec-fetch-dest": re.compile(r"^[\w\-]+$"),
    "sec-fetch-user": re.compile(r"^\?[01]$"),
    "sec-ch-ua-mobile": re.compile(r"^\?[01]$"),
    "sec-ch-ua-platform": re.compile(r'^"[\w \-.]*"$'),
    "sec-ch-ua": re.compile(r'^\s*("[\w \-.;()]*";\s*v="[\d.]*"\s*(,\s*|$))+$'),
    "origin": re.compile(r"^(null|https?://[A-Za-z0-9\-.]+(:\d{1,5})?)$"),
    # RFC 8288 links: <URI-reference>; params (URI without quotes, brackets or spaces)
    "link": re.compile(
        r'^\s*(<(?!\s*(?:javascript|vbscript|data):)[^<>"\s\'`{}|\\^()]*>(\s*;\s*[\w*\-]+(=("[\w\-./:; ]*"|[\w\-./:]+))?)*\s*(,\s*|$))+$'
    ),
    # RFC 7239 forwarded-elements, RFC 7240 preferences, W3C trace state and baggage
    "forwarded": re.compile(r'^\s*([\w\-]+=("[\w\-.:\[\]]*"|[\w\-.:]+)\s*([;,]\s*|$))+$'),
    "prefer": re.compile(r'^\s*([\w\-]+(=("[\w\-./ ]*"|[\w\-./]+))?\s*([;,]\s*|$))+$'),
    "tracestate": re.compile(r"^\s*([\w\-*/@]+=[\x21-\x2b\x2d-\x3c\x3e-\x7e]*\s*(,\s*|$))+$"),
    "baggage": re.compile(r"^\s*([\w\-.%]+=[\w\-.%]*(;[\w\-.%=]*)*\s*(,\s*|$))+$"),
    "priority": re.compile(r"^\s*(u=[0-7]|i)(\s*,\s*(u=[0-7]|i))*\s*$"),
    "host": re.compile(r"^[A-Za-z0-9\-.]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$"),
}
_HTTP_DATE = re.compile(
    r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
    r" \d{4} \d{2}:\d{2}:\d{2} GMT$"
)
for _h in (
    "date",
    "if-modified-since",
    "if-unmodified-since",
    "expires",
    "last-modified",
    "accept-datetime",
    "if-range",
):
    _GRAMMARS[_h] = _HTTP_DATE
_AUTH = frozenset({"authorization", "proxy-authorization"})
_AUTH_PARAM = re.compile(r'([\w\-]+)\s*=\s*("((?:[^"\\]|\\.)*)"|[^\s,]*)')
_CONTEXT_OF = {"user-agent": "user-agent", "referer": "referer"}


def _skippable(v: str) -> bool:
    """A value that cannot carry an attack: plain identifier, number or opaque token."""
    if ".." in v:
        return False
    if _PLAIN.match(v) or _NUMBER.match(v):
        return True
    return bool(
        _TOKEN.match(v)
        and any(c.isdigit() for c in v)
        and any(c.isupper() for c in v)
        and any(c.islower() for c in v)
    )


class Extracted:
    """The tagged values to scan, in request order, and the gaps (``"<part>: <reason>"``)."""

    __slots__ = ("_seen", "cfg", "gaps", "scanned_bytes", "values")

    def __init__(self, cfg: ScanningSettings) -> None:
        self.cfg = cfg
        self.values: list[str] = []
        self.gaps: list[str] = []
        self.scanned_bytes = 0
        self._seen: set[str] = set()

    def add(self, context: str, value: str, part: str, checked: bool = False) -> bool:
        """Queue one value (windowed when long); False once a budget is exhausted.
        ``checked``: the caller already knows the value is not skippable."""
        if not checked and (not value or _skippable(value)):
            return True
        cap, limit = self.cfg.max_value_bytes, self.cfg.max_values
        pieces = [value]
        if len(value) > cap:
            step = cap - _OVERLAP
            pieces = [value[i : i + cap] for i in range(0, len(value) - _OVERLAP, step)]
        for p in pieces:
            tagged = in_context(context, p)
            if tagged in self._seen:
                continue
            if len(self.values) >= limit:
                self.gap(part, f"more than {limit} values")
                return False
            if self.scanned_bytes + len(p) > self.cfg.max_scan_bytes:
                self.gap(part, f"more than {self.cfg.max_scan_bytes} bytes of values")
                return False
            self._seen.add(tagged)
            self.values.append(tagged)
            self.scanned_bytes += len(p)
        return True

    def gap(self, part: str, reason: str) -> None:
        g = f"{part}: {reason}"
        if g not in self.gaps:
            self.gaps.append(g)

    @property
    def full(self) -> bool:
        return bool(self.gaps)


def header_values(name: str, value: str, out: Extracted) -> None:
    """One header, handled by its field name (module docstring)."""
    key = (name, value)
    items = _HEADER_MEMO.get(key)
    if items is None:
        items = tuple(
            i for i in _header_items(name.lower(), value) if i[1] and not _skippable(i[1])
        )
        if len(_HEADER_MEMO) >= _HEADER_MEMO_SIZE:
            _HEADER_MEMO.clear()
        _HEADER_MEMO[key] = items
    for context, v, part in items:
        if not out.add(context, v, part, checked=True):
            return


# what a header holds is a pure function of its name and value, and clients send the same
# User-Agent, Accept-Language and cookies on every request: remembered, bounded
_HEADER_MEMO: dict[tuple[str, str], tuple[tuple[str, str, str], ...]] = {}
_HEADER_MEMO_SIZE = 50_000


_RAW_MEMO: dict[tuple[bytes, bytes], tuple[tuple[str, str, str], ...]] = {}


def _remember_raw(name: bytes, value: bytes) -> tuple[tuple[str, str, str], ...]:
    h, v = name.decode("latin-1").lower(), value.decode("latin-1")
    items = tuple(i for i in _header_items(h, v) if i[1] and not _skippable(i[1]))
    if len(_RAW_MEMO) >= _HEADER_MEMO_SIZE:
        _RAW_MEMO.clear()
    _RAW_MEMO[(name, value)] = items
    return items


def _header_items(h: str, value: str) -> tuple[tuple[str, str, str], ...]:
    """(context, value, part) for each piece of one header that needs the model."""
    if h in _SKIP or not value:
        return ()
    part = f"header {h}"
    grammar = _GRAMMARS.get(h)
    if grammar is not None and grammar.match(value):
        return ()
    if h == "cookie":
        out = []
        for k, v in cookie_pairs(value):
            if k and not _PLAIN.match(k):
                out.append(("key", k, "cookie"))
            out.append(("cookie", v, "cookie"))
        return tuple(out)
    if h in _AUTH:
        scheme, _, rest = value.strip().partition(" ")
        rest = rest.strip()
        if _PLAIN.match(scheme) and (not rest or _skippable(rest) or _skippable(rest.rstrip("="))):
            return ()  # a scheme and an opaque credential: nothing to read
        if "=" in rest and ("," in rest or '"' in rest):
            return tuple(
                ("header", m.group(3) if m.group(3) is not None else m.group(2), part)
                for m in _AUTH_PARAM.finditer(rest)
            )
    return ((_CONTEXT_OF.get(h, "header"), value, part),)


def _json_strings(text: str, out: Extracted, part: str) -> None:
    """Every JSON string literal of ``text`` (keys that are not plain too), without needing
    the whole document to parse: a truncated or malformed body is read as far as it goes."""
    for m in _JSON_STRING.finditer(text):
        raw, is_key = m.group(1), m.group(2) is not None
        try:
            s = json.loads(f'"{raw}"')
        except ValueError:
            s = raw
        if is_key:
            if not _PLAIN.match(s) and not out.add("key", s, part):
                return
        elif not out.add("param", s, part):
            return


def _multipart(body: bytes, ctype: str, out: Extracted) -> None:
    m = re.search(r'boundary="?([^";]+)"?', ctype)
    if not m:
        out.add("body", body.decode("utf-8", "replace"), "body")
        return
    sep = b"--" + m.group(1).encode()
    for chunk in body.split(sep)[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, content = chunk.lstrip(b"\r\n").partition(b"\r\n\r\n")
        content = content.removesuffix(b"\r\n")
        headers = head.decode("utf-8", "replace")
        name = re.search(r'\bname="([^"]*)"', headers)
        fname = re.search(r'\bfilename="([^"]*)"', headers)
        pct = re.search(r"(?im)^content-type:\s*([^\r\n;]+)", headers)
        part_type = pct.group(1).strip().lower() if pct else ""
        if name and not _PLAIN.match(name.group(1)):
            out.add("key", name.group(1), "multipart")
        if fname:
            out.add("param", fname.group(1), "multipart filename")
            if not (part_type.startswith("text/") or "json" in part_type):
                continue  # a file's bytes are not parameter content
        text = content.decode("utf-8", "replace")
        if "json" in part_type:
            _json_strings(text, out, "multipart")
        elif not out.add("param", text, "multipart"):
            return


def query_pairs(query: str) -> list[tuple[str, str]]:
    """``parse_qsl(query)`` (``&``-separated, blank values dropped), decoding only the
    parts that hold ``%`` or ``+``: most query strings hold neither."""
    out = []
    for part in query.split("&"):
        k, _, v = part.partition("=")
        if not v:
            continue
        if "%" in k or "+" in k:
            k = unquote_plus(k)
        if "%" in v or "+" in v:
            v = unquote_plus(v)
        out.append((k, v))
    return out


def extract(
    path: str,
    query: str,
    headers: Iterable[tuple[Any, Any]],
    body: bytes,
    content_type: str | None,
    cfg: ScanningSettings,
    body_length: int | None = None,
) -> Extracted:
    """The values of one request (see the module docstring). ``headers``: (name, value)
    text pairs, or an ASGI scope's raw byte pairs (lower-case names). ``body_length`` is the
    body's declared size when only part of it was read (``body`` is then that part)."""
    out = Extracted(cfg)
    if not _PLAIN_PATH.match(path) or "/." in path:
        out.add("path", unquote(path), "path")
    if query:
        # values stay as sent (percent-encoded): the scanner decodes them and counts the
        # decoding rounds
        for k, v in query_pairs(query):
            if not _PLAIN.match(k):
                out.add("key", k, "query")
            if not out.add("param", v, "query"):
                break
    if cfg.scan_headers:
        skip = cfg.skip_headers
        for name, value in headers:
            if isinstance(name, bytes):  # an ASGI scope's raw pairs: decoded on a memo miss
                items = _RAW_MEMO.get((name, value))
                if items is None:
                    items = _remember_raw(name, value)
                if items and not (skip and name.decode("latin-1") in skip):
                    for context, v, part in items:
                        if not out.add(context, v, part, checked=True):
                            break
                continue
            if name.lower() in skip:
                continue
            header_values(name, value, out)
    size = max(len(body), body_length or 0)
    if size > cfg.max_body_bytes:
        out.gap("body", f"{size} bytes, over max_body_bytes {cfg.max_body_bytes}")
        body = body[: cfg.max_body_bytes]
    elif size > len(body):
        out.gap("body", f"only {len(body)} of {size} bytes read")
    if body:
        _body(body, content_type, out)
    return out


def _body(body: bytes, content_type: str | None, out: Extracted) -> None:
    ctype = (content_type or "").split(";")[0].strip().lower()
    text = body.decode("utf-8", errors="replace")
    if ctype == "application/json" or ctype.endswith("+json"):
        _json_strings(text, out, "json body")
    elif ctype == "application/x-www-form-urlencoded":
        for k, v in parse_qsl(text, keep_blank_values=False):
            if not _PLAIN.match(k):
                out.add("key", k, "form")
            if not out.add("param", v, "form"):
                return
    elif ctype == "multipart/form-data":
        _multipart(body, content_type or "", out)
    elif not ctype or ctype.startswith("text/") or ctype.endswith(("/xml", "+xml")):
        out.add("body", text, "body")
    # other types (files, images, protobuf, ...) are not parameter content


def scored(context: str, value: str, field: str | None = None) -> bool:
    """Whether the gateway scores ``value`` found in ``context`` (under header ``field``):
    False for values it skips and headers whose grammar it checks instead."""
    if not value or _skippable(value):
        return False
    if context in ("header", "user-agent", "referer") and field:
        h = field.lower()
        if h in _SKIP:
            return False
        grammar = _GRAMMARS.get(h)
        if grammar is not None and grammar.match(value):
            return False
        if h in _AUTH:
            return any(not _skippable(v) for _, v, _ in _header_items(h, value))
    return True
