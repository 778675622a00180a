from __future__ import annotations

import os
import shutil
import socket
from datetime import timedelta
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for servers a test starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def nginx_binary() -> str:
    """Debian's nginx (``.ci/run`` installs it); the test is skipped where it is missing."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if not found:
        pytest.skip("nginx not installed: .ci/run installs it")
    return found


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
    from config.settings import load_settings

    for k in list(os.environ):
        if k.startswith("GATEWISE_") and k not in ("GATEWISE_SHARED_DATA",):
            monkeypatch.delenv(k)
    return load_settings(REPO / "gatewise.yaml", data_dir=tmp_path / "data")


@pytest.fixture(scope="session")
def two_days(tmp_path_factory):
    """Settings with two simulated days in the telemetry store (features not built)."""
    from config.settings import load_settings
    from labeling.simulated import simulate_labelled

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
        simulate_labelled(s)
        yield s
    finally:
        os.environ.update(saved)


@pytest.fixture(scope="session")
def built(two_days):
    from features.build import build_windows

    report = build_windows(two_days)
    return two_days, report


@pytest.fixture(scope="session")
def champion(built, tmp_path_factory):
    """A copy of the two simulated days with features online and a trained abuse champion."""
    from features.store import apply_definitions, feature_store
    from models.registry import promote
    from models.train import train_target

    s0, _ = built
    s = s0.model_copy(update={"data_dir": tmp_path_factory.mktemp("serving") / "data"})
    shutil.copytree(s0.data_dir, s.data_dir)
    store = feature_store(s)
    apply_definitions(store, s)
    import pandas as pd

    from telemetry.store import TelemetryStore

    end = pd.Timestamp(
        TelemetryStore(s.telemetry_dir).read().column("timestamp").to_pandas().max()
    ).to_pydatetime()
    store.materialize(start_date=end - timedelta(days=3), end_date=end)
    r = train_target(s, "abuse", n_trials=4, budget=90)
    promote(s, "abuse", r.version, force=True)
    return s, r


@pytest.fixture()
def env(tmp_path, monkeypatch):
    """CLI tests: a private data dir through GATEWISE_DATA_DIR, run from the repo."""
    for k in list(os.environ):
        if k.startswith("GATEWISE_") and k != "GATEWISE_SHARED_DATA":
            monkeypatch.delenv(k)
    monkeypatch.setenv("GATEWISE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(REPO)
    return tmp_path / "data"


@pytest.fixture(scope="session")
def unlabelled_day(tmp_path_factory):
    """A simulated day with features built and the truth kept outside the data dir: what a
    real gateway gives (telemetry, consumers), and an oracle's answers beside it."""
    from config.settings import load_settings
    from features.build import build_windows
    from telemetry.simulator.output import run_simulation
    from tests.conftest import REPO

    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("GATEWISE_")}
    try:
        root = tmp_path_factory.mktemp("unlabelled")
        s = load_settings(REPO / "gatewise.yaml", data_dir=root / "data")
        s = s.model_copy(
            update={
                "simulator": s.simulator.model_copy(
                    update={"clients": 400, "days": 1.0, "seed": 23}
                )
            }
        )
        run = run_simulation(s, truth_dir=root / "truth")
        build_windows(s)
        truth = run.result.labels.to_pandas()
        import pandas as pd

        truth["event_timestamp"] = pd.to_datetime(truth["event_timestamp"], utc=True)
        yield s, truth, run.result.clients.to_pandas()
    finally:
        os.environ.update(saved)
