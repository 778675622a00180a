"""Adapters on real samples and on each gateway's documented examples."""

from __future__ import annotations

import gzip
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from telemetry.consumers import load_consumers
from telemetry.ingest import ingest_files
from telemetry.ingest.normalize import route_template
from telemetry.store import TelemetryStore
from tests.conftest import FIXTURES

GW = FIXTURES / "gateways"


def _ingest(paths, fmt, tmp_path, **kw):
    store = TelemetryStore(tmp_path / "telemetry")
    rep = ingest_files([Path(p) for p in paths], fmt, store, rejects_dir=tmp_path / "rejects", **kw)
    return rep, store


def _lines(path: Path) -> int:
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


@pytest.mark.parametrize("name", ["apache_combined.log", "hackers_combined.log"])
def test_real_combined_logs_counts_add_up(shared_data, tmp_path, name):
    src = shared_data / "logs" / name
    rep, store = _ingest([src], "combined", tmp_path)
    assert rep.read == _lines(src)
    assert rep.accepted + rep.rejected + rep.duplicate == rep.read
    assert store.count() == rep.accepted
    assert rep.accepted > 0.99 * rep.read


def test_real_log_truncated_line_is_quarantined_with_line_number(shared_data, tmp_path):
    src = shared_data / "logs" / "apache_combined.log"
    rep, _ = _ingest([src], "combined", tmp_path)
    assert rep.rejected == 1
    rejects = [json.loads(x) for x in rep.rejects_path.read_text().splitlines()]
    (bad,) = rejects
    assert bad["line"] == 8899 and "truncated" in bad["reason"]
    original = src.read_bytes().split(b"\n")[bad["line"] - 1].decode()
    assert bad["raw"] == original  # nothing lost: the raw line is kept whole


def test_identical_lines_stay_distinct_and_reingest_adds_nothing(shared_data, tmp_path):
    src = shared_data / "logs" / "apache_combined.log"
    raw = src.read_bytes().split(b"\n")
    n_dup_lines = len([x for x in raw if x]) - len({x for x in raw if x})
    assert n_dup_lines > 0  # the sample really has exact duplicate lines
    rep1, store = _ingest([src], "combined", tmp_path)
    assert rep1.duplicate == 0  # identical lines are distinct requests
    rep2, _ = _ingest([src], "combined", tmp_path)
    assert (rep2.accepted, rep2.duplicate, rep2.rejected) == (0, rep1.accepted, rep1.rejected)
    # a renamed, gzipped copy of the same log is recognised too
    gz = tmp_path / "rotated.log.1.gz"
    with gzip.open(gz, "wb") as fh:
        fh.write(src.read_bytes())
    rep3, _ = _ingest([gz], "combined", tmp_path)
    assert rep3.accepted == 0 and rep3.duplicate == rep1.accepted
    assert store.count() == rep1.accepted


def test_growing_log_adds_only_new_lines(shared_data, tmp_path):
    src = (shared_data / "logs" / "hackers_combined.log").read_bytes().splitlines(keepends=True)
    log = tmp_path / "access.log"
    log.write_bytes(b"".join(src[:1000]))
    rep1, _ = _ingest([log], "combined", tmp_path)
    log.write_bytes(b"".join(src))
    rep2, store = _ingest([log], "combined", tmp_path)
    assert rep1.accepted == 1000
    assert (rep2.duplicate, rep2.accepted) == (1000, len(src) - 1000)
    assert store.count() == len(src)


def test_combined_fields_map_to_the_contract(shared_data, tmp_path):
    _rep, store = _ingest([shared_data / "logs" / "hackers_combined.log"], "combined", tmp_path)
    t = store.read()
    row = next(
        r
        for r in t.to_pylist()
        if r["url_path"] == "/join_form" and r["http_request_method"] == "POST"
    )
    assert (
        row["client_id"] == row["client_address"]
    )  # no remote user: the address identifies the client
    assert row["timestamp"].tzinfo is not None
    first = min(t.column("timestamp").to_pylist())
    assert first == datetime(2015, 10, 25, 3, 11, 25, tzinfo=UTC)  # 04:11:25 +0100
    assert set(t.column("http_request_method").to_pylist()) <= {
        "GET",
        "POST",
        "HEAD",
        "PUT",
        "OPTIONS",
        "DELETE",
        "_OTHER",
    }


def test_malformed_lines_never_abort_the_batch(shared_data, tmp_path):
    good = (shared_data / "logs" / "hackers_combined.log").read_bytes().splitlines()[:50]
    bad = [
        b"this is not a log line",
        b'1.2.3.4 - - [32/Foo/2015:99:99:99 +0000] "GET / HTTP/1.1" 200 10 "-" "x"',
        b'1.2.3.4 - - [25/Oct/2015:04:11:25 +0100] "GET / HTTP/1.1" 200 10 "-" "unterminated',
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    ]
    log = tmp_path / "mixed.log"
    log.write_bytes(b"\n".join(good[:20] + bad + good[20:]) + b"\n")
    rep, _store = _ingest([log], "combined", tmp_path)
    assert (rep.read, rep.accepted, rep.rejected, rep.duplicate) == (54, 50, 4, 0)
    rejects = [json.loads(x) for x in rep.rejects_path.read_text().splitlines()]
    assert [r["line"] for r in rejects] == [21, 22, 23, 24]
    assert "bad timestamp" in rejects[1]["reason"]
    assert all(r["reason"] for r in rejects)


def test_kong_documented_example(tmp_path):
    rep, store = _ingest([GW / "kong_http_log.json"], "kong", tmp_path)
    assert (rep.read, rep.accepted, rep.rejected) == (1, 1, 0)
    (ev,) = store.read().to_pylist()
    assert ev["timestamp"] == datetime.fromtimestamp(1614232668.342, UTC)
    assert ev["client_id"] == "foo"  # Kong consumer username
    assert (
        ev["api_key_id"] == "c62c1455-9b1d-4f2d-8797-509ba83b8ae8"
    )  # the authenticated credential
    assert ev["client_address"] == "192.168.144.1"
    assert (ev["http_request_method"], ev["url_path"], ev["http_response_status_code"]) == (
        "GET",
        "/log",
        200,
    )
    assert (ev["duration_ms"], ev["upstream_duration_ms"]) == (515, 457)
    assert (ev["request_bytes"], ev["response_bytes"]) == (138, 827)
    assert ev["user_agent"] == "HTTPie/2.4.0"
    assert ev["upstream_service"] == "httpbin.org"


def test_kong_batched_arrays_and_identical_records(tmp_path):
    doc = json.loads((GW / "kong_http_log.json").read_text())
    path = tmp_path / "kong-batch.jsonl"
    # http-log with max_batch_size > 1 posts arrays; two batches, the first repeats the record
    path.write_text(
        json.dumps([doc, doc])
        + "\n"
        + json.dumps([doc])
        + "\n"
        + "{not json}\n"
        + json.dumps([doc, 7])
        + "\n"
    )
    rep, _store = _ingest([path], "kong", tmp_path)
    assert (rep.read, rep.accepted, rep.rejected, rep.duplicate) == (6, 4, 2, 0)
    reasons = sorted(json.loads(x)["reason"] for x in rep.rejects_path.read_text().splitlines())
    assert reasons[0].startswith("array member 1 is not a JSON object")
    assert reasons[1].startswith("invalid JSON")


def test_envoy_documented_example_is_rejected_with_a_reason(tmp_path):
    # Envoy's own json_format example logs only protocol, duration and a header:
    # there is no time, method or path, so it cannot become an event
    rep, _ = _ingest([GW / "envoy_access_log.jsonl"], "envoy", tmp_path)
    assert (rep.read, rep.accepted, rep.rejected) == (1, 0, 1)
    # a one-record file: the rejects file may not outgrow the input, so the record is
    # in the summary beside it (one example per reason), and on screen
    assert rep.rejects_path.stat().st_size <= (GW / "envoy_access_log.jsonl").stat().st_size
    summary = json.loads(rep.rejects_path.with_suffix(".summary.json").read_text())
    (bad,) = summary["examples"].values()
    assert sum(summary["counts"].values()) == 1
    assert "start_time" in bad["reason"] and "method" in bad["reason"] and "path" in bad["reason"]


_CLF = re.compile(
    r'^(\S+) \S+ (\S+) \[([^\]]+)\] "((?:[^"\\]|\\.)*)" (\d{3}) (\S+) "((?:[^"\\]|\\.)*)" "((?:[^"\\]|\\.)*)"$'
)


def _nginx_log_format(conf: Path) -> dict[str, str]:
    """key -> $variable, from the documented ``log_format ... escape=json``."""
    return dict(re.findall(r'"(\w+)":\s*"\$(\w+)"', conf.read_text()))


def test_nginx_json_documented_format_matches_combined(shared_data, tmp_path):
    """Render real requests through the documented NGINX JSON log_format; the
    events must equal those from the same requests in combined format."""
    fmt = _nginx_log_format(GW / "nginx_json_log_format.conf")
    assert "remote_addr" in fmt and fmt["http_referrer"] == "http_referer"
    src = (shared_data / "logs" / "hackers_combined.log").read_text().splitlines()[:300]
    records = []
    for line in src:
        m = _CLF.match(line)
        assert m, line
        addr, user, ts, req, status, size, ref, ua = m.groups()
        var = {
            "remote_addr": addr,
            "remote_user": user if user != "-" else "",
            "time_local": ts,
            "request": req.replace('\\"', '"'),
            "status": status,
            "body_bytes_sent": size if size != "-" else "0",
            "request_time": "0.000",
            "http_referer": ref,
            "http_user_agent": ua.replace('\\"', '"'),
        }
        records.append(json.dumps({k: var[v] for k, v in fmt.items()}))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    njson = tmp_path / "nginx.json.log"
    njson.write_text("\n".join(records) + "\n")
    comb = tmp_path / "combined.log"
    comb.write_text("\n".join(src) + "\n")
    rep_j, st_j = _ingest([njson], "nginx-json", tmp_path / "a")
    rep_c, st_c = _ingest([comb], "combined", tmp_path / "b")
    assert rep_j.accepted == rep_c.accepted == 300
    cols = [
        "timestamp",
        "client_id",
        "client_address",
        "user_agent",
        "http_request_method",
        "url_path",
        "url_query",
        "http_route",
        "http_response_status_code",
    ]
    key = [(c, "ascending") for c in cols]
    assert st_j.read().select(cols).sort_by(key).equals(st_c.read().select(cols).sort_by(key))


def test_consumers_table_fills_client_attributes(shared_data, tmp_path):
    consumers = tmp_path / "consumers.csv"
    consumers.write_text("client_id,tier,region,device_type\n23.95.237.180,free,us-east,server\n")
    _rep, store = _ingest(
        [shared_data / "logs" / "hackers_combined.log"],
        "combined",
        tmp_path,
        consumers=load_consumers(consumers),
    )
    rows = store.read().to_pylist()
    known = [r for r in rows if r["client_id"] == "23.95.237.180"]
    assert known and all(
        (r["tier"], r["region"], r["device_type"]) == ("free", "us-east", "server") for r in known
    )
    other = [r for r in rows if r["client_id"] != "23.95.237.180"]
    assert all(r["tier"] is None for r in other)
    assert {r["device_type"] for r in other} <= {
        "browser",
        "bot",
        "mobile",
        "server",
        "iot",
        "other",
        None,
    }


def test_consumers_table_with_unknown_column_is_rejected(tmp_path):
    bad = tmp_path / "c.csv"
    bad.write_text("client_id,plan\nx,gold\n")
    with pytest.raises(ValueError, match="plan"):
        load_consumers(bad)


def test_unknown_format_and_missing_file(tmp_path):
    store = TelemetryStore(tmp_path)
    with pytest.raises(ValueError, match="unknown format"):
        ingest_files([tmp_path], "apache2", store, rejects_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"nope\.log"):
        ingest_files([tmp_path / "nope.log"], "combined", store, rejects_dir=tmp_path)


@pytest.mark.parametrize(
    "path, route",
    [
        ("/v1/orders/12345", "/v1/orders/{id}"),
        ("/v1/users/9f1c2a4e-1b2c-4d5e-8f90-1234567890ab/keys", "/v1/users/{id}/keys"),
        (
            "/presentations/logstash-monitorama-2013/images/kibana.png",
            "/presentations/logstash-monitorama-2013/images/kibana.png",
        ),
        ("/", "/"),
    ],
)
def test_route_template(path, route):
    assert route_template(path) == route


def test_large_gzip_file_streams(tmp_path, shared_data):
    """A file larger than one batch is ingested batch by batch with the same result."""
    src = shared_data / "logs" / "apache_combined.log"
    big = tmp_path / "big.log.gz"
    with gzip.open(big, "wb") as out:
        out.write(src.read_bytes())
    rep, store = _ingest([big], "combined", tmp_path, batch_size=700)
    assert rep.accepted == 9999 and rep.rejected == 1
    assert store.count() == 9999
