"""The dashboard's review page (``/review``): work the review queue with the keyboard.

- ``GET /api/review/queue``: the queue (``labeling.review``) with each client's evidence,
  minus the clients someone reviewed since it was built, the harm bound it was built for,
  and the latest label-model run's per-function coverage, overlaps, conflicts and estimated
  accuracy; ``?build=1`` builds a fresh one (as ``gatewise review export`` does);
- ``POST /api/review/answer`` ``{"client_id", "label": "abusive"|"legitimate", "reviewer",
  "note"}``: the answer goes into the labels table as a review of the client over the
  queue's period (reviewer and time kept), like ``gatewise labels import --source review``.

The page has no login of its own yet: anyone who can reach the dashboard can answer.
"""

from __future__ import annotations

import contextlib
import json
import math
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

if TYPE_CHECKING:
    from config.settings import Settings

__all__ = ["ReviewApi"]


class ReviewApi:
    def __init__(self, settings: Settings, static_dir: Any) -> None:
        self.settings = settings
        self.static_dir = static_dir

    @property
    def _queue_path(self) -> Any:
        return self.settings.data_dir / "labeling" / "queue.json"

    def page(self, request: Request) -> Response:
        return FileResponse(self.static_dir / "review.html")

    def _build(self) -> dict[str, Any]:
        from labeling.review import build_queue, save_queue
        from monitoring.validation import period, validate

        s = self.settings
        since, until = period(s, None, None)
        harm = None
        with contextlib.suppress(LookupError, ValueError):  # no model yet: no harm bound
            harm = validate(s, target="abuse", since=since, until=until)
        items = build_queue(
            s, since, until, harm_reviews=None if harm is None else harm.harm.next_reviews
        )
        save_queue(
            s,
            items,
            {"since": since.isoformat(), "until": until.isoformat(), "target": "abuse",
             "harm": None if harm is None else harm.record()},
        )  # fmt: skip
        return json.loads(self._queue_path.read_text())

    async def queue(self, request: Request) -> Response:
        from labeling.review import reviewed_clients

        try:
            if request.query_params.get("build") == "1" or not self._queue_path.exists():
                if request.query_params.get("build") != "1":
                    return JSONResponse(
                        {
                            "items": [],
                            "note": "no queue yet: build one here, or with `gatewise review "
                            "export`",
                        }
                    )
                doc = await run_in_threadpool(self._build)
            else:
                doc = json.loads(self._queue_path.read_text())
        except (LookupError, ValueError) as exc:
            return JSONResponse({"items": [], "note": str(exc)}, status_code=409)
        done = await run_in_threadpool(
            reviewed_clients, self.settings, doc.get("since"), doc.get("until")
        )
        weak = self.settings.data_dir / "labeling" / "weak-latest.json"
        doc["weak"] = json.loads(weak.read_text()) if weak.exists() else None
        for it in doc["items"]:
            it["answered"] = (
                None
                if it["client_id"] not in done
                else ("abusive" if done[it["client_id"]] else "legitimate")
            )
        return JSONResponse(_finite(doc))

    async def answer(self, request: Request) -> Response:
        from labeling.io import LabelImportError
        from labeling.review import record_review

        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "the body must be JSON"}, status_code=400)
        missing = [k for k in ("client_id", "label", "reviewer") if not body.get(k)]
        if missing:
            return JSONResponse({"error": f"missing: {', '.join(missing)}"}, status_code=422)
        if not self._queue_path.exists():
            return JSONResponse({"error": "no queue: build one first"}, status_code=409)
        doc = json.loads(self._queue_path.read_text())
        item = next((i for i in doc["items"] if i["client_id"] == body["client_id"]), None)
        if item is None:
            return JSONResponse(
                {"error": f"client {body['client_id']!r} is not in the queue"}, status_code=404
            )
        try:
            n = await run_in_threadpool(
                record_review,
                self.settings,
                item["client_id"],
                str(body["label"]),
                item["since"],
                item["until"],
                str(body["reviewer"]),
                str(body.get("note") or ""),
            )
        except LabelImportError as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)
        return JSONResponse({"ok": True, "client_id": item["client_id"], "windows": n})


def _finite(obj: Any) -> Any:
    """NaN and infinities (a feature with no data, a rate over nothing) as null: JSON has no
    NaN, and Starlette refuses to send one (the page then showed an empty queue)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj
