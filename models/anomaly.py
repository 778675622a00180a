"""The day-one score: how unusual a client window is within its cohort, learnt without labels.

A gateway that has never labelled anything still knows what ordinary looks like for clients
like this one. ``CohortAnomalyModel`` splits client windows into cohorts by volume (the
client's requests in the last 24 h, in decades: a stand-in for its tier) and route mix
(whether login, password reset and export are a large share), and within each cohort scores
every feature by a robust z-score: ``(x - median) / (1.4826 * MAD)`` on ``sign(x) *
log1p(|x|)``, in the direction that is suspicious (more requests, errors, addresses,
networks, enumeration...; fewer days of history). A window's raw score is the mean of its
three largest positive z-scores; the model's score is where that raw score falls among the
cohort's training windows (its empirical CDF), so 0.99 means "more unusual than 99 % of
windows like it" in every cohort alike. ``explain`` names the features behind a score.

It is registered like any target (``gatewise train --target anomaly``: MLflow run,
registered version, ``challenger``), serves through ``/score`` (``predict_proba``), starts
in shadow like every model not validated on the traffic it judges, and votes in the label
model (``labeling.functions``: ``anomalous``). With labels in the data dir, training also
reports how well it ranks them (a diagnostic: it never trains on them).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin

from config.settings import Settings
from config.targets import TargetSettings

__all__ = ["CohortAnomalyModel", "train_anomaly"]

# features where smaller is the suspicious direction
_LOWER_IS_ODD = ("client_age_days",)
_TOP_K = 3
_MIN_COHORT = 200


def _transform(X: pd.DataFrame) -> np.ndarray:
    a = X.to_numpy(dtype=float, na_value=np.nan)
    return np.sign(a) * np.log1p(np.abs(a))


class CohortAnomalyModel(ClassifierMixin, BaseEstimator):
    """Robust z-scores within cohorts, calibrated per cohort. ``predict_proba`` gives
    ``[1 - score, score]`` so serving and policies treat it like a binary model."""

    def __init__(
        self,
        volume_feature: str = "request_count_24h",
        mix_feature: str = "sensitive_share_24h",
        mix_cut: float = 0.2,
    ) -> None:
        self.volume_feature = volume_feature
        self.mix_feature = mix_feature
        self.mix_cut = mix_cut

    @property
    def classes_(self) -> np.ndarray:
        return np.array([0, 1])

    def _cohort(self, X: pd.DataFrame) -> np.ndarray:
        vol = (
            X[self.volume_feature].to_numpy(dtype=float, na_value=0.0)
            if self.volume_feature in X
            else np.zeros(len(X))
        )
        band = np.clip(np.floor(np.log10(np.maximum(vol, 1.0))), 0, 5).astype(int)
        mix = (
            (X[self.mix_feature].to_numpy(dtype=float, na_value=0.0) >= self.mix_cut).astype(int)
            if self.mix_feature in X
            else np.zeros(len(X), dtype=int)
        )
        return band * 2 + mix

    def fit(self, X: pd.DataFrame, y: Any = None) -> CohortAnomalyModel:
        X = X.reset_index(drop=True)
        self.features_ = list(X.columns)
        self.direction_ = np.array([-1.0 if c in _LOWER_IS_ODD else 1.0 for c in self.features_])
        T = _transform(X)
        cohorts = self._cohort(X)
        self.stats_: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        glob = self._stats(T)
        self.global_ = glob
        self.cohort_sizes_: dict[int, int] = {}
        for c in np.unique(cohorts):
            m = cohorts == c
            self.cohort_sizes_[int(c)] = int(m.sum())
            if m.sum() >= _MIN_COHORT:
                self.stats_[int(c)] = self._stats(T[m])
        # calibration: each cohort's raw scores on its own training windows
        raw = self._raw(T, cohorts)
        self.calibration_: dict[int, np.ndarray] = {}
        for c in np.unique(cohorts):
            m = cohorts == c
            self.calibration_[int(c)] = np.sort(raw[m]) if m.sum() >= _MIN_COHORT else np.sort(raw)
        self.all_raw_ = np.sort(raw)
        return self

    @staticmethod
    def _stats(T: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        med = np.nanmedian(T, axis=0)
        mad = np.nanmedian(np.abs(T - med), axis=0)
        # a feature constant in the cohort (MAD 0): its spread over the whole table's tail
        q = np.nanquantile(T, 0.9, axis=0) - np.nanquantile(T, 0.1, axis=0)
        scale = np.where(mad > 0, 1.4826 * mad, np.maximum(q / 2.563, 0.05))
        return med, scale, np.ones_like(med)

    def _z(self, T: np.ndarray, cohorts: np.ndarray) -> np.ndarray:
        z = np.zeros_like(T)
        for c in np.unique(cohorts):
            m = cohorts == c
            med, scale, _ = self.stats_.get(int(c), self.global_)
            z[m] = (T[m] - med) / scale
        z = z * self.direction_
        return np.nan_to_num(z, nan=0.0)

    def _raw(self, T: np.ndarray, cohorts: np.ndarray) -> np.ndarray:
        z = np.clip(self._z(T, cohorts), 0, None)
        k = min(_TOP_K, z.shape[1])
        top = -np.partition(-z, k - 1, axis=1)[:, :k]
        return np.asarray(top.mean(axis=1))

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        X = X.reindex(columns=self.features_)
        T = _transform(X)
        cohorts = self._cohort(X)
        raw = self._raw(T, cohorts)
        s = np.empty(len(X))
        for c in np.unique(cohorts):
            m = cohorts == c
            ref = self.calibration_.get(int(c), self.all_raw_)
            s[m] = np.searchsorted(ref, raw[m], side="right") / max(len(ref), 1)
        return np.column_stack([1 - s, s])

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return (self.predict_proba(X)[:, 1] >= 0.995).astype(int)

    def explain(self, X: pd.DataFrame, top: int = 3) -> list[list[tuple[str, float]]]:
        """Per row, the features with the largest suspicious z-scores."""
        X = X.reindex(columns=self.features_)
        z = self._z(_transform(X), self._cohort(X))
        idx = np.argsort(-z, axis=1)[:, :top]
        return [
            [(self.features_[j], float(z[i, j])) for j in row if z[i, j] > 0]
            for i, row in enumerate(idx)
        ]


def _windows(settings: Settings, target: TargetSettings) -> pd.DataFrame:
    """Feature rows of the most recent ``recent_days`` from the offline store (each row is
    what ``/score`` serves at its timestamp), sampled down to ``max_rows`` by whole clients."""
    from features.windows import CLIENT_FEATURES

    root = settings.features_dir / "client_windows"
    files = sorted(root.glob("*/*.parquet"))
    if not files:
        raise ValueError(f"no features in {root}: build them with `gatewise features build`")
    df = pd.read_parquet(root, columns=["client_id", "event_timestamp", *CLIENT_FEATURES])
    df["event_timestamp"] = pd.to_datetime(df["event_timestamp"], utc=True)
    if target.recent_days:
        df = df[
            df["event_timestamp"]
            > df["event_timestamp"].max() - pd.Timedelta(days=target.recent_days)
        ]
    if len(df) > target.max_rows:
        rng = np.random.default_rng(0)
        clients = df["client_id"].unique()
        keep = rng.permutation(clients)[: max(1, int(len(clients) * target.max_rows / len(df)))]
        df = df[df["client_id"].isin(keep)]
    return df.reset_index(drop=True)


def train_anomaly(settings: Settings, name: str, target: TargetSettings, **_: Any) -> Any:
    """Fit, log (MLflow run with the cohorts and the score distribution), register as
    ``challenger``. Labels, when the data dir has them, only measure it."""
    import mlflow
    from mlflow.models import infer_signature

    from features.windows import CLIENT_FEATURES
    from models import registry as reg
    from models.tracking import ensure_experiment
    from models.train import TrainResult, _requirements

    t0 = time.perf_counter()
    df = _windows(settings, target)
    X = df[list(CLIENT_FEATURES)].astype(float)
    model = CohortAnomalyModel().fit(X)
    s = model.predict_proba(X)[:, 1]
    diag: dict[str, float] = {}
    labelled = _labelled_diagnostic(settings, df, s)
    if labelled is not None:
        diag = labelled
    ensure_experiment(settings, name)
    model_name = settings.registered_model(name)
    with mlflow.start_run(run_name=f"{name}-cohorts") as run:
        mlflow.set_tags(
            {"target": name, "task": "anomaly", "feature_service": target.feature_service}
        )
        mlflow.log_params(
            {
                "rows": len(df),
                "clients": int(df["client_id"].nunique()),
                "cohorts": len(model.cohort_sizes_),
                "recent_days": target.recent_days,
                "first": str(df["event_timestamp"].min()),
                "last": str(df["event_timestamp"].max()),
            }
        )
        mlflow.log_metrics({f"labelled_{k}": v for k, v in diag.items()})
        art = Path(tempfile.mkdtemp())
        pd.DataFrame(
            {"cohort": list(model.cohort_sizes_), "windows": list(model.cohort_sizes_.values())}
        ).to_csv(art / "cohorts.csv", index=False)
        mlflow.log_artifact(str(art / "cohorts.csv"))
        _plot_scores(s, art / "scores.png")
        mlflow.log_artifact(str(art / "scores.png"), "plots")
        sample = X.iloc[:200]
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            registered_model_name=model_name,
            serialization_format="cloudpickle",
            pip_requirements=_requirements(),
            signature=infer_signature(sample, model.predict_proba(sample)),
            input_example=X.iloc[:3],
            pyfunc_predict_fn="predict_proba",
            metadata={
                "target": name,
                "task": "anomaly",
                "feature_service": target.feature_service,
                "threshold": 0.995,
                "metric": "none",
                "features": list(X.columns),
            },
        )
    version = str(info.registered_model_version)
    c = reg.client(settings)
    reason = (
        "unsupervised: no labels judge it; it may act only in shadow until its harm bound clears"
    )
    tags = {
        "gate.eligible": "true",
        "gate.reason": reason,
        "gate.metric": "none",
        "threshold": "0.995",
        "feature_service": target.feature_service,
        "target": name,
        "validated": "false",
        **{f"labelled.{k}": f"{v:.4f}" for k, v in diag.items()},
    }
    for k, v in tags.items():
        c.set_model_version_tag(model_name, version, k, v)
    c.set_registered_model_alias(model_name, reg.CHALLENGER, version)
    return TrainResult(
        model_name=model_name,
        version=version,
        run_id=run.info.run_id,
        metric="none",
        holdout_score=float(diag.get("average_precision", float("nan"))),
        champion_version=None,
        champion_score=None,
        eligible=True,
        reasons=[],
        threshold=0.995,
        trials=1,
        best_params={"cohorts": len(model.cohort_sizes_)},
        warnings=[] if labelled is not None else ["no labels: the score is not measured"],
        seconds=time.perf_counter() - t0,
    )


def _labelled_diagnostic(
    settings: Settings, df: pd.DataFrame, s: np.ndarray
) -> dict[str, float] | None:
    """How the score ranks the labels the data dir has (window start = row time - 5 min)."""
    from labeling.store import LabelStore

    store = LabelStore(settings.labels_dir)
    lab = store.resolve(store.read()).to_pandas()
    if lab.empty:
        return None
    from sklearn.metrics import average_precision_score, roc_auc_score

    keys = df[["client_id"]].assign(
        event_timestamp=df["event_timestamp"] - pd.Timedelta(minutes=5), score=s
    )
    lab["event_timestamp"] = pd.to_datetime(lab["event_timestamp"], utc=True)
    m = keys.merge(lab[["client_id", "event_timestamp", "label"]], how="inner")
    if m["label"].nunique() < 2:
        return None
    return {
        "roc_auc": float(roc_auc_score(m["label"], m["score"])),
        "average_precision": float(average_precision_score(m["label"], m["score"])),
        "windows": float(len(m)),
    }


def _plot_scores(s: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(s, bins=50, color="#4a7")
    ax.set_xlabel("anomaly score (cohort CDF)")
    ax.set_ylabel("windows")
    ax.set_yscale("log")
    ax.set_title("day-one anomaly scores on the training windows")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
