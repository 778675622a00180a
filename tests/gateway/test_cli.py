"""Gateway commands: consumers, policy push/rollback/export, backtest."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from gatewise.cli import app
from tests.conftest import REPO

runner = CliRunner()


def test_consumers_add_prints_the_key_once_and_stores_its_hash(env):
    res = runner.invoke(
        app, ["consumers", "add", "alice", "--tier", "pro", "--roles", "consumer,admin"]
    )
    assert res.exit_code == 0, res.output
    key = res.output.strip()
    stored = (env / "gateway" / "consumers.yaml").read_text()
    assert key.startswith("gw_") and key not in stored and "alice" in stored
    from gateway.auth import ConsumersFile, hash_key

    c = ConsumersFile.load(env / "gateway" / "consumers.yaml").consumers[0]
    assert (
        c.tier == "pro"
        and c.roles == ["consumer", "admin"]
        and c.api_keys[0].sha256 == hash_key(key)
    )
    kid = key.split("_")[1]
    assert runner.invoke(app, ["consumers", "revoke", kid]).exit_code == 0
    assert ConsumersFile.load(env / "gateway" / "consumers.yaml").consumers[0].api_keys[0].revoked


def test_policy_init_push_rollback_export(env, tmp_path):
    assert runner.invoke(app, ["policy", "init"]).exit_code == 0
    doc = json.loads(runner.invoke(app, ["policy", "show"]).output)
    assert doc["version"] == 1 and doc["targets"]["abuse"]["mode"] == "shadow"
    doc["tiers"]["free"]["requests_per_minute"] = -1
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    res = runner.invoke(app, ["policy", "push", str(bad)])
    assert res.exit_code == 2 and "tiers.free.requests_per_minute" in res.output
    doc["tiers"]["free"]["requests_per_minute"] = 30
    good = tmp_path / "good.json"
    good.write_text(json.dumps(doc))
    res = runner.invoke(app, ["policy", "push", str(good), "--reason", "halve free"])
    assert res.exit_code == 0 and "v2" in res.output
    assert runner.invoke(app, ["policy", "rollback", "1"]).exit_code == 0
    assert (
        json.loads(runner.invoke(app, ["policy", "show"]).output)["tiers"]["free"][
            "requests_per_minute"
        ]
        == 60
    )
    assert "halve free" in runner.invoke(app, ["policy", "history"]).output
    for fmt in ("kong", "envoy", "nginx"):
        res = runner.invoke(app, ["policy", "export", "--to", fmt])
        assert res.exit_code == 0 and len(res.output) > 100, fmt
    res = runner.invoke(app, ["policy", "export", "--to", "haproxy"])
    assert res.exit_code == 2 and "kong" in res.output


def test_backtest_command(env):
    from config.settings import load_settings
    from labeling.simulated import simulate_labelled

    s = load_settings(REPO / "gatewise.yaml")
    simulate_labelled(
        s.model_copy(
            update={"simulator": s.simulator.model_copy(update={"clients": 60, "days": 0.1})}
        )
    )
    res = runner.invoke(app, ["backtest", "--out", str(env / "d.parquet")])
    assert res.exit_code == 0, res.output
    assert "abusive requests stopped" in res.output and "by group" in res.output
    import pandas as pd

    d = pd.read_parquet(env / "d.parquet")
    assert {"model_score", "band", "would_action", "would_band", "static_action"} <= set(d)
    assert len(d) > 0 and set(d["decision"]) <= {
        "allow",
        "throttle",
        "shadow_throttle",
        "shadow_block",
        "refused",
    }
    res = runner.invoke(app, ["backtest", "--start", "last tuesday"])
    assert res.exit_code == 2 and "start: 'last tuesday' is not an ISO date" in res.output
    res = runner.invoke(app, ["backtest", "--model", "3"])
    assert res.exit_code == 2 and "--model 3" in res.output  # no such model registered here


def test_policy_export_nginx_lua_writes_a_data_plane(env, tmp_path):
    """``--to nginx-lua``: the prefix directory NGINX runs, with the active policy's bundle;
    a bad policy document is refused with its field named and nothing is written."""
    assert runner.invoke(app, ["consumers", "add", "alice"]).exit_code == 0
    out = tmp_path / "dp"
    res = runner.invoke(app, ["policy", "export", "--to", "nginx-lua", "-o", str(out)])
    assert res.exit_code == 0, res.output
    bundle = json.loads((out / "bundle.json").read_text())
    assert [c["id"] for c in bundle["consumers"]] == ["alice"]
    assert "access_by_lua_block" in (out / "nginx.conf").read_text()
    assert (out / "lua" / "gatewise.lua").exists()
    (env / "policy" / "active.json").write_text('{"tiers": {}}')
    bad = runner.invoke(app, ["policy", "export", "--to", "nginx-lua", "-o", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "default_tier" in bad.output
    assert not (tmp_path / "x").exists()
