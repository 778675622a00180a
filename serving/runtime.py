"""The scoring runtime: models by alias from the MLflow registry, features from Feast.

Framework-free (the BentoML service in ``serving/service.py`` is a thin
shell around it), so it is tested in process and reused by batch scoring.

Models are loaded with the ``sklearn`` flavour straight from the registry
into this process: the service runs in the project's uv-locked environment,
so scikit-learn and XGBoost are the very versions training used (the model's
``requirements.txt`` pins them too, and ``check_versions`` refuses a model
trained elsewhere), and the raw pipeline's ``predict_proba`` skips the pyfunc
wrapper's per-call cost.

Hot swap: ``refresh()`` compares each loaded alias with the registry; a moved
alias is loaded beside the serving version, smoke-tested on the model's own
input example, and swapped in by one reference assignment. A version that
fails to load or to predict is never swapped in: the old one keeps serving and
the failure is reported (``status()``, logs).

    rt = Runtime(settings)
    rt.ensure("abuse", "champion")
    rt.score("abuse", ["c1", "c2"])
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from config.settings import Settings

__all__ = ["InputError", "Loaded", "NoModelError", "Runtime"]

log = logging.getLogger("gatewise.serving")


class NoModelError(LookupError):
    """No version carries the alias (or it cannot be loaded and nothing serves yet)."""


class InputError(ValueError):
    """Bad rows for ``/predict``; ``field`` names the offending column."""

    def __init__(self, msg: str, field: str | None = None) -> None:
        super().__init__(msg)
        self.field = field


@dataclass
class Loaded:
    target: str
    alias: str
    name: str
    version: str
    model: Any
    task: str
    features: list[str]
    threshold: float | None
    feature_service: str
    metrics: dict[str, float]
    dtypes: dict[str, str]
    loaded_at: float = field(default_factory=time.time)
    fast: Any = None  # models.compiled.CompiledModel when the compiled form was accepted
    form: str = "pipeline"
    form_reason: str = "no compiled form checked"
    reader: Any = None  # features.online_read.OnlineReader for this version's service
    read_path: str = "sdk"
    read_reason: str = ""

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        if self.fast is not None:
            return self.fast.predict_frame(X)
        return self.predict_pipeline(X)

    def predict_pipeline(self, X: pd.DataFrame) -> np.ndarray:
        if self.task in ("binary", "anomaly"):  # an anomaly model's score is its class-1 column
            return np.asarray(self.model.predict_proba(X[self.features])[:, 1], dtype=float)
        return np.asarray(self.model.predict(X[self.features]), dtype=float)

    def predict_matrix(self, M: np.ndarray) -> np.ndarray:
        """Scores for a float matrix in ``features`` order: numpy in, numpy out when the
        compiled form serves; a frame only for the pipeline."""
        if self.fast is not None:
            return self.fast.predict_matrix(M)
        return self.predict_pipeline(pd.DataFrame(M, columns=self.features))

    def metadata(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "alias": self.alias,
            "model": self.name,
            "version": self.version,
            "task": self.task,
            "threshold": self.threshold,
            "feature_service": self.feature_service,
            "features": len(self.features),
            "form": self.form,
            "form_reason": self.form_reason,
            "online_read": self.read_path,
            "online_read_reason": self.read_reason,
            "training_metrics": self.metrics,
            "loaded_at": self.loaded_at,
        }


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._models: dict[tuple[str, str], Loaded] = {}
        self._lock = threading.Lock()  # one load at a time; reads never wait
        self.errors: dict[tuple[str, str], str] = {}
        self._store: Any = None
        self._services: dict[str, tuple[Any, str]] = {}

    # loading -----------------------------------------------------------
    def _client(self) -> Any:
        from models.tracking import client

        return client(self.settings)

    def _resolve(self, target: str, alias: str) -> Any:
        c = self._client()
        name = self.settings.registered_model(target)
        try:
            return c.get_model_version_by_alias(name, alias)
        except Exception as exc:
            raise NoModelError(f"{name}@{alias}: no such alias ({type(exc).__name__})") from None

    def load_version(self, target: str, alias: str, version: str) -> Loaded:
        """Load and smoke-test one version; raises on any failure (nothing is swapped)."""
        import mlflow
        import mlflow.sklearn

        name = self.settings.registered_model(target)
        uri = f"models:/{name}/{version}"
        mlflow.set_tracking_uri(self.settings.mlflow_uri)
        mlflow.set_registry_uri(self.settings.mlflow_uri)
        try:
            info = mlflow.models.get_model_info(uri)
        except Exception as exc:
            raise NoModelError(f"{uri}: {type(exc).__name__}: {exc}"[:400]) from None
        meta = info.metadata or {}
        model = mlflow.sklearn.load_model(uri)
        features = list(meta.get("features") or [])
        schema = info.signature.inputs.to_dict() if info.signature else []
        dtypes = {c["name"]: c["type"] for c in schema if "name" in c}
        run = self._client().get_run(info.run_id) if info.run_id else None
        loaded = Loaded(
            target,
            alias,
            name,
            str(version),
            model,
            str(meta.get("task", "binary")),
            features or list(dtypes),
            meta.get("threshold"),
            str(meta.get("feature_service", "")),
            {
                k: float(v)
                for k, v in (run.data.metrics.items() if run else [])
                if k.startswith("holdout_")
            },
            dtypes,
        )
        # smoke test: the model must predict its own input example, with finite output
        example = pd.DataFrame([{f: 0.0 for f in loaded.features}])
        try:
            from mlflow.models import Model

            ex = Model.load(uri).load_input_example(mlflow.artifacts.download_artifacts(uri))
            if isinstance(ex, pd.DataFrame) and len(ex):
                example = ex
        except Exception:  # an example is a courtesy; zeros still exercise the pipeline
            pass
        out = loaded.predict_pipeline(example)
        if not np.all(np.isfinite(out)):
            raise ValueError(f"{uri}: smoke prediction is not finite ({out[:3]})")
        if self.settings.serving.compiled:
            self._attach_compiled(loaded, info.run_id, example)
        else:
            loaded.form_reason = "serving.compiled is off"
        return loaded

    def _attach_compiled(self, m: Loaded, run_id: str | None, example: pd.DataFrame) -> None:
        """Serve the compiled form only if it gives the pipeline's answers on the check rows
        logged with it and on the input example (``models.compiled.verify``); otherwise the
        pipeline serves and ``form_reason`` says why (``/metadata``, the log)."""
        import mlflow

        from models.compiled import ARTIFACT_DIR

        try:
            d = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=ARTIFACT_DIR)
        except Exception:
            m.form_reason = "no compiled form logged with this version"
            return
        self.attach_compiled_from(m, Path(d), example)

    def attach_compiled_from(self, m: Loaded, d: Path, example: pd.DataFrame) -> None:
        """``_attach_compiled`` on a downloaded ``compiled/`` directory."""
        from models.compiled import CompiledModel, load_dir, verify

        m.fast, m.form = None, "pipeline"
        meta, blob, check = load_dir(d)
        if blob is None:
            m.form_reason = f"not compiled at registration: {meta.get('reason') or 'no model.onnx'}"
            log.info("%s v%s serves the pipeline: %s", m.name, m.version, m.form_reason)
            return
        rows = example if check is None else pd.concat([check, example], ignore_index=True)
        try:
            fast = CompiledModel(blob, m.features)
        except Exception as exc:
            m.form_reason = (
                f"compiled form refused: it does not load ({type(exc).__name__}: {exc})"[:300]
            )
            log.warning("%s v%s: %s", m.name, m.version, m.form_reason)
            return
        v = verify(fast, m.model, rows, m.threshold)
        if not v.ok:
            m.form_reason = f"compiled form refused: {v.reason}"
            log.warning("%s v%s: %s; the pipeline serves", m.name, m.version, m.form_reason)
            return
        m.fast, m.form = fast, "onnx"
        m.form_reason = (
            f"matches the pipeline on {v.rows} rows (max |diff| {v.max_abs_diff:.1e}, "
            f"same decisions at the threshold)"
        )
        log.info("%s v%s serves its compiled form: %s", m.name, m.version, m.form_reason)

    def ensure(self, target: str, alias: str = "champion") -> Loaded:
        """The loaded model for target@alias, loading it on first use."""
        m = self._models.get((target, alias))
        if m is not None:
            return m
        with self._lock:
            m = self._models.get((target, alias))
            if m is None:
                v = self._resolve(target, alias)
                m = self.load_version(target, alias, str(v.version))
                self._models[(target, alias)] = m
                log.info("loaded %s v%s as %s", m.name, m.version, alias)
        return m

    def refresh(self) -> list[str]:
        """Follow moved aliases: load, smoke-test, swap; keep the old one on any failure."""
        changes = []
        for (target, alias), cur in list(self._models.items()):
            try:
                v = str(self._resolve(target, alias).version)
            except NoModelError as exc:
                self.errors[(target, alias)] = str(exc)
                continue
            if v == cur.version:  # (back) at the serving version: nothing is wrong any more
                self.errors.pop((target, alias), None)
                continue
            try:
                with self._lock:
                    new = self.load_version(target, alias, v)
                    self._models[(target, alias)] = new  # the atomic swap
                self.errors.pop((target, alias), None)
                changes.append(f"{target}@{alias}: v{cur.version} -> v{v}")
                log.info("hot swap %s@%s: v%s -> v%s", target, alias, cur.version, v)
            except Exception as exc:
                msg = f"v{v} failed to load or smoke-test, still serving v{cur.version}: {type(exc).__name__}: {exc}"
                self.errors[(target, alias)] = msg[:500]
                log.error("%s@%s %s", target, alias, msg)
        return changes

    def start_refresher(self, interval_s: float = 2.0) -> threading.Thread:
        def loop() -> None:
            while True:
                time.sleep(interval_s)
                try:
                    self.refresh()
                except Exception:
                    log.exception("alias refresh failed")

        t = threading.Thread(target=loop, name="alias-refresh", daemon=True)
        t.start()
        return t

    def status(self) -> dict[str, Any]:
        return {
            "models": {f"{t}@{a}": m.version for (t, a), m in self._models.items()},
            "errors": {f"{t}@{a}": e for (t, a), e in self.errors.items()},
        }

    # features and scores -----------------------------------------------
    def _feature_service(self, name: str) -> tuple[Any, str]:
        hit = self._services.get(name)
        if hit is None:
            from features.store import feature_store

            if self._store is None:
                self._store = feature_store(self.settings)
            fs = self._store.get_feature_service(name)
            view = self._store.get_feature_view(fs.feature_view_projections[0].name)
            hit = self._services[name] = (fs, view.entity_columns[0].name)
        return hit

    def _reader(self, m: Loaded) -> Any:
        """The version's direct online reader (refs resolved once), or None: the SDK path."""
        if m.reader is not None or m.read_reason:
            return m.reader
        if self.settings.serving.online_read != "direct":
            m.read_reason = "serving.online_read is sdk"
            return None
        from features.online_read import OnlineReader, UnsupportedFeature

        self._feature_service(m.feature_service)  # the store, opened once
        try:
            r = OnlineReader(self._store, m.feature_service)
            missing = [f for f in m.features if f not in set(r.columns)]
            if missing:
                raise UnsupportedFeature(f"{missing[0]!r} is not in {m.feature_service}")
        except UnsupportedFeature as exc:
            m.read_reason = f"SDK reads: {exc}"
            log.info("%s v%s: %s", m.name, m.version, m.read_reason)
            return None
        m.reader, m.read_path = r, "direct"
        m.read_reason = f"{r.path} read in Feast's layout, refs resolved once"
        return r

    def online(self, service: str, ids: list[str]) -> tuple[pd.DataFrame, np.ndarray]:
        """Feature rows for ``ids`` and each row's freshness (seconds since its newest value)."""
        fs, key = self._feature_service(service)
        d = self._store.get_online_features(
            features=fs, entity_rows=[{key: e} for e in ids]
        ).to_dict(include_event_timestamps=True)
        ts_cols = [k for k in d if k.endswith("__ts")]
        df = pd.DataFrame({k: v for k, v in d.items() if not k.endswith("__ts") and k != key})
        ts = np.array([d[k] for k in ts_cols], dtype=float) if ts_cols else np.zeros((0, len(ids)))
        newest = ts.max(axis=0) if len(ts) else np.zeros(len(ids))
        fresh = np.where(newest > 0, time.time() - newest, np.nan)
        return df, fresh

    def score(self, target: str, ids: list[str], alias: str = "champion") -> dict[str, Any]:
        m = self.ensure(target, alias)
        scores = np.full(len(ids), np.nan)
        r = self._reader(m)
        if r is not None:  # numpy from the store to the model
            M, newest = r.read(ids, m.features)
            fresh = np.where(newest > 0, time.time() - newest, np.nan)
            known = ~np.isnan(M).all(axis=1)
            if known.all():
                scores = m.predict_matrix(M)
            elif known.any():
                scores[known] = m.predict_matrix(M[known])
        else:  # the SDK and a frame (a service with non-numeric features)
            X, fresh = self.online(m.feature_service, ids)
            known = ~X[m.features].isna().all(axis=1).to_numpy()
            if known.any():
                scores[known] = m.predict(X.loc[known])
        results = []
        for i, e in enumerate(ids):
            if not known[i]:
                results.append(
                    {"id": e, "score": None, "known": False, "reason": "no features online"}
                )
                continue
            s = float(scores[i])
            row: dict[str, Any] = {"id": e, "score": s, "known": True}
            if m.threshold is not None:
                row["flagged"] = s >= m.threshold
            row["freshness_s"] = None if np.isnan(fresh[i]) else round(float(fresh[i]), 1)
            results.append(row)
        return {
            "target": target,
            "alias": alias,
            "model_version": m.version,
            "threshold": m.threshold,
            "results": results,
        }

    def scan(self, target: str, values: list[str], alias: str = "champion") -> dict[str, Any]:
        """Payload targets: ``(label, score)`` per raw value (``models.payload``)."""
        m = self.ensure(target, alias)
        scan = getattr(m.model, "scan", None)
        if scan is None:
            raise InputError(f"target {target!r} is not a payload scanner", "target")
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise InputError("values: a list of strings", "values")
        results = [{"label": lab, "score": sc} for lab, sc in scan(values)] if values else []
        return {
            "target": target,
            "alias": alias,
            "model_version": m.version,
            "threshold": m.threshold,
            "results": results,
        }

    def predict(
        self, target: str, rows: list[dict[str, Any]], alias: str = "champion"
    ) -> dict[str, Any]:
        m = self.ensure(target, alias)
        if not rows:
            raise InputError("no rows", "rows")
        X = pd.DataFrame(rows)
        missing = [f for f in m.features if f not in X.columns]
        if missing:
            raise InputError(f"missing feature {missing[0]!r} ({len(missing)} missing)", missing[0])
        for f in m.features:
            want = m.dtypes.get(f, "double")
            if want in ("double", "float", "long", "integer"):
                try:
                    X[f] = pd.to_numeric(X[f])
                except (ValueError, TypeError):
                    raise InputError(f"feature {f!r} must be numeric ({want})", f) from None
        return {
            "target": target,
            "alias": alias,
            "model_version": m.version,
            "threshold": m.threshold,
            "predictions": [float(v) for v in m.predict(X)],
        }
