"""The demo's payload injector: attacks in every part of a request, and the summary that
matches the gateway's telemetry back to what was sent."""

from __future__ import annotations

import pandas as pd


def test_injector_covers_headers_cookies_and_the_path():
    from demo.payload_act import demo_requests

    probes = demo_requests()
    where = {(p.where, p.truth != "norm") for p in probes}
    assert {("query", True), ("header", True), ("cookie", True), ("path", True)} <= where
    assert {("query", False), ("header", False), ("cookie", False)} <= where
    assert all(p.header for p in probes if p.where == "header")
    assert not any("\n" in p.value or "\r" in p.value for p in probes if p.where == "header")


def test_scan_summary_groups_by_where_and_truth():
    from demo.payload_act import Probe, scan_summary

    probes = [Probe("query", "x", "sqli"), Probe("header", "y", "jndi", "User-Agent")]
    ev = pd.DataFrame(
        {
            "request_id": ["a", "b", "c"],
            "url_query": ["probe=0&q=x", "probe=1", "page=2"],
            "scan_label": ["sqli", "benign", "benign"],
            "scan_action": ["shadow_block", None, None],
            "scan_score": [0.99, 0.1, 0.1],
        }
    )
    rows = {(r["where"], r["true_class"]): r for r in scan_summary(ev, probes)}
    assert set(rows) == {("query", "sqli"), ("header", "jndi")}
    assert rows[("query", "sqli")]["flagged"] == 1 and rows[("header", "jndi")]["flagged"] == 0
