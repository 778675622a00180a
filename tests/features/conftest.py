from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import REPO


@pytest.fixture(scope="session")
def two_days(tmp_path_factory):
    """Settings with two simulated days in the telemetry store (features not built)."""
    from gatewise.settings import load_settings
    from telemetry.simulator.output import run_simulation

    saved = {
        k: os.environ.pop(k)
        for k in list(os.environ)
        if k.startswith("GATEWISE_") and k != "GATEWISE_SHARED_DATA"
    }
    try:
        data = tmp_path_factory.mktemp("features-data")
        s = load_settings(REPO / "gatewise.yaml", data_dir=data)
        s = s.model_copy(
            update={
                "simulator": s.simulator.model_copy(
                    update={"clients": 150, "days": 2.0, "seed": 13}
                )
            }
        )
        run_simulation(s)
        yield s
    finally:
        os.environ.update(saved)


@pytest.fixture(scope="session")
def built(two_days):
    from features.build import build_windows

    report = build_windows(two_days)
    return two_days, report


def copy_settings(s, data_dir: Path, **features):
    return s.model_copy(
        update={"data_dir": data_dir, "features": s.features.model_copy(update=features)}
    )
