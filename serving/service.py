"""The BentoML prediction service: the champion (or any alias) behind HTTP.

    bentoml serve serving.service:Scorer --port 3000      # or `gatewise serve`

Endpoints (JSON in, JSON out):
- ``POST /score``  ``{"target": "abuse", "ids": ["c1"], "alias": "champion"}`` →
  scores from online features, ``flagged`` at the model's decision threshold,
  model version, feature freshness; unknown ids get ``known: false``;
- ``POST /predict`` ``{"target": "abuse", "rows": [{feature: value, ...}]}`` →
  predictions; a missing or non-numeric feature is a 400 naming it;
- ``POST /scan`` ``{"target": "payload", "values": ["1' or '1'='1"]}`` → ``label`` (benign or
  the attack class) and ``score`` per value, from the payload champion;
- ``POST /metadata`` ``{"target": "abuse", "alias": "champion"}`` → model name,
  version, alias, training metrics, feature service, swap errors;
- BentoML's own ``/healthz``, ``/livez`` and ``/readyz`` (ready once every
  configured target's champion is loaded).

The service follows alias moves in the background (``Runtime.refresh``):
a new version is loaded and smoke-tested beside the serving one and swapped
in atomically; a version that fails either step never serves.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import bentoml
from bentoml.exceptions import InvalidArgument, NotFound

log = logging.getLogger("gatewise.serving")


def _settings() -> Any:
    from config.settings import load_settings

    return load_settings(Path(os.environ.get("GATEWISE_CONFIG", "gatewise.yaml")))


@bentoml.service(
    name="gatewise_scorer",
    traffic={"timeout": 10, "max_concurrency": 512},
    # serving.workers, passed by serving/process.py (the decorator runs at import)
    workers=int(os.environ.get("GATEWISE_SERVE_WORKERS", "1")),
)
class Scorer:
    def __init__(self) -> None:
        from serving.runtime import Runtime

        self.settings = _settings()
        self.runtime = Runtime(self.settings)
        self.preload = [
            t for t in os.environ.get("GATEWISE_SERVE_TARGETS", "abuse").split(",") if t
        ]
        for t in self.preload:
            try:
                self.runtime.ensure(t, "champion")
            except Exception as exc:  # not ready until a champion exists; /readyz says so
                self.runtime.errors[(t, "champion")] = f"{type(exc).__name__}: {exc}"[:500]
                log.error("no champion for %s yet: %s", t, exc)
        # warm Feast's registry and online store before the first request, champion or not
        # (a first deploy stages a challenger into a service that has no champion yet, and
        # its smoke request must not pay Feast's start-up inside the request timeout)
        for t in self.preload:
            target = self.settings.targets.get(t)
            if target is None or not target.feature_service:
                continue
            try:
                self.runtime.online(target.feature_service, ["__warmup__"])
            except Exception as exc:
                log.warning("could not warm the online store for %s: %s", t, exc)
        self.runtime.start_refresher(float(os.environ.get("GATEWISE_SERVE_REFRESH_S", "2")))
        # everything loaded so far (MLflow, Feast, BentoML, the model: millions of objects)
        # lives as long as the worker: out of the collector's sight, so a full collection
        # does not walk it while requests wait
        import gc

        gc.collect()
        gc.freeze()

    def __is_ready__(self) -> bool:
        for t in self.preload:
            if (t, "champion") not in self.runtime._models:
                try:
                    self.runtime.ensure(t, "champion")
                except Exception:
                    return False
        return True

    @bentoml.api(route="/score")
    def score(
        self, ids: list[str], target: str = "abuse", alias: str = "champion"
    ) -> dict[str, Any]:
        from serving.runtime import NoModelError

        if not isinstance(ids, list) or len(ids) > 10_000:
            raise InvalidArgument("ids: a list of at most 10,000 entity ids")
        try:
            return self.runtime.score(target, [str(i) for i in ids], alias)
        except NoModelError as exc:
            raise NotFound(str(exc)) from None

    @bentoml.api(route="/scan")
    def scan(
        self, values: list[str], target: str = "payload", alias: str = "champion"
    ) -> dict[str, Any]:
        from serving.runtime import InputError, NoModelError

        if not isinstance(values, list) or len(values) > 10_000:
            raise InvalidArgument("values: a list of at most 10,000 strings")
        try:
            return self.runtime.scan(target, [str(v) for v in values], alias)
        except InputError as exc:
            raise InvalidArgument(f"{exc.field}: {exc}") from None
        except NoModelError as exc:
            raise NotFound(str(exc)) from None

    @bentoml.api(route="/predict")
    def predict(
        self, rows: list[dict[str, Any]], target: str = "abuse", alias: str = "champion"
    ) -> dict[str, Any]:
        from serving.runtime import InputError, NoModelError

        try:
            return self.runtime.predict(target, rows, alias)
        except InputError as exc:
            raise InvalidArgument(f"{exc.field}: {exc}") from None
        except NoModelError as exc:
            raise NotFound(str(exc)) from None

    @bentoml.api(route="/metadata")
    def metadata(self, target: str = "abuse", alias: str = "champion") -> dict[str, Any]:
        from serving.runtime import NoModelError

        try:
            m = self.runtime.ensure(target, alias)
        except NoModelError as exc:
            raise NotFound(str(exc)) from None
        return {**m.metadata(), **self.runtime.status()}
