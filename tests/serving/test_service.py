"""A real `bentoml serve` process: /score, /predict, hot swap under load, a broken version."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import threading
import time

import httpx
import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(champion):
    s, r = champion
    port = _port()
    env = {
        **os.environ,
        "GATEWISE_DATA_DIR": str(s.data_dir),
        "GATEWISE_SERVE_REFRESH_S": "0.5",
        "BENTOML_DO_NOT_TRACK": "true",
        "BENTOML_HOME": str(s.data_dir / "bentoml"),
    }
    log = open(s.data_dir / "bentoml-serve.log", "w")  # noqa: SIM115
    p = subprocess.Popen(
        [str(REPO / ".venv/bin/bentoml"), "serve", "serving.service:Scorer", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            if p.poll() is not None:
                raise RuntimeError((s.data_dir / "bentoml-serve.log").read_text()[-3000:])
            try:
                if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise RuntimeError("bentoml serve did not become ready")
        yield s, r, base
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
        log.close()


def _ids(s, n=4):
    from labeling.store import LabelStore

    return list(dict.fromkeys(LabelStore(s.labels_dir).read().column("client_id").to_pylist()))[:n]


def test_score_and_predict_over_http(server):
    from serving.runtime import Runtime

    s, r, base = server
    ids = [*_ids(s), "nobody"]
    out = httpx.post(base + "/score", json={"ids": ids}, timeout=10).json()
    assert out["model_version"] == r.version and len(out["results"]) == 5
    local = Runtime(s).score("abuse", ids)
    assert [x["score"] for x in out["results"][:-1]] == pytest.approx(
        [x["score"] for x in local["results"][:-1]]
    )
    assert out["results"][-1] == {
        "id": "nobody",
        "score": None,
        "known": False,
        "reason": "no features online",
    }
    meta = httpx.post(base + "/metadata", json={}, timeout=10).json()
    assert meta["version"] == r.version and meta["feature_service"] == "abuse_v1"
    assert "holdout_roc_auc" in meta["training_metrics"] or meta["training_metrics"]
    m = Runtime(s).ensure("abuse")
    row = dict.fromkeys(m.features, 0.0)
    ok = httpx.post(base + "/predict", json={"rows": [row]}, timeout=10)
    assert ok.status_code == 200 and len(ok.json()["predictions"]) == 1
    bad = httpx.post(base + "/predict", json={"rows": [{**row, m.features[2]: "many"}]}, timeout=10)
    assert bad.status_code == 400 and m.features[2] in bad.text
    missing = httpx.post(base + "/score", json={"ids": ["x"], "alias": "nope"}, timeout=10)
    assert missing.status_code == 404


def _loop(
    base: str, ids: list[str], stop: threading.Event, seen: list[str], failures: list[str]
) -> None:
    with httpx.Client(base_url=base, timeout=10) as c:
        while not stop.is_set():
            try:
                r = c.post("/score", json={"ids": ids})
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text[:200]}")
                else:
                    seen.append(r.json()["model_version"])
            except httpx.HTTPError as exc:
                failures.append(repr(exc))


def _wait_for(base: str, pred, timeout: float = 60.0) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        meta = httpx.post(base + "/metadata", json={}, timeout=10).json()
        if pred(meta):
            return meta
        time.sleep(0.3)
    raise AssertionError(f"condition not reached: {meta}")


def test_hot_swap_under_load_then_a_broken_version_keeps_the_old_one(server):
    from models.tracking import client

    s, r, base = server
    c = client(s)
    name = s.registered_model("abuse")
    mv = c.get_model_version(name, r.version)
    good = c.create_model_version(name, source=mv.source, run_id=mv.run_id)
    stop, seen, failures = threading.Event(), [], []
    threads = [
        threading.Thread(target=_loop, args=(base, _ids(s), stop, seen, failures)) for _ in range(4)
    ]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        c.set_registered_model_alias(name, "champion", good.version)
        _wait_for(base, lambda m: m["version"] == str(good.version))
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert seen[0] == r.version and seen[-1] == str(good.version)
    # every answer came from one version or the other, switching once
    switches = sum(a != b for a, b in itertools.pairwise(seen))
    assert set(seen) == {r.version, str(good.version)} and switches <= len(threads)

    broken = c.create_model_version(
        name, source=str(s.data_dir / "no-such-artifacts"), run_id=mv.run_id
    )
    c.set_registered_model_alias(name, "champion", broken.version)
    meta = _wait_for(base, lambda m: m["errors"].get("abuse@champion"))
    assert meta["version"] == str(good.version)
    assert f"v{broken.version} failed" in meta["errors"]["abuse@champion"]
    out = httpx.post(base + "/score", json={"ids": _ids(s, 2)}, timeout=10)
    assert out.status_code == 200 and out.json()["model_version"] == str(good.version)
    assert httpx.get(base + "/readyz", timeout=5).status_code == 200
    # leave a loadable champion for the tests after this one
    c.set_registered_model_alias(name, "champion", good.version)
    _wait_for(base, lambda m: not m["errors"].get("abuse@champion"))


def test_a_built_bento_serves(champion, tmp_path):
    """`bentoml build` from the repo, then `bentoml serve <tag>` of the built Bento."""
    s, _r = champion
    home = tmp_path / "bentoml"
    env = {
        **os.environ,
        "PATH": f"{REPO / '.tools/uv/bin'}:{os.environ.get('PATH', '')}",
        "BENTOML_HOME": str(home),
        "BENTOML_DO_NOT_TRACK": "true",
        "GATEWISE_DATA_DIR": str(s.data_dir),
    }
    bentoml = str(REPO / ".venv/bin/bentoml")
    out = subprocess.run(
        [bentoml, "build", str(REPO), "--output", "tag"], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    tag = out.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    assert tag.startswith("gatewise_scorer:")
    reqs = (home / "bentos" / "gatewise_scorer").glob("*/env/python/requirements.txt")
    pinned = next(reqs).read_text()
    from importlib.metadata import version

    assert f"scikit-learn=={version('scikit-learn')}" in pinned
    port = _port()
    p = subprocess.Popen(
        [bentoml, "serve", tag, "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(400):
            try:
                if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert p.poll() is None, "bentoml serve of the built Bento exited"
            time.sleep(0.5)
        else:
            raise AssertionError("the built Bento never became ready")
        res = httpx.post(base + "/score", json={"ids": _ids(s, 3)}, timeout=30)
        assert res.status_code == 200 and res.json()["model_version"]
        assert all(x["known"] for x in res.json()["results"])
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(timeout=30)


def test_the_gateway_scores_through_the_live_service(server):
    """The real loop: gateway → BentoML /score → Feast + champion; the score lands in telemetry."""
    import asyncio

    from gateway.auth import ApiKey, Consumer, ConsumersFile, new_api_key
    from telemetry.store import TelemetryStore
    from tests.gateway.conftest import running, with_gateway

    s0, _, base = server
    s = s0.model_copy(update={"data_dir": s0.data_dir.parent / "gw-loop"})
    cid = _ids(s0, 1)[0]
    kid, key, digest = new_api_key()
    ConsumersFile(
        consumers=[Consumer(client_id=cid, tier="pro", api_keys=[ApiKey(id=kid, sha256=digest)])]
    ).save(s.gateway_consumers_path)
    scoring = s.gateway.scoring.model_copy(
        update={"enabled": True, "url": base, "timeout_ms": 2000}
    )
    s = with_gateway(s, scoring=scoring)
    expected = httpx.post(base + "/score", json={"ids": [cid]}, timeout=10).json()

    async def main():
        async with running(s) as (_, c):
            return [
                (await c.get("/v1/orders/1", headers={"x-api-key": key})).status_code
                for _ in range(3)
            ]

    assert asyncio.run(main()) == [200, 200, 200]
    ev = TelemetryStore(s.telemetry_dir).read().to_pandas()
    assert (ev["model_version"] == expected["model_version"]).all()
    assert ev["model_score"].to_numpy() == pytest.approx(
        [expected["results"][0]["score"]] * 3, abs=1e-6
    )
