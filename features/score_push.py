"""Scores pushed to the gateway for clients whose score moved (``stream.score_push``).

The gateway pulls scores (``gateway/scoring.py``): a client's cached score is used for
``cache_ttl_s`` before the service is asked again, so a flood that starts between two calls
runs on its old, low score until the cache expires. The stream processor knows the moment a
client's features change: after each online push it asks the scoring service about exactly
those clients (one multi-id ``/score`` call per ``max_batch``) and pushes the scores that
moved by at least ``min_change`` (or whose model version changed) to every gateway
(``POST /admin/scores``, an admin API key from ``api_key_env``), where they count as fresh
answers. Only HTTP in between: the processor imports neither the gateway nor serving.

A failure (service down, gateway down, a refused key) is counted and logged, never raised:
the online push has already happened, and the gateway's own pull still works.

    push = ScorePusher(cfg, scoring_url="http://127.0.0.1:3000"); push(rows)  # rows: client_id
"""

from __future__ import annotations

import logging
import os
from typing import Any

from config.stream import ScorePushSettings

__all__ = ["ScorePusher"]

log = logging.getLogger("gatewise.score_push")


class ScorePusher:
    def __init__(
        self,
        cfg: ScorePushSettings,
        scoring_url: str,
        *,
        api_key: str | None = None,
        client: Any = None,
    ) -> None:
        import httpx

        self.cfg = cfg
        self.scoring_url = (cfg.scoring_url or scoring_url).rstrip("/")
        key = api_key if api_key is not None else os.environ.get(cfg.api_key_env, "")
        self.headers = {"x-api-key": key} if key else {}
        self.http = client or httpx.Client(timeout=cfg.timeout_s)
        self.last: dict[str, tuple[float, str | None]] = {}  # client -> (score, model version)
        self.asked = self.pushed = self.failures = 0
        self.last_error: str | None = None

    def stats(self) -> dict[str, Any]:
        return {
            "asked": self.asked,
            "pushed": self.pushed,
            "failures": self.failures,
            "last_error": self.last_error,
        }

    def __call__(self, rows: Any) -> int:
        """Score the clients of ``rows`` (a table with ``client_id``) and push the moved
        scores; returns how many were pushed (to each gateway)."""
        ids = sorted({c for c in rows.column("client_id").to_pylist() if c})
        n = 0
        for i in range(0, len(ids), self.cfg.max_batch):
            n += self._batch(ids[i : i + self.cfg.max_batch])
        return n

    def _fail(self, what: str, exc: Exception | str) -> None:
        self.failures += 1
        self.last_error = f"{what}: {exc}"
        if self.failures in (1, 10) or self.failures % 100 == 0:
            log.warning("score push failed (%d so far): %s", self.failures, self.last_error)

    def _batch(self, ids: list[str]) -> int:
        cfg = self.cfg
        self.asked += len(ids)
        try:
            r = self.http.post(
                f"{self.scoring_url}/score",
                json={"target": cfg.target, "ids": ids, "alias": cfg.alias},
            )
            r.raise_for_status()
            body = r.json()
            mv = body.get("model_version")
            mv = None if mv is None else str(mv)
            results = body["results"]
        except Exception as exc:
            self._fail("scoring service", exc)
            return 0
        moved: list[dict[str, Any]] = []
        for res in results:
            cid, score = res.get("id"), res.get("score")
            if not isinstance(cid, str) or score is None:
                continue  # not in the online store yet: the gateway asks again soon anyway
            prev = self.last.get(cid)
            if prev is None or prev[1] != mv or abs(float(score) - prev[0]) >= cfg.min_change:
                moved.append({"id": cid, "score": float(score)})
        if not moved:
            return 0
        body = {"model_version": mv, "alias": cfg.alias, "results": moved}
        ok = True
        for url in cfg.gateway_urls:
            try:
                g = self.http.post(
                    f"{url.rstrip('/')}/admin/scores", json=body, headers=self.headers
                )
                if g.status_code != 200:
                    raise RuntimeError(f"{g.status_code} {g.text[:200]}")
            except Exception as exc:
                self._fail(f"gateway {url}", exc)
                ok = False
        if ok:  # remembered only once every gateway has it: else it is pushed again next time
            for m in moved:
                self.last[m["id"]] = (m["score"], mv)
            self.pushed += len(moved)
        return len(moved) if ok else 0

    def close(self) -> None:
        self.http.close()
