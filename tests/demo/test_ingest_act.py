"""The demo's logs act: three servers' formats detected, counts that add up, reasons shown."""

from __future__ import annotations

from types import SimpleNamespace

from rich.console import Console

from config.settings import load_settings
from config.simulator import SimulatorSettings
from demo.ingest_act import BROKEN, ingest_demo
from telemetry.simulator import simulate
from tests.conftest import REPO


def test_ingest_act_detects_each_format_and_counts_add_up(tmp_path):
    s = load_settings(REPO / "gatewise.yaml", data_dir=tmp_path)
    run = SimpleNamespace(result=simulate(SimulatorSettings(clients=80, days=0.1, seed=5)))
    console = Console(record=True, width=140)
    out = ingest_demo(console, s, run, hours=1.0)
    assert {k: v["format"] for k, v in out.items()} == {
        "nginx_main": "nginx:main",
        "haproxy": "haproxy",
        "alb": "alb",
    }
    requests = out["alb"]["read"]  # the ALB log has no broken lines
    for name, v in out.items():
        assert v["read"] == requests + len(BROKEN[name])
        assert v["accepted"] + v["rejected"] == v["read"]
    assert out["nginx_main"]["reasons"] == ["unbalanced quotes (truncated line?)"]
    assert "the client left before any response" in out["haproxy"]["reasons"][0]
    assert "--format auto" in console.export_text()
