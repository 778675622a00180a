"""The deploy saga against a real BentoML service: success, compensation, refusal."""

from __future__ import annotations

import shutil
import socket

import httpx
import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def env(champion, tmp_path_factory):
    """A private copy of the champion's data dir, with the service on a free port."""
    import os

    from serving.process import stop_service

    s0, r = champion
    port = _port()
    # the flow builds its own settings: the port reaches it through the environment
    saved = {
        k: os.environ.get(k) for k in ("GATEWISE_SERVING__PORT", "GATEWISE_SERVING__REFRESH_S")
    }
    os.environ.update(GATEWISE_SERVING__PORT=str(port), GATEWISE_SERVING__REFRESH_S="0.5")
    s = s0.model_copy(
        update={
            "data_dir": tmp_path_factory.mktemp("deploy") / "data",
            "serving": s0.serving.model_copy(update={"port": port, "refresh_s": 0.5}),
        }
    )
    shutil.copytree(s0.data_dir, s.data_dir, ignore=shutil.ignore_patterns("serving", "bentoml*"))
    try:
        yield s, r
    finally:
        stop_service(s)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _challenger(s, source_version: str, eligible: bool = True, source: str | None = None) -> str:
    from models.tracking import client

    c = client(s)
    name = s.registered_model("abuse")
    mv = c.get_model_version(name, source_version)
    new = c.create_model_version(name, source=source or mv.source, run_id=mv.run_id)
    c.set_model_version_tag(name, new.version, "gate.eligible", str(eligible).lower())
    c.set_model_version_tag(name, new.version, "gate.reason", "test verdict")
    c.set_registered_model_alias(name, "challenger", new.version)
    return str(new.version)


def _deploy(s, **kw):
    from flows.deploy import deploy_flow

    return deploy_flow(
        target="abuse", config_path=str(REPO / "gatewise.yaml"), data_dir=str(s.data_dir), **kw
    )


def _serving_version(s) -> str:
    return httpx.post(s.serving.url + "/metadata", json={}, timeout=30).json()["version"]


def test_deploy_compensates_and_succeeds(prefect_harness, env):
    from flows.deploy import DeployError
    from gateway.policy_store import PolicyStore
    from models.tracking import client, version_info

    s, r = env
    name = s.registered_model("abuse")
    policies = PolicyStore(s.policy_dir)

    # refused: the gate said no
    bad = _challenger(s, r.version, eligible=False)
    with pytest.raises(DeployError, match=r"check: v\d+ is not eligible"):
        _deploy(s)
    assert version_info(s, "abuse")["champion"]["version"] == r.version

    # a failure after the alias moved: every step undone, in reverse
    v2 = _challenger(s, r.version)
    with pytest.raises(DeployError) as e:
        _deploy(s, fail_at="policy")
    res = e.value.result
    assert e.value.step == "policy" and res.steps[-1] == "record"
    assert res.compensated == ["record", "promote"]  # the service it started keeps serving
    assert version_info(s, "abuse")["champion"]["version"] == r.version
    assert "deploy.at" not in client(s).get_model_version(name, v2).tags
    assert not policies.exists() or policies.load().targets["abuse"].model_version is None
    import time

    for _ in range(100):  # the service follows the alias back
        if _serving_version(s) == r.version:
            break
        time.sleep(0.3)
    assert _serving_version(s) == r.version

    # success: champion moved, live service swapped, deployment recorded, policy names it
    before = policies.latest_version()
    out = _deploy(s)
    assert out["version"] == v2 and out["previous"] == r.version and out["failed_step"] is None
    assert version_info(s, "abuse")["champion"]["version"] == v2 and _serving_version(s) == v2
    tags = client(s).get_model_version(name, v2).tags
    assert tags["deploy.previous"] == r.version and tags["deploy.url"] == s.serving.url
    assert policies.latest_version() == before + 1
    assert policies.load().targets["abuse"].model_version == v2
    assert bad != v2


def test_smoke_failure_on_the_live_endpoint_leaves_the_champion(prefect_harness, env):
    """A challenger trained on another feature set loads and predicts its own example,
    but cannot score live features: the smoke test fails before anything moved."""
    import numpy as np
    import pandas as pd

    from config.targets import TargetSettings
    from flows.deploy import DeployError
    from models.data import Dataset
    from models.tracking import version_info
    from models.train import run_automl

    s, _ = env
    champion = version_info(s, "abuse")["champion"]["version"]
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"alien_feature": rng.normal(size=600), "other": rng.normal(size=600)})
    y = pd.Series((X["alien_feature"] > 0).astype(int))
    ds = Dataset(X=X, y=y, task="binary", sensitive=pd.DataFrame(index=X.index), name="alien")
    t = TargetSettings(
        task="binary",
        entity="client",
        feature_service="abuse_v1",
        metric="roc_auc",
        families=["linear"],
    )
    r = run_automl(s, ds, "abuse", t, n_trials=1, budget=60)
    with pytest.raises(DeployError) as e:
        _deploy(s, version=r.version, force=True)
    assert e.value.step == "smoke" and "/score answered" in str(e.value)
    assert version_info(s, "abuse")["champion"]["version"] == champion
    assert _serving_version(s) == champion


def test_first_deploy_starts_the_service_before_any_champion(prefect_harness, env):
    """No champion yet: the service starts live but not ready; the deploy makes it ready."""
    from models.tracking import client, version_info
    from serving.process import stop_service

    s, r = env
    stop_service(s)
    c = client(s)
    name = s.registered_model("abuse")
    c.delete_registered_model_alias(name, "champion")
    v = _challenger(s, r.version)
    out = _deploy(s)
    assert out["previous"] is None and out["version"] == v and "service" in out["steps"]
    assert version_info(s, "abuse")["champion"]["version"] == v and _serving_version(s) == v
    assert httpx.get(s.serving.url + "/readyz", timeout=5).status_code == 200
