"""The scoring runtime in process: real registry, real Feast online store."""

from __future__ import annotations

import numpy as np
import pytest

from serving.runtime import InputError, NoModelError, Runtime


def _clients(s, n=5):
    from labeling.store import LabelStore

    return list(dict.fromkeys(LabelStore(s.labels_dir).read().column("client_id").to_pylist()))[:n]


def test_score_known_and_unknown_clients(champion):
    s, r = champion
    rt = Runtime(s)
    ids = [*_clients(s), "never-seen-client"]
    out = rt.score("abuse", ids)
    assert out["model_version"] == r.version and out["threshold"] == pytest.approx(r.threshold)
    known = [x for x in out["results"] if x["known"]]
    assert len(known) == 5 and all(0.0 <= x["score"] <= 1.0 for x in known)
    assert all(isinstance(x["flagged"], bool) and x["freshness_s"] is not None for x in known)
    unknown = out["results"][-1]
    assert unknown == {
        "id": "never-seen-client",
        "score": None,
        "known": False,
        "reason": "no features online",
    }


def test_score_matches_the_model_on_the_same_rows(champion):
    s, _ = champion
    rt = Runtime(s)
    ids = _clients(s, 8)
    m = rt.ensure("abuse")
    X, _ = rt.online(m.feature_service, ids)
    expected = m.model.predict_proba(X[m.features])[:, 1]
    got = [x["score"] for x in rt.score("abuse", ids)["results"]]
    assert np.allclose(got, expected)
    by_predict = rt.predict("abuse", X[m.features].to_dict("records"))["predictions"]
    assert np.allclose(by_predict, expected)


def test_predict_rejects_bad_rows_naming_the_field(champion):
    s, _ = champion
    rt = Runtime(s)
    m = rt.ensure("abuse")
    row = dict.fromkeys(m.features, 1.0)
    with pytest.raises(InputError) as e:
        rt.predict("abuse", [{k: v for k, v in row.items() if k != m.features[3]}])
    assert e.value.field == m.features[3]
    with pytest.raises(InputError) as e:
        rt.predict("abuse", [{**row, m.features[0]: "lots"}])
    assert e.value.field == m.features[0]
    with pytest.raises(NoModelError):
        rt.ensure("abuse", "no-such-alias")


def test_the_compiled_form_serves_only_when_it_matches(champion, tmp_path):
    """What registration logged decides: an exported form that matches serves (and gives the
    pipeline's scores); a refused one leaves the pipeline serving with the reason."""
    import json
    import shutil
    from pathlib import Path

    import mlflow

    from models.compiled import ARTIFACT_DIR, export

    s, r = champion
    rt = Runtime(s)
    m = rt.ensure("abuse")
    mlflow.set_tracking_uri(s.mlflow_uri)
    d = Path(mlflow.artifacts.download_artifacts(run_id=r.run_id, artifact_path=ARTIFACT_DIR))
    meta = json.loads((d / "compiled.json").read_text())
    ids = _clients(s, 8)
    X, _ = rt.online(m.feature_service, ids)
    expected = m.model.predict_proba(X[m.features])[:, 1]
    got = np.array([x["score"] for x in rt.score("abuse", ids)["results"]])
    assert np.allclose(got, expected, atol=1e-5)
    if meta["status"] == "exported":
        assert m.form == "onnx" and m.fast is not None, m.form_reason
        assert rt.ensure("abuse").metadata()["form"] == "onnx"
    else:
        assert m.form == "pipeline" and meta["reason"] in m.form_reason

    # a deliberately broken export: another model's graph under this version's name
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    rng = np.random.default_rng(0)
    Xr = X[m.features].fillna(0.0)
    other = Pipeline([("imp", SimpleImputer()), ("model", LogisticRegression())]).fit(
        Xr, rng.integers(0, 2, len(Xr))
    )
    bad = tmp_path / "broken"
    shutil.copytree(d, bad)
    e = export(other, m.features, Xr, "binary", None)
    assert e.onnx is not None
    (bad / "model.onnx").write_bytes(e.onnx)
    (bad / "compiled.json").write_text(json.dumps({"status": "exported", "reason": ""}))
    rt.attach_compiled_from(m, bad, X[m.features].iloc[:3])
    assert m.form == "pipeline" and m.fast is None
    assert m.form_reason.startswith("compiled form refused") and "differ" in m.form_reason
    got = np.array([x["score"] for x in rt.score("abuse", ids)["results"]])
    assert np.allclose(got, expected)  # the pipeline's own answers, not the broken graph's
    (bad / "model.onnx").write_bytes(b"not an onnx graph")
    rt.attach_compiled_from(m, bad, X[m.features].iloc[:3])
    assert m.form == "pipeline" and "does not load" in m.form_reason


def test_direct_reads_and_the_sdk_path_agree(champion):
    """serving.online_read direct (features/online_read.py) vs the SDK: the same scores,
    the same unknowns, freshness from the same timestamps."""
    s, _ = champion
    ids = [*_clients(s, 10), "never-seen-client", _clients(s, 1)[0]]
    direct = Runtime(s)
    sdk = Runtime(
        s.model_copy(update={"serving": s.serving.model_copy(update={"online_read": "sdk"})})
    )
    a, b = direct.score("abuse", ids), sdk.score("abuse", ids)
    assert direct.ensure("abuse").read_path == "direct"
    assert sdk.ensure("abuse").read_path == "sdk"
    for x, y in zip(a["results"], b["results"], strict=True):
        assert x["known"] == y["known"] and x["id"] == y["id"]
        if x["known"]:
            assert x["score"] == pytest.approx(y["score"], abs=1e-9)
            assert x["freshness_s"] == pytest.approx(y["freshness_s"], abs=2.0)
