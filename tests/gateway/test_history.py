"""Simulated history as a gateway recorded it: refusals in, backing-off clients cut short."""

from __future__ import annotations

import numpy as np

from config.simulator import SimulatorSettings
from gateway.history import through_gateway
from gateway.policy import default_policy
from telemetry.simulator import simulate


def test_refusals_and_backoff_are_in_the_history():
    sim = simulate(SimulatorSettings(clients=300, days=0.25, seed=8))
    cl = sim.clients.to_pandas()
    abusive = set(cl.loc[cl["abusive"], "client_id"])
    tight = default_policy({"free": 20, "pro": 60, "enterprise": 200})
    out = through_gateway(sim.events, tight, abusive, seed=1).to_pandas()
    before = sim.events.to_pandas()
    assert out.schema if hasattr(out, "schema") else True
    refused = out["ratelimit_decision"] == "throttle"
    assert refused.sum() > 100
    assert (out.loc[refused, "http_response_status_code"] == 429).all()
    assert out.loc[refused, "upstream_duration_ms"].isna().all()
    # legitimate clients told to wait mostly did: some of their requests were never sent
    n_before = before.groupby("client_id").size()
    n_after = out.groupby("client_id").size().reindex(n_before.index, fill_value=0)
    lost = n_before - n_after
    legit_lost = lost[~lost.index.isin(abusive)]
    assert legit_lost.sum() > 0
    # abusive clients keep hammering: nothing of theirs is dropped
    assert lost[lost.index.isin(abusive)].sum() == 0
    # what was sent keeps its id; what was refused before any policy stays as recorded
    assert set(out["request_id"]) <= set(before["request_id"])
    pre = before[before["auth_result"] == "invalid_key"]
    kept = out.set_index("request_id").loc[list(set(pre["request_id"]) & set(out["request_id"]))]
    assert (kept["http_response_status_code"] == 401).all()
    # a policy loose enough refuses nothing and changes nothing
    loose = default_policy({"free": 100_000, "pro": 100_000, "enterprise": 100_000})
    same = through_gateway(sim.events, loose, abusive, seed=1)
    assert same.num_rows == sim.events.num_rows
    assert np.array_equal(
        np.sort(same.column("http_response_status_code").to_numpy()),
        np.sort(sim.events.column("http_response_status_code").to_numpy()),
    )


def test_the_simulate_command_records_the_gateway(env):
    from typer.testing import CliRunner

    from gatewise.cli import app
    from telemetry.store import TelemetryStore

    res = CliRunner().invoke(app, ["simulate", "--clients", "150", "--days", "0.2", "--seed", "3"])
    assert res.exit_code == 0, res.output
    ev = TelemetryStore(env / "telemetry").read().to_pandas()
    assert (ev["http_response_status_code"] == 429).any()
    assert set(ev["ratelimit_decision"].dropna()) >= {"allow", "throttle"}
