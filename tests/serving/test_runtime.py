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
