"""gatewise schedule: the three deployments and their schedules, registered on a Prefect API."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

pytestmark = pytest.mark.integration


def test_deployments_register_with_their_schedules(settings, prefect_harness):
    from prefect.client.orchestration import get_client

    from flows.schedule import deployments, ensure_server

    url, proc = ensure_server(settings)  # the harness's API answers: nothing is started
    assert proc is None and url.endswith("/api")
    ids = [d.apply() for d in deployments(settings, None)]

    async def read():
        async with get_client() as c:
            return [await c.read_deployment(i) for i in ids]

    got = {f"{d.name}": d for d in asyncio.run(read())}
    assert set(got) == {"hourly", "every-15-min", "nightly"}
    assert got["hourly"].schedules[0].schedule.interval == timedelta(hours=1)
    assert got["every-15-min"].schedules[0].schedule.interval == timedelta(minutes=15)
    assert got["nightly"].schedules[0].schedule.cron == "0 2 * * *"
    assert got["every-15-min"].parameters["data_dir"] == str(settings.data_dir.resolve())
    assert got["nightly"].parameters["target"] == "abuse"


def test_drift_starts_the_served_train_deployment_and_not_again_while_fresh(
    settings, prefect_harness, tmp_path
):
    import mlflow
    from prefect.client.orchestration import get_client

    from flows.monitor import _retrain
    from flows.schedule import deployments

    ids = {d.name: d.apply() for d in deployments(settings, None)}
    out = _retrain(settings, "abuse", None, str(settings.data_dir), 6.0, budget=30.0)
    assert isinstance(out, str) and out.startswith("started deployment train/nightly")

    async def runs():
        async with get_client() as c:
            return await c.read_flow_runs()

    mine = [r for r in asyncio.run(runs()) if r.deployment_id == ids["nightly"]]
    assert len(mine) == 1 and mine[0].parameters["target"] == "abuse"
    # the retraining is warm-started from the champion, with the short budget asked for
    assert mine[0].parameters["warm_start"] is True and mine[0].parameters["budget"] == 30.0
    # a version registered minutes ago: drift has had its answer, no second retraining
    c = mlflow.MlflowClient(settings.mlflow_uri)
    name = settings.registered_model("abuse")
    c.create_registered_model(name)
    c.create_model_version(name, source=str(tmp_path))
    again = _retrain(settings, "abuse", None, str(settings.data_dir), 6.0)
    assert isinstance(again, str) and again.startswith("skipped")
    assert len([r for r in asyncio.run(runs()) if r.deployment_id == ids["nightly"]]) == 1
