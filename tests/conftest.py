from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"


def _shared_data() -> Path:
    candidates = [
        os.environ.get("GATEWISE_SHARED_DATA"),
        REPO.parent / "shared" / "data",
        "/work/shared/data",
    ]
    for c in candidates:
        if c and (Path(c) / "logs").is_dir():
            return Path(c)
    raise RuntimeError(
        "the real data samples (shared/data) were not found beside the repo; set GATEWISE_SHARED_DATA"
    )


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return _shared_data()


@pytest.fixture()
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Settings on the repo's gatewise.yaml with a private data dir."""
    from gatewise.settings import load_settings

    for k in list(os.environ):
        if k.startswith("GATEWISE_") and k not in ("GATEWISE_SHARED_DATA",):
            monkeypatch.delenv(k)
    return load_settings(REPO / "gatewise.yaml", data_dir=tmp_path / "data")


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
