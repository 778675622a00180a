"""The review queue API without a browser: a queue whose evidence has NaN (a feature with no
data) is still sent, with null in its place (JSON has no NaN; the page used to show nothing)."""

from __future__ import annotations

import json

from starlette.testclient import TestClient

from analytics.dashboard import create_app
from config.settings import load_settings
from tests.conftest import REPO


def test_queue_with_nan_evidence_is_sent_as_null(tmp_path):
    s = load_settings(REPO / "gatewise.yaml", data_dir=tmp_path / "data")
    app = create_app(s, {"gateway": [s.telemetry_dir]})
    from analytics.review import ReviewApi

    path = ReviewApi(s, None)._queue_path
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "since": "2026-12-01T00:00:00+00:00",
        "until": "2026-12-02T00:00:00+00:00",
        "items": [{"client_id": "c1", "evidence": {"p95_ms": float("nan"), "rate": float("inf")}}],
    }
    path.write_text(json.dumps(doc))  # Python writes NaN and Infinity, as save_queue may
    r = TestClient(app).get("/api/review/queue")
    assert r.status_code == 200
    (item,) = r.json()["items"]
    assert item["evidence"] == {"p95_ms": None, "rate": None}
    assert item["answered"] is None
