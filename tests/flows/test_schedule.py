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
