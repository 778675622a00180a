"""Format definitions: compiled templates, the fast path against the per-record path
(property tests, request ids included), --format auto, and loud failure."""

from __future__ import annotations

import json
import re
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telemetry.ingest import FileReport, _Ctx, _Quarantine, ingest_files, parse_lines, resolve
from telemetry.ingest import formats as F
from telemetry.ingest.detect import DetectionError, detect_format
from telemetry.ingest.fields import unescape
from telemetry.ingest.readers import file_fingerprint
from telemetry.store import TelemetryStore

# -- value generators: realistic values, the odd ones servers write, and junk -----------

_T0 = datetime(2026, 3, 1, tzinfo=UTC)
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _clf(dt: datetime, tz: str = "+0000") -> str:
    return f"{dt.day:02d}/{_MONTHS[dt.month - 1]}/{dt.year}:{dt:%H:%M:%S} {tz}"


seconds = st.integers(0, 3 * 86400)
junk = st.text(st.characters(codec="utf-8", exclude_characters="\n\r"), max_size=12)
texty = st.one_of(
    st.sampled_from(
        ["-", "", "curl/8.5.0", "Mozilla/5.0 (X11; Linux x86_64)", "python-requests/2.31"]
    ),
    st.sampled_from(
        ["evil \\x22agent\\x22", 'evil \\"agent\\"', "caf\\xC3\\xA9", "tab\\there", "a\\\\b"]
    ),
    st.text(
        st.characters(min_codepoint=32, max_codepoint=126, exclude_characters='"\\'), max_size=20
    ),
    st.text(st.characters(codec="utf-8", exclude_characters='"\\\n\r'), max_size=10),
)
path = st.one_of(
    st.sampled_from(
        [
            "/",
            "/v1/orders",
            "/v1/orders/12345",
            "/v1/users/3f2b1c9e-0f6a-4c3e-9a57-1b2c3d4e5f60/keys",
        ]
    ),
    st.text(
        st.characters(min_codepoint=33, max_codepoint=126, exclude_characters='"?\\ '),
        min_size=1,
        max_size=15,
    ).map(lambda s: "/" + s),
)
query = st.one_of(
    st.just(""),
    st.just("?"),
    st.sampled_from(["?q=1%27%20OR%20%271%27=%271", "?a=1&b=2", "?x=<script>"]),
)
method = st.sampled_from(
    ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "PROPFIND", "get"]
)
request = st.one_of(
    st.builds(
        lambda m, p, q, v: f"{m} {p}{q}{v}",
        method,
        path,
        query,
        st.sampled_from([" HTTP/1.1", " HTTP/1.0", " HTTP/2.0", ""]),
    ),
    st.sampled_from(
        [
            "GARBAGE",
            "-",
            "GET http://example.com/a?b=1 HTTP/1.1",
            "\\x16\\x03\\x01\\x00",
            "GET  HTTP/1.1",
        ]
    ),
)
number = st.one_of(
    st.integers(0, 10**9).map(str),
    st.sampled_from(["-", "0", "-1", "1e3", "12.5", " 7", "99999999999999999999"]),
)
seconds_f = st.one_of(
    st.floats(0, 100, allow_nan=False).map(lambda x: f"{x:.3f}"),
    st.sampled_from(["-", "0.000", "0.010, 0.020", "0.010, 0.020 : 0.030", "-1", "1e-3", "0.5"]),
)
status = st.one_of(st.integers(100, 599).map(str), st.sampled_from(["000", "999", "-", "20"]))
addr = st.one_of(
    st.sampled_from(
        ["203.0.113.7", "10.0.0.1", "2001:db8::1", "-", "[2001:db8::2]:443", "198.51.100.4:5060"]
    ),
    st.ip_addresses(v=4).map(str),
)
xff = st.one_of(addr, st.sampled_from(["203.0.113.7, 10.0.0.1", "-", ""]))


COUNTS = (
    "body_bytes_sent",
    "bytes_sent",
    "request_length",
    "request_time_us",
    "request_time_ms",
    "upstream_response_time_ms",
)


def _var_strategy(var: str, when: datetime, odd: bool) -> st.SearchStrategy[str]:
    """What servers write (so most lines take the fast path); on odd lines, anything."""
    clean = _clean(var, when)
    return st.one_of(clean, clean, _odd(var, when)) if odd else clean


_CLEAN_TEXT = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-", min_size=1, max_size=12
)


def _clean(var: str, when: datetime) -> st.SearchStrategy[str]:
    if var == "time_local":
        return st.just(_clf(when))
    if var == "time_iso8601":
        return st.just(when.isoformat())
    if var == "msec":
        return st.just(f"{when.timestamp():.3f}")
    if var == "time_haproxy":
        return st.just(_clf(when)[:-6] + ".123")
    if var == "status":
        return st.integers(100, 599).map(str)
    if var in ("remote_addr", "http_x_forwarded_for"):
        return st.ip_addresses(v=4).map(str)
    if var == "request":
        return st.builds(lambda m, p, q: f"{m} {p}{q} HTTP/1.1", method, path, query)
    if var in COUNTS:
        return st.integers(0, 10**6).map(str)
    if var in ("request_time", "upstream_response_time", "upstream_response_time_s"):
        return st.floats(0, 100, allow_nan=False).map(lambda x: f"{x:.3f}")
    if var in ("request_method", "request_uri", "uri", "args", "remote_user"):
        return _odd(var, when)
    return st.one_of(st.just("-"), _CLEAN_TEXT)


def _odd(var: str, when: datetime) -> st.SearchStrategy[str]:
    if var == "time_local":
        return st.one_of(
            st.just(_clf(when)),
            st.just(_clf(when, "-0700")),
            st.sampled_from(["32/Foo/2015:99:99:99 +0000"]),
        )
    if var == "time_iso8601":
        return st.one_of(
            st.just(when.isoformat()),
            st.just(when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")),
            st.just("not-a-time"),
        )
    if var == "msec":
        return st.one_of(
            st.just(f"{when.timestamp():.3f}"),
            st.just(f"{when.timestamp() * 1000:.0f}"),
            st.just("x"),
        )
    if var == "time_haproxy":
        return st.one_of(st.just(_clf(when)[:-6] + ".123"), st.just(_clf(when)[:-6] + ".5"))
    if var == "status":
        return status
    if var in ("remote_addr",):
        return addr
    if var == "http_x_forwarded_for":
        return xff
    if var == "request":
        return request
    if var == "request_method":
        return method
    if var in ("request_uri",):
        return st.builds(lambda p, q: p + q, path, query)
    if var == "uri":
        return path
    if var == "args":
        return st.sampled_from(["", "a=1", "q=%27"])
    if var in ("request_time", "upstream_response_time", "upstream_response_time_s"):
        return seconds_f
    if var in COUNTS:
        return number
    if var in ("request_id", "http_x_request_id"):
        return st.one_of(st.just("-"), st.text("0123456789abcdef", min_size=32, max_size=32))
    if var == "remote_user":
        return st.sampled_from(["-", "alice", "key_123", "bob smith"])
    return texty


# NGINX, Apache, HAProxy and Envoy definitions (the built-ins and some a user would write)
NGINX_API = (
    '$remote_addr - $remote_user [$time_iso8601] "$request" $status $body_bytes_sent '
    '$request_time "$upstream_response_time" $request_length "$http_user_agent" '
    '"$http_x_forwarded_for" $request_id'
)
NGINX_SPLIT = '$msec $remote_addr "$request_method" "$request_uri" $status $bytes_sent rt=$request_time ua="$http_user_agent"'
NGINX_KEYS = '$remote_addr [$time_local] "$request" $status "$http_x_api_key" "$cookie_sid" $http_authorization'
APACHE_D = '%h %l %u %t "%r" %>s %b "%{Referer}i" "%{User-Agent}i" %D'
APACHE_UQ = '%h %u %t "%m %U%q %H" %>s %B %{ms}T "%{X-Request-Id}i"'

TEXT_FORMATS = {
    "combined": F.resolve("combined"),
    "nginx:main": F.resolve("nginx:main"),
    "nginx-api": F.nginx_format(NGINX_API),
    "nginx-split": F.nginx_format(NGINX_SPLIT),
    "nginx-keys": F.nginx_format(NGINX_KEYS),
    "apache:common": F.resolve("apache:common"),
    "apache:vhost_combined": F.resolve("apache:vhost_combined"),
    "apache-D": F.apache_format(APACHE_D),
    "apache-UQ": F.apache_format(APACHE_UQ),
    "haproxy": F.resolve("haproxy"),
    "envoy:default": F.resolve("envoy:default"),
}
_TOKENS = {
    "nginx": F._NGINX_VAR,
    "apache": F._APACHE_TOKEN,
    "haproxy": F._HAPROXY_TOKEN,
    "envoy": F._ENVOY_TOKEN,
}


def _kind(fmt: F.LogFormat) -> str:
    if fmt.name.startswith(("combined", "nginx")) or fmt.definition.startswith("$"):
        return "nginx"
    if fmt.name.startswith("apache"):
        return "apache"
    return fmt.name.split(":")[0]


@st.composite
def log_lines(draw: st.DrawFn, fmt: F.LogFormat) -> list[str]:
    """Lines rendered from the format's own definition with drawn values (a few mutated)."""
    kind = _kind(fmt)
    token = _TOKENS[kind]
    template = fmt.definition
    if kind == "apache":
        template = re.sub(r"(?<!\[)%t", "[%t]", template)
    if kind == "haproxy":
        template = re.sub(r"%\{\+Q\}(\w+)", r'"%\1"', template)
    lines = []
    for _ in range(draw(st.integers(1, 25))):
        when = _T0 + timedelta(seconds=draw(seconds))
        odd = draw(st.integers(0, 9)) < 4
        names = iter(fmt.names)

        def value(m: re.Match[str], names=names, when: datetime = when, odd: bool = odd) -> str:
            var = next(names)
            if kind == "apache" and var == "time_local":
                return _clf(when)
            if var in ("captured_request_headers", "captured_response_headers"):
                return "{" + draw(st.sampled_from(["", "1wt.eu", "a|b"])) + "}"
            return draw(_var_strategy(var, when, odd))

        line = token.sub(value, template)
        if kind == "haproxy" and draw(st.booleans()):
            line = "Feb  6 12:14:14 localhost haproxy[14389]: " + line
        if draw(st.integers(0, 9)) == 0:  # mutate: cut, or insert junk
            cut = draw(st.integers(0, len(line)))
            line = line[:cut] + draw(junk)
        lines.append(line)
    return lines


def _parse(fmt: F.LogFormat, lines: list[str], fast: bool, tmp: Path):
    raw = [s.encode("utf-8", errors="surrogatepass") for s in lines]
    raw = [r for r in raw if r.strip()]
    fingerprint = b"fp"
    fr = FileReport("x")
    q = _Quarantine(tmp / "rejects.jsonl", budget=0)
    ctx = _Ctx(Path("x"), fingerprint, TelemetryStore(tmp / "t"), fr, q, None, None)
    table = parse_lines(
        ctx,
        fmt,
        np.arange(1, len(raw) + 1),
        np.cumsum([0] + [len(r) + 1 for r in raw])[:-1],
        raw,
        fast,
    )
    return table, q.reasons, fr.fast


@pytest.mark.parametrize("name", sorted(TEXT_FORMATS))
def test_fast_path_equals_per_record_path(name):
    fmt = TEXT_FORMATS[name]
    took_fast = []

    @settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(lines=log_lines(fmt))
    def check(lines):
        with tempfile.TemporaryDirectory() as d:
            slow, slow_reasons, _ = _parse(fmt, lines, False, Path(d))
            fast, fast_reasons, n_fast = _parse(fmt, lines, True, Path(d))
        assert fast.schema == slow.schema
        assert fast.to_pylist() == slow.to_pylist()  # every field, request ids included
        assert fast_reasons == slow_reasons
        took_fast.append(n_fast)

    check()
    assert sum(took_fast) > 0, "the fast path never took a line"


# -- definitions: what each variable becomes -------------------------------------------


def _one(fmt: str | F.LogFormat, line: str, tmp_path: Path) -> dict:
    tmp_path.mkdir(parents=True, exist_ok=True)
    log = tmp_path / "one.log"
    log.write_text(line + "\n")
    store = TelemetryStore(tmp_path / "t")
    rep = ingest_files([log], fmt, store, rejects_dir=tmp_path / "r")
    assert rep.accepted == 1, rep.examples
    (ev,) = store.read().to_pylist()
    return ev


def test_nginx_definition_maps_variables_and_keeps_the_rest_as_attributes(tmp_path):
    line = (
        '203.0.113.7 - alice [2026-03-01T10:00:00+00:00] "GET /v1/orders/42?x=1 HTTP/1.1" 200 512 '
        '0.012 "0.010, 0.001" 230 "curl/8.5.0" "198.51.100.1, 10.0.0.1" 7f3a9c'
    )
    ev = _one(f"nginx:'{NGINX_API}'", line, tmp_path)
    assert ev["timestamp"] == datetime(2026, 3, 1, 10, tzinfo=UTC)
    assert (ev["client_id"], ev["client_address"]) == ("alice", "203.0.113.7")
    assert (ev["http_request_method"], ev["url_path"], ev["url_query"], ev["http_route"]) == (
        "GET",
        "/v1/orders/42",
        "x=1",
        "/v1/orders/{id}",
    )
    assert (ev["response_bytes"], ev["request_bytes"]) == (512, 230)
    assert ev["duration_ms"] == pytest.approx(12.0)
    assert ev["upstream_duration_ms"] == pytest.approx(11.0)  # two upstream tries, summed
    assert ev["request_id"] == "7f3a9c"
    assert dict(ev["attributes"]) == {"http_x_forwarded_for": "198.51.100.1, 10.0.0.1"}


def test_nginx_escapes_and_apache_escapes_are_undone(tmp_path):
    assert unescape("evil \\x22agent\\x22 caf\\xC3\\xA9") == 'evil "agent" café'
    assert unescape('evil \\"agent\\" a\\\\b') == 'evil "agent" a\\b'
    line = '1.2.3.4 - - [01/Mar/2026:10:00:00 +0000] "GET / HTTP/1.1" 200 5 "-" "evil \\x22agent\\x22" "-"'
    assert _one("nginx:main", line, tmp_path)["user_agent"] == 'evil "agent"'


def test_apache_directives(tmp_path):
    line = (
        '10.1.2.3 bob [01/Mar/2026:10:00:00 +0100] "POST /v1/pay?id=9 HTTP/1.1" 201 77 15 "req-1"'
    )
    ev = _one(f"apache:'{APACHE_UQ}'", line, tmp_path)
    assert ev["timestamp"] == datetime(2026, 3, 1, 9, tzinfo=UTC)
    assert (ev["http_request_method"], ev["url_path"], ev["url_query"]) == (
        "POST",
        "/v1/pay",
        "id=9",
    )
    assert (ev["duration_ms"], ev["request_id"], ev["client_id"]) == (15.0, "req-1", "bob")


def test_haproxy_documented_line(tmp_path):
    # HAProxy's configuration manual, "HTTP log format" example
    line = (
        "Feb  6 12:14:14 localhost haproxy[14389]: 10.0.1.2:33317 [06/Feb/2009:12:14:14.655] "
        'http-in static/srv1 10/0/30/69/109 200 2750 - - ---- 1/1/1/1/0 0/0 {1wt.eu} {} "GET /index.html HTTP/1.1"'
    )
    ev = _one("haproxy", line, tmp_path)
    assert ev["timestamp"] == datetime(2009, 2, 6, 12, 14, 14, 655000, tzinfo=UTC)
    assert (ev["client_address"], ev["upstream_service"]) == ("10.0.1.2", "static")
    assert (ev["duration_ms"], ev["upstream_duration_ms"]) == (109.0, 69.0)
    assert (ev["http_response_status_code"], ev["response_bytes"]) == (200, 2750)
    attrs = dict(ev["attributes"])
    assert attrs["server"] == "srv1" and attrs["captured_request_headers"] == "1wt.eu"


def test_envoy_default_text_format(tmp_path):
    line = (
        '[2026-03-01T10:00:00.310Z] "GET /v1/items/7 HTTP/1.1" 200 - 0 102 12 9 '
        '"203.0.113.9" "curl/8.5.0" "5b1c1c1e-6d7b-4e57-8c0a-3f1b2a6c4d5e" "api.example.com" "10.0.0.5:8080"'
    )
    ev = _one("envoy:default", line, tmp_path)
    assert ev["client_address"] == "203.0.113.9"
    assert ev["request_id"] == "5b1c1c1e-6d7b-4e57-8c0a-3f1b2a6c4d5e"
    assert (ev["duration_ms"], ev["upstream_duration_ms"], ev["response_bytes"]) == (12.0, 9.0, 102)
    assert dict(ev["attributes"])["host"] == "api.example.com"


def test_envoy_minus_one_upstream_time_is_no_upstream(tmp_path):
    line = '[2026-03-01T10:00:00.310Z] "GET / HTTP/1.1" 503 UF 0 91 5 - "{xff}" "curl" "-" "a" "-"'
    ev = _one("envoy:default", line.format(xff="203.0.113.9"), tmp_path)
    assert ev["upstream_duration_ms"] is None and ev["http_response_status_code"] == 503
    # Envoy's default format has no client address: without X-Forwarded-For nothing names
    # the client, and the record is refused with that reason
    log = tmp_path / "noxff.log"
    log.write_text(line.format(xff="-") + "\n")
    rep = ingest_files(
        [log], "envoy:default", TelemetryStore(tmp_path / "t2"), rejects_dir=tmp_path / "r"
    )
    assert rep.rejected == 1 and "no client address" in next(iter(rep.reasons))


def test_nginx_conf_log_format(tmp_path):
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        "http {\n"
        "    # log_format old '$remote_addr';\n"
        "    log_format api '$remote_addr - $remote_user [$time_local] '\n"
        "                   '\"$request\" $status $body_bytes_sent $request_time';\n"
        '    log_format js escape=json \'{"t":"$msec","ip":"$remote_addr"}\';\n'
        "    access_log /var/log/nginx/api.log api;\n}\n"
    )
    fmt = F.from_nginx_conf(conf, "api")
    assert fmt.names == (
        "remote_addr",
        "remote_user",
        "time_local",
        "request",
        "status",
        "body_bytes_sent",
        "request_time",
    )
    with pytest.raises(F.FormatError, match=r"'nope' is not defined .* api, js"):
        F.from_nginx_conf(conf, "nope")
    assert F.from_nginx_conf(conf, "combined").name == "combined"  # NGINX's predefined one
    js = F.from_nginx_conf(conf, "js")  # the user's own keys, renamed by the definition
    assert js.is_json
    ev = js.json_adapter(
        {"t": "1772359200.5", "ip": "203.0.113.1", "status": "200", "request": "GET / HTTP/1.1"}
    )
    assert (ev["client_address"], ev["timestamp"].second) == ("203.0.113.1", 0)


def test_bad_definitions_are_refused_with_the_part():
    with pytest.raises(F.FormatError, match="no variables"):
        F.resolve("nginx:'just text'")
    with pytest.raises(F.FormatError, match="unknown directive %Z"):
        F.resolve("apache:'%h %Z'")
    with pytest.raises(F.FormatError, match="unknown format 'klingon'"):
        F.resolve("klingon")


# -- auto-detection -----------------------------------------------------------------------


def _write(tmp_path: Path, name: str, lines: list[str]) -> Path:
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n")
    return p


MAIN_LINE = '1.2.3.4 - - [01/Mar/2026:10:00:{s:02d} +0000] "GET /a HTTP/1.1" 200 5 "-" "curl/8" "-"'
COMBINED_LINE = '1.2.3.4 - - [01/Mar/2026:10:00:{s:02d} +0000] "GET /a HTTP/1.1" 200 5 "-" "curl/8"'


def test_auto_picks_the_format_that_parses_and_says_how_sure(tmp_path):
    main = _write(tmp_path, "main.log", [MAIN_LINE.format(s=s) for s in range(50)])
    d = detect_format(main)
    assert d.format.name == "nginx:main" and d.share == 1.0
    assert "nginx:main (100% of 50 sampled records parse" in d.describe()
    comb = _write(tmp_path, "comb.log", [COMBINED_LINE.format(s=s) for s in range(50)])
    assert detect_format(comb).format.name == "combined"


def test_auto_fails_with_the_best_three_and_a_sample_line(tmp_path):
    bad = _write(tmp_path, "bad.log", [f"hello world {i}" for i in range(30)])
    with pytest.raises(DetectionError) as exc:
        detect_format(bad)
    msg = str(exc.value)
    assert "no known format parses most of the first 30 records" in msg
    assert "hello world 0" in msg and "--format nginx:" in msg


# -- failing loudly; rejects bounded --------------------------------------------------------


def test_rejects_file_is_capped_and_never_larger_than_the_input(tmp_path):
    lines = [
        f'1.2.3.4 - - [01/Mar/2026:10:00:00 +0000] "GET /{i} HTTP/1.1" 200 5 "-" "x" "extra" "more"'
        for i in range(5000)
    ]
    log = _write(tmp_path, "main.log", lines)
    rep = ingest_files(
        [log], "combined", TelemetryStore(tmp_path / "t"), rejects_dir=tmp_path / "r"
    )
    assert (rep.read, rep.rejected, rep.accepted) == (5000, 5000, 0)
    assert rep.rejects_path.stat().st_size <= log.stat().st_size
    kept = rep.rejects_path.read_text().splitlines()
    assert len(kept) == rep.rejects_kept == 100  # the first 100 of the one reason
    summary = json.loads(rep.rejects_path.with_suffix(".summary.json").read_text())
    assert summary["counts"] == {"does not match the combined format": 5000}
    assert rep.reject_share == 1.0


def test_attributes_read_as_null_from_older_partitions(tmp_path):
    store = TelemetryStore(tmp_path / "t")
    old = pa.table(
        {
            "timestamp": pa.array([_T0], pa.timestamp("us", tz="UTC")),
            "request_id": ["r1"],
            "client_id": ["c"],
            "http_request_method": ["GET"],
            "url_path": ["/"],
            "http_route": ["/"],
            "http_response_status_code": pa.array([200], pa.int16()),
        }
    )
    # a part written before the column existed
    import pyarrow.parquet as pq

    part = tmp_path / "t" / "hour=2026-03-01T00"
    part.mkdir(parents=True)
    pq.write_table(old, part / "part-old.parquet")
    assert store.read().column("attributes").to_pylist() == [None]


def test_fingerprint_and_offsets_make_the_same_ids_as_before(tmp_path, shared_data):
    # request ids derived from (first line, byte offset, raw line) must not change:
    # a store ingested by an older version dedups a re-ingest of the same file
    src = shared_data / "logs" / "hackers_combined.log"
    store = TelemetryStore(tmp_path / "t")
    ingest_files([src], "combined", store, rejects_dir=tmp_path / "r")
    import hashlib

    first = src.read_bytes().split(b"\n")[0]
    h = hashlib.blake2b(file_fingerprint(src), digest_size=16)
    h.update((0).to_bytes(8, "little"))
    h.update(first)
    assert h.hexdigest() in set(store.read().column("request_id").to_pylist())
    rep = ingest_files([src], "auto", store, rejects_dir=tmp_path / "r")
    assert rep.accepted == 0 and rep.duplicate == rep.read


def test_resolve_names_and_aliases():
    assert resolve("envoy").name == "envoy-json"  # the old name of the JSON format still works
    assert resolve("main").name == "nginx:main"
    assert resolve("apache:combined") is resolve("combined")


def test_credentials_are_never_stored_in_clear(tmp_path):
    line = '203.0.113.7 [01/Mar/2026:10:00:00 +0000] "GET / HTTP/1.1" 200 "sk_live_abc123" "s3cr3t" Basic_dXNlcjpwYXNz'
    ev = _one(f"nginx:'{NGINX_KEYS}'", line, tmp_path)
    assert ev["api_key_id"].startswith("h:") and "sk_live" not in ev["api_key_id"]
    attrs = dict(ev["attributes"])
    assert attrs["cookie_sid"].startswith("h:") and attrs["http_authorization"].startswith("h:")
    assert "s3cr3t" not in str(ev) and "dXNlcjpwYXNz" not in str(ev)
    # the same key always gets the same id, so the models can count a key's clients
    again = _one(f"nginx:'{NGINX_KEYS}'", line.replace("10:00:00", "10:00:01"), tmp_path / "b")
    assert again["api_key_id"] == ev["api_key_id"]


# -- logs written by real servers (Debian packages) and vendors' documented examples ----------

LOGS = Path(__file__).resolve().parents[1] / "fixtures" / "logs"
APACHE_D_CONF = '%h %l %u %t \\"%r\\" %>s %b \\"%{Referer}i\\" \\"%{User-Agent}i\\" %D'
# file -> (format given by hand, what auto must say: the same format, or None = not a built-in)
REAL = {
    "nginx/main.log": ("nginx:main", "nginx:main"),
    "nginx/combined.log": ("combined", "combined"),
    "nginx/api.log": ("conf:api", None),
    "apache2/common.log": ("apache:common", "apache:common"),
    "apache2/combined.log": ("apache:combined", "combined"),
    "apache2/vhost_combined.log": ("apache:vhost_combined", "apache:vhost_combined"),
    "apache2/combined_D.log": (f"apache:'{APACHE_D_CONF}'", None),
    "haproxy/httplog.log": ("haproxy", "haproxy"),
    "haproxy/httplog_syslog.log": ("haproxy", "haproxy"),
    "haproxy/httplog_capture.log": ("haproxy", "haproxy"),
    "haproxy/documented.log": ("haproxy", "haproxy"),
    "haproxy/documented_examples.log": ("haproxy", "haproxy"),
    "caddy/access.json": ("caddy", "caddy"),
    "caddy/documented.json": ("caddy", "caddy"),
    "envoy/default_text.log": ("envoy:default", "envoy:default"),
    "alb/access.log": ("alb", "alb"),
}
# records the format cannot turn into events, with the reason (documented in SOURCES.md)
EXPECTED_REJECTS = {
    "haproxy/documented_examples.log": ["status -1: the client left before any response was sent"],
    "envoy/default_text.log": ["no consumer and no client address to identify the client"],
}


def _fmt(spec: str) -> F.LogFormat:
    if spec.startswith("conf:"):
        return F.from_nginx_conf(LOGS / "nginx" / "nginx.conf", spec[5:])
    return F.resolve(spec)


def _nonblank(p: Path) -> int:
    return sum(1 for line in p.read_bytes().splitlines() if line.strip())


@pytest.mark.parametrize("rel", sorted(REAL))
def test_real_server_logs_ingest_with_counts_that_add_up(rel, tmp_path):
    src = LOGS / rel
    given_fmt, auto_name = REAL[rel]
    store = TelemetryStore(tmp_path / "given")
    rep = ingest_files([src], _fmt(given_fmt), store, rejects_dir=tmp_path / "r")
    assert rep.read == _nonblank(src)
    assert rep.accepted + rep.rejected + rep.duplicate == rep.read
    assert store.count() == rep.accepted
    assert sorted(r["reason"] for r in rep.examples.values()) == EXPECTED_REJECTS.get(rel, [])
    if auto_name is None:
        with pytest.raises(DetectionError):
            detect_format(src)
        return
    assert detect_format(src).format.name == auto_name
    auto_store = TelemetryStore(tmp_path / "auto")
    auto = ingest_files([src], "auto", auto_store, rejects_dir=tmp_path / "r")
    # auto picks a format that parses each record to the same fields
    assert auto_store.read().to_pylist() == store.read().to_pylist()
    assert auto.detected[str(src)].startswith(f"format: {auto_name} ")


def test_real_nginx_and_apache_fields(tmp_path):
    def events(rel: str) -> list[dict]:
        store = TelemetryStore(tmp_path / rel)
        ingest_files([LOGS / rel], _fmt(REAL[rel][0]), store, rejects_dir=tmp_path / "r")
        return store.read().to_pylist()

    main = events("nginx/main.log")
    assert 'evil "agent"' in {e["user_agent"] for e in main}  # nginx's \x22 undone
    assert any(e["http_request_method"] == "_OTHER" for e in main)  # the garbage request kept
    assert 'evil "agent"' in {e["user_agent"] for e in events("apache2/combined.log")}  # \"
    api = events("nginx/api.log")
    assert all(e["duration_ms"] is not None for e in api)
    assert all(len(e["request_id"]) == 32 for e in api)  # NGINX's own $request_id
    xff = [dict(e["attributes"] or {}).get("http_x_forwarded_for") for e in api]
    assert "203.0.113.7, 10.0.0.1" in xff
    keyed = [e for e in api if e["api_key_id"]]
    assert keyed and all(e["api_key_id"].startswith("h:") for e in keyed)
    d = events("apache2/combined_D.log")
    assert all(e["duration_ms"] is not None and e["duration_ms"] >= 0 for e in d)  # %D in µs
    caddy = events("caddy/access.json")
    assert all(e["duration_ms"] is not None for e in caddy)
    haproxy = events("haproxy/httplog_capture.log")
    assert any(dict(e["attributes"])["captured_request_headers"] for e in haproxy)


# -- JSON lines keyed by variables (nginx-json): Arrow's JSON reader against json.loads ------

_JSON_KEYS = (
    "msec",
    "time_iso8601",
    "remote_addr",
    "remote_user",
    "request_method",
    "request_uri",
    "request",
    "status",
    "body_bytes_sent",
    "request_time",
    "upstream_response_time",
    "http_user_agent",
    "request_id",
    "http_referer",
)


@st.composite
def json_lines(draw: st.DrawFn) -> list[str]:
    out = []
    for _ in range(draw(st.integers(1, 20))):
        when = _T0 + timedelta(seconds=draw(seconds))
        odd = draw(st.integers(0, 9)) < 3
        extra = draw(st.lists(st.sampled_from(_JSON_KEYS), max_size=6, unique=True))
        keys = list(dict.fromkeys(["msec", "remote_addr", "request", "status", *extra]))
        rec: dict = {}
        for k in keys:
            v: object = draw(_var_strategy(k, when, odd))
            if odd and draw(st.integers(0, 5)) == 0 and str(v).isdigit():
                v = int(str(v))  # a JSON number, as a hand-written log_format may give
            rec[k] = v
        line = json.dumps(rec, ensure_ascii=odd and draw(st.booleans()))
        if draw(st.integers(0, 12)) == 0:
            line = line[: draw(st.integers(0, len(line)))]  # a cut line
        out.append(line)
    return out


def test_json_fast_path_equals_per_record_path():
    took = []

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(lines=json_lines())
    def check(lines):
        with tempfile.TemporaryDirectory() as d:
            log = Path(d) / "x.jsonl"
            log.write_text("\n".join(lines) + "\n")
            got = []
            for fast in (False, True):
                store = TelemetryStore(Path(d) / f"s{fast}")
                rep = ingest_files([log], "nginx-json", store, rejects_dir=Path(d) / "r", fast=fast)
                got.append((store.read().to_pylist(), rep.reasons, rep.read, rep.fast))
        assert got[0][:3] == got[1][:3]
        took.append(got[1][3])

    check()
    assert sum(took) > 0, "the JSON fast path never took a line"
