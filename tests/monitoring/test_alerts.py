"""Event-pattern alerts: rule validation, window semantics, state, sinks."""

from __future__ import annotations

import itertools
import json
import logging
import random
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pydantic import ValidationError

from config.stream import AlertRule, AlertStep
from monitoring.alerts import (
    ALERT_SCHEMA,
    Alert,
    AlertEngine,
    LogSink,
    StoreSink,
    WebhookSink,
    default_rules,
    read_alerts,
)
from telemetry.schema import EVENT_SCHEMA

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)  # aligned to 60 s and 300 s buckets
NOW = 1_750_000_000.0
LOGIN = "/v1/auth/login"
_ids = itertools.count()


def ev(
    s: float,
    status: int = 200,
    client: str = "c-1",
    route: str = "/v1/orders",
    upstream: str | None = "orders",
) -> dict[str, Any]:
    """One telemetry row ``s`` seconds after T0, with the required columns filled."""
    return {
        "timestamp": T0 + timedelta(seconds=s),
        "request_id": f"r-{next(_ids)}",
        "client_id": client,
        "http_request_method": "POST" if route == LOGIN else "GET",
        "url_path": route,
        "http_route": route,
        "http_response_status_code": status,
        "upstream_service": upstream,
    }


def table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=EVENT_SCHEMA)


def engine(*rules: AlertRule, **kw: Any) -> AlertEngine:
    return AlertEngine(list(rules) or default_rules(), clock=lambda: NOW, **kw)


def rule(name: str) -> AlertRule:
    return next(r for r in default_rules() if r.name == name)


def throttled(min_count: int = 3, window_s: float = 60) -> AlertRule:
    return AlertRule(
        name="throttled",
        kind="threshold",
        window_s=window_s,
        where="http_response_status_code = 429",
        min_count=min_count,
    )


def takeover(n_401: int, success_at: float, client: str = "c-17") -> list[dict[str, Any]]:
    rows = [ev(10 + i, 401, client, LOGIN) for i in range(n_401)]
    return [*rows, ev(success_at, 200, client, LOGIN)]


# -- rules -------------------------------------------------------------------
def test_default_rules_build_an_engine():
    names = [r.name for r in default_rules()]
    assert names == ["account_takeover", "upstream_5xx_burst", "credential_stuffing"]
    assert engine().counts == dict.fromkeys(names, 0)


@pytest.mark.parametrize(
    ("field", "rule_kw"),
    [
        ("where", {"kind": "threshold", "where": "http_response_status_code = = 401"}),
        ("where", {"kind": "threshold", "where": "no_such_column = 1"}),
        ("where", {"kind": "threshold", "where": "1 = 1) OR (1 = 1"}),
        (
            "first.where",
            {"kind": "sequence", "first": {"where": "status = 401"}, "then": {"where": "true"}},
        ),
        (
            "then.where",
            {"kind": "sequence", "first": {"where": "true"}, "then": {"where": "http_route ="}},
        ),
    ],
)
def test_invalid_sql_names_the_rule_and_field(field, rule_kw):
    bad = AlertRule(name="bad_rule", **rule_kw)
    with pytest.raises(ValueError, match=rf"'bad_rule'.*`{field}`"):
        AlertEngine([rule("upstream_5xx_burst"), bad])


def test_non_boolean_predicate_and_unknown_key_are_rejected():
    with pytest.raises(ValueError, match=r"'r1'.*`where`.*not a boolean"):
        AlertEngine([AlertRule(name="r1", kind="threshold", where="http_route")])
    with pytest.raises(ValueError, match=r"'r2'.*`key`"):
        AlertEngine([AlertRule(name="r2", kind="threshold", key="nope", where="true")])


@pytest.mark.parametrize(
    ("kw", "mentions"),
    [
        ({"kind": "sequence", "first": {"where": "true"}}, "`then`"),
        ({"kind": "sequence", "then": {"where": "true"}}, "`first`"),
        ({"kind": "threshold"}, "`where`"),
        ({"kind": "threshold", "where": "true", "then": {"where": "true"}}, "`first`/`then`"),
        (
            {
                "kind": "sequence",
                "first": {"where": "true"},
                "then": {"where": "true", "min_count": 2},
            },
            "then.min_count",
        ),
        ({"kind": "threshold", "where": "true", "name": "Bad-Name"}, "name"),
        ({"kind": "threshold", "where": "true", "windows": 60}, "windows"),
    ],
)
def test_rule_model_rejects_incomplete_or_unknown_fields(kw, mentions):
    with pytest.raises(ValidationError, match=mentions):
        AlertRule(**{"name": "r", **kw})


def test_rules_round_trip_through_config_dicts():
    for r in default_rules():
        assert AlertRule.model_validate(json.loads(r.model_dump_json())) == r
    assert isinstance(rule("account_takeover").first, AlertStep)


# -- threshold ---------------------------------------------------------------
def test_threshold_fires_once_per_bucket_across_batches_and_again_in_the_next():
    eng = engine(throttled(min_count=3))
    first = eng.process(table([ev(1, 429), ev(2, 429), ev(3, 429), ev(4, 429)]))
    assert len(first) == 1
    a = first[0]
    assert a.alert_id == "throttled:c-1:2025-03-01T12:00:00+00:00"
    assert (a.window_start, a.window_end) == (T0, T0 + timedelta(seconds=60))
    assert (a.first_ts, a.last_ts, a.count) == (
        T0 + timedelta(seconds=1),
        T0 + timedelta(seconds=3),
        3,
    )
    assert a.detected_at == datetime.fromtimestamp(NOW, UTC)
    assert a.key_column == "client_id" and a.key == "c-1" and "3 ×" in a.message
    # the pattern goes on in the same bucket: nothing new
    assert eng.process(table([ev(s, 429) for s in range(10, 20)])) == []
    # next bucket: (t - 60, t] at t = 61 s still holds >= 3 matches
    again = eng.process(table([ev(61, 429), ev(62, 429)]))
    assert [x.window_start for x in again] == [T0 + timedelta(seconds=60)]
    assert again[0].last_ts == T0 + timedelta(seconds=61)
    assert eng.counts == {"throttled": 2}


def test_threshold_window_is_sliding_and_excludes_its_left_edge():
    eng = engine(throttled(min_count=3, window_s=10))
    # 0, 5, 10 s: at t = 10 the window (0, 10] holds 2 matches only
    assert eng.process(table([ev(0, 429), ev(5, 429), ev(10, 429)])) == []
    fired = eng.process(table([ev(14.5, 429)]))  # (4.5, 14.5] holds 5, 10, 14.5
    assert [(a.count, a.first_ts) for a in fired] == [(3, T0 + timedelta(seconds=5))]


def test_threshold_by_upstream_ignores_null_keys():
    eng = engine(rule("upstream_5xx_burst"))
    rows = [ev(i, 503, client=f"c-{i}", upstream=None) for i in range(25)]
    rows += [ev(i, 502, client=f"c-{i}", upstream="payments") for i in range(19)]
    rows += [ev(i, 200, upstream="payments") for i in range(5)]
    assert eng.process(table(rows)) == []
    fired = eng.process(table([ev(30, 500, upstream="payments")]))
    assert [(a.key_column, a.key, a.count, a.severity) for a in fired] == [
        ("upstream_service", "payments", 20, "critical")
    ]


# -- sequence ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("rows", "fires"),
    [
        (takeover(5, success_at=20), True),
        (takeover(7, success_at=200), True),
        (takeover(4, success_at=20), False),
        (takeover(5, success_at=5), False),  # the 200 comes before the 401s
        (takeover(5, success_at=10 + 4), False),  # same instant as the 5th 401: not after it
        (takeover(5, success_at=10 + 301), False),  # the first 401 is out of the window
        (takeover(5, success_at=10 + 300), True),  # [t - 300, t) includes its left edge
        ([*takeover(5, 20)[:-1], ev(20, 200, "c-18", LOGIN)], False),  # another client
        ([*takeover(5, 20)[:-1], ev(20, 200, "c-17", "/v1/orders")], False),  # not a login
    ],
)
def test_account_takeover_sequence(rows, fires):
    fired = engine(rule("account_takeover")).process(table(rows))
    assert len(fired) == int(fires)


def test_account_takeover_alert_describes_the_evidence():
    (a,) = engine().process(table(takeover(7, success_at=200)))
    assert a.rule == "account_takeover" and a.severity == "high" and a.key == "c-17"
    assert (a.count, a.first_ts, a.last_ts) == (
        7,
        T0 + timedelta(seconds=10),
        T0 + timedelta(seconds=200),
    )
    assert a.window_start == T0 and a.window_end == T0 + timedelta(seconds=300)
    assert a.message.startswith("client_id c-17: 7 × ") and "within 300 s" in a.message
    assert json.loads(json.dumps(a.to_dict()))["last_ts"] == "2025-03-01T12:03:20+00:00"


def test_sequence_out_of_order_inside_a_batch_still_fires():
    *failures, success = takeover(5, success_at=20)
    random.Random(3).shuffle(failures)
    fired = engine(rule("account_takeover")).process(table([success, *failures]))
    assert [(a.count, a.last_ts) for a in fired] == [(5, T0 + timedelta(seconds=20))]


def test_sequence_late_first_events_across_batches_complete_the_pattern():
    eng = engine(rule("account_takeover"))
    rows = takeover(5, success_at=20)
    assert eng.process(table(rows[3:])) == []  # two 401s and the success
    fired = eng.process(table(rows[:3]))  # three earlier 401s arrive late
    assert [(a.count, a.last_ts) for a in fired] == [(5, T0 + timedelta(seconds=20))]


# -- state -------------------------------------------------------------------
def _story() -> tuple[pa.Table, pa.Table]:
    b1 = takeover(4, success_at=5) + [ev(s, 503, upstream="payments") for s in range(40, 55)]
    b2 = [ev(14, 401, "c-17", LOGIN), ev(30, 200, "c-17", LOGIN)]
    b2 += [ev(s, 503, upstream="payments") for s in range(55, 60)]  # the 20th at 59 s
    b2 += [ev(70 + s, 401, "c-9", LOGIN) for s in range(30)]
    return table(b1), table(b2)


def _summary(alerts: list[Alert]) -> list[dict[str, Any]]:
    return [a.to_dict() for a in alerts]


def test_state_round_trip_gives_the_same_alerts_and_no_refire_on_redelivery():
    b1, b2 = _story()
    one = engine()
    expected = one.process(b1) + one.process(b2)
    assert sorted(a.rule for a in expected) == [
        "account_takeover",
        "credential_stuffing",
        "upstream_5xx_burst",
    ]

    first = engine()
    got = first.process(b1)
    saved = json.loads(json.dumps(first.state()))
    second = engine()
    second.load_state(saved)
    got += second.process(b2)
    assert _summary(got) == _summary(expected)
    assert second.process(b2) == []
    assert second.process(pa.concat_tables([b1, b2])) == []


def test_redelivered_events_are_not_counted_twice():
    eng = engine(throttled(min_count=3))
    batch = table([ev(200, 429), ev(201, 429)])
    assert eng.process(batch) == []
    assert eng.process(batch) == []  # four rows, two events: still below 3
    restored = engine(throttled(min_count=3))
    restored.load_state(json.loads(json.dumps(eng.state())))
    assert restored.process(batch) == []
    assert len(restored.process(table([ev(202, 429)]))) == 1


def test_a_very_late_redelivery_never_fires_twice():
    eng = engine(throttled(min_count=3))
    early = table([ev(1, 429), ev(2, 429), ev(3, 429)])
    assert len(eng.process(early)) == 1
    assert len(eng.process(table([ev(300 + s, 429) for s in (1, 2, 3)]))) == 1
    # bucket 0 is more than 2 buckets behind: its fired id is gone, so it must not fire again
    assert eng.process(early) == []
    assert eng.process(table([ev(4, 429), ev(5, 429), ev(6, 429)])) == []


def test_tables_outside_the_contract_schema_are_conformed():
    rows = [{k: v for k, v in ev(s, 429).items() if v is not None} for s in range(3)]
    loose = pa.Table.from_pylist(rows)  # int64 status, no nullable columns
    assert loose.schema != EVENT_SCHEMA
    assert len(engine(throttled()).process(loose)) == 1


def test_state_is_bounded_to_the_window_and_recent_buckets():
    eng = engine(throttled(min_count=2, window_s=60))
    for minute in range(10):
        eng.process(table([ev(minute * 60 + s, 429) for s in (1, 2, 3)]))
    st = eng.state()
    newest = int((T0 + timedelta(seconds=9 * 60 + 3)).timestamp() * 1_000_000)
    ts = st["rules"]["throttled"]["events"]["c-1"]["ts_us"]
    assert ts and min(ts) >= newest - 60_000_000
    assert len(st["fired"]["throttled"]) == 3  # this bucket and the two before it
    assert eng.counts == {"throttled": 10}


def test_changed_rule_starts_with_an_empty_window():
    eng = engine(throttled(min_count=3))
    eng.process(table([ev(1, 429), ev(2, 429)]))
    saved = eng.state()
    other = throttled(min_count=3).model_copy(update={"where": "http_response_status_code >= 429"})
    changed = engine(other)
    changed.load_state(saved)
    assert changed.process(table([ev(3, 429)])) == []
    longer = engine(throttled(min_count=3, window_s=120))  # same matches, longer window
    longer.load_state(saved)
    assert len(longer.process(table([ev(3, 429)]))) == 1


def _is_5xx(r: dict[str, Any]) -> bool:
    return r["http_response_status_code"] >= 500


def _is_401(r: dict[str, Any]) -> bool:
    return r["http_response_status_code"] == 401


def _is_login_ok(r: dict[str, Any]) -> bool:
    return r["http_route"] == LOGIN and r["http_response_status_code"] < 300


def _reference(rule_: AlertRule, rows: list[dict[str, Any]]) -> set[tuple]:
    """Brute force over all events in time order: the first hit of each (key, bucket)."""
    seq = rule_.kind == "sequence"
    is_a, is_cand = (_is_401, _is_login_ok) if seq else (_is_5xx, _is_5xx)
    need = rule_.first.min_count if rule_.first else rule_.min_count
    w = timedelta(seconds=rule_.window_s)
    out: dict[tuple, tuple] = {}
    for r in sorted(rows, key=lambda r: r["timestamp"]):
        key, t = r[rule_.key], r["timestamp"]
        if key is None or not is_cand(r):
            continue
        ts = [x["timestamp"] for x in rows if x[rule_.key] == key and is_a(x)]
        ts = [x for x in ts if (t - w <= x < t if seq else t - w < x <= t)]
        if len(ts) >= need:
            out.setdefault((key, int(t.timestamp() // rule_.window_s)), (t, len(ts), min(ts)))
    return {(k, b, *v) for (k, b), v in out.items()}


def test_engine_matches_a_brute_force_reference_on_random_traffic():
    rng = random.Random(11)
    rows = [
        ev(
            rng.randrange(0, 400_000) / 1000,
            rng.choice([200, 200, 401, 401, 503, 503]),
            client=f"c-{rng.randrange(6)}",
            route=rng.choice([LOGIN, LOGIN, "/v1/orders"]),
            upstream=rng.choice(["orders", "auth", None]),
        )
        for _ in range(1500)
    ]
    rows.sort(key=lambda r: r["timestamp"])
    batches = [rows[i : i + 200] for i in range(0, len(rows), 200)]
    for b in batches:
        rng.shuffle(b)
    rules = [rule("account_takeover"), rule("upstream_5xx_burst")]
    eng = engine(*rules)
    got = [a for b in batches for a in eng.process(table(b))]
    for r in rules:
        mine = {
            (a.key, int(a.window_start.timestamp() // r.window_s), a.last_ts, a.count, a.first_ts)
            for a in got
            if a.rule == r.name
        }
        assert mine == _reference(r, rows), r.name
        assert mine  # the traffic does exercise the rule


def test_a_big_batch_fires_once_per_upstream_and_bucket():
    rows = [ev(i * 0.005, 503, client=f"c-{i % 500}", upstream=f"u{i % 3}") for i in range(20_000)]
    fired = engine(rule("upstream_5xx_burst")).process(table(rows))
    assert sorted((a.key, a.window_start) for a in fired) == [
        (f"u{u}", T0 + timedelta(seconds=60 * m)) for u in range(3) for m in range(2)
    ]


# -- sinks -------------------------------------------------------------------
class _Recorder:
    def __init__(self) -> None:
        self.batches: list[list[Alert]] = []

    def emit(self, alerts: list[Alert]) -> None:
        self.batches.append(alerts)


class _Broken:
    def emit(self, alerts: list[Alert]) -> None:
        raise OSError("disk full")


def test_new_alerts_go_to_every_sink_even_when_one_breaks():
    rec = _Recorder()
    eng = engine(throttled(), sinks=[_Broken(), rec])
    fired = eng.process(table([ev(s, 429) for s in range(5)]))
    assert eng.process(table([ev(6, 429)])) == []
    assert rec.batches == [fired]


def test_log_sink_writes_one_line_per_alert(caplog):
    eng = engine(sinks=[LogSink()])
    with caplog.at_level(logging.WARNING, logger="gatewise.alerts"):
        fired = eng.process(_story()[0])
        fired += eng.process(_story()[1])
    lines = [r.getMessage() for r in caplog.records if r.name == "gatewise.alerts"]
    assert len(lines) == len(fired) == 3
    assert all(a.alert_id in line for a, line in zip(fired, lines, strict=True))


def test_store_sink_appends_and_read_alerts_reads_back(tmp_path: Path):
    assert read_alerts(tmp_path / "none").schema == ALERT_SCHEMA
    sink = StoreSink(tmp_path / "alerts")
    eng = engine(sinks=[sink])
    b1, b2 = _story()
    fired = eng.process(b1) + eng.process(b2)
    sink.emit(fired[:1])  # a re-delivery stores a duplicate; reading dedupes it
    files = list((tmp_path / "alerts").glob("date=2025-03-01/part-*.parquet"))
    assert len(files) == 2
    back = read_alerts(tmp_path / "alerts")
    assert back.schema == ALERT_SCHEMA
    assert sorted(back.column("alert_id").to_pylist()) == sorted(a.alert_id for a in fired)
    row = next(r for r in back.to_pylist() if r["rule"] == "account_takeover")
    assert row["last_ts"] == T0 + timedelta(seconds=30) and row["count"] == 5


class _HookServer(ThreadingHTTPServer):
    bodies: list[dict[str, Any]]


class _Hook(BaseHTTPRequestHandler):
    server: _HookServer

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.bodies.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def hook_server() -> Iterator[_HookServer]:
    server = _HookServer(("127.0.0.1", 0), _Hook)
    server.bodies = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_webhook_sink_posts_alerts_from_a_background_thread(hook_server):
    url = f"http://127.0.0.1:{hook_server.server_address[1]}/alerts"
    sink = WebhookSink(url, timeout_s=2.0)
    eng = engine(sinks=[sink])
    fired = eng.process(_story()[0]) + eng.process(_story()[1])
    sink.close()
    got = [a for body in hook_server.bodies for a in body["alerts"]]
    assert got == [a.to_dict() for a in fired]
    assert (sink.sent, sink.failed) == (3, 0)


def test_webhook_sink_counts_failures_without_raising():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sink = WebhookSink(f"http://127.0.0.1:{port}/alerts", timeout_s=0.5)
    eng = engine(throttled(), sinks=[sink])
    assert len(eng.process(table([ev(s, 429) for s in range(3)]))) == 1
    sink.close()
    assert (sink.sent, sink.failed) == (0, 1)
    sink.emit(eng.process(table([ev(61, 429), ev(62, 429), ev(63, 429)])))  # after close
    assert (sink.sent, sink.failed) == (0, 3)


def test_module_import_stays_light():
    code = (
        "import sys; import monitoring.alerts; "
        "print([m for m in ('pyarrow', 'duckdb', 'numpy', 'httpx') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
