"""AutoML search: Optuna TPE over model families, preprocessing and feature selection.

The search space is one function (``suggest``); the objective fits a
pipeline on the training split and scores it on the validation split, which
respects time (validation rows come after training rows) and groups (a client
is never on both sides). Trials may run in several processes that share one
Optuna storage; none of them touches MLflow (the coordinator logs trials from
the study afterwards).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from models.data import Dataset

__all__ = [
    "HIGHER_IS_BETTER",
    "Splits",
    "build_model",
    "make_splits",
    "objective",
    "score",
    "suggest",
]

HIGHER_IS_BETTER = {
    "average_precision": True,
    "roc_auc": True,
    "f1": True,
    "r2": True,
    "log_loss": False,
    "mae": False,
    "rmse": False,
}


@dataclass
class Splits:
    train: np.ndarray
    val: np.ndarray
    holdout: np.ndarray

    @property
    def fit(self) -> np.ndarray:
        """Rows the final model is refit on (everything but the holdout)."""
        return np.concatenate([self.train, self.val])


def _group_bucket(groups: pd.Series, salt: str = "gatewise") -> np.ndarray:
    """Stable pseudo-random number in [0, 1) per group (same across runs)."""
    h = pd.util.hash_pandas_object(groups.astype(str) + salt, index=False).to_numpy()
    return (h % 10_000) / 10_000.0


def make_splits(
    ds: Dataset, holdout_fraction: float = 0.2, val_fraction: float = 0.2, seed: int = 0
) -> Splits:
    """Train / validation / holdout.

    With time and groups: groups are split 60/20/20 by a stable hash; training
    rows come before the validation cut-off, validation rows after it and
    before the holdout cut-off, holdout rows after that (the most recent
    period). With groups only: a group split; with neither: a stratified random split.
    """
    n = len(ds.y)
    idx = np.arange(n)
    rng = np.random.default_rng(seed)
    if ds.groups is not None:
        b = _group_bucket(ds.groups)
        g_train, g_val, g_hold = b < 0.6, (b >= 0.6) & (b < 0.8), b >= 0.8
    else:
        r: np.ndarray = rng.random(n)
        if ds.task == "binary":  # stratify: rank the random numbers within each class
            r = pd.Series(r).groupby(ds.y.to_numpy()).rank(pct=True).to_numpy()
        g_train, g_val, g_hold = (
            r < 1 - val_fraction - holdout_fraction,
            (r >= 1 - val_fraction - holdout_fraction) & (r < 1 - holdout_fraction),
            r >= 1 - holdout_fraction,
        )
    if ds.time is not None:
        ti = (
            (pd.to_datetime(ds.time, utc=True) - pd.Timestamp(0, tz="UTC"))
            .dt.total_seconds()
            .to_numpy()
        )
        hold_cut = np.quantile(ti, 1 - holdout_fraction)
        val_cut = np.quantile(ti, 1 - holdout_fraction - val_fraction)
        train = idx[g_train & (ti < val_cut)]
        val = idx[g_val & (ti >= val_cut) & (ti < hold_cut)]
        hold = idx[g_hold & (ti >= hold_cut)]
    else:
        train, val, hold = idx[g_train], idx[g_val], idx[g_hold]
    for name, part in (("training", train), ("validation", val), ("holdout", hold)):
        if len(part) == 0:
            from models.data import DataQualityError

            raise DataQualityError(
                f"the {name} split of {ds.name!r} is empty: too few rows, groups or time span"
            )
    return Splits(train, val, hold)


def score(metric: str, y: np.ndarray, pred: np.ndarray) -> float:
    from sklearn import metrics as m

    if metric == "average_precision":
        return float(m.average_precision_score(y, pred))
    if metric == "roc_auc":
        return float(m.roc_auc_score(y, pred))
    if metric == "log_loss":
        return float(m.log_loss(y, np.clip(pred, 1e-7, 1 - 1e-7)))
    if metric == "f1":  # at the best threshold on these rows
        p, r, _ = m.precision_recall_curve(y, pred)
        return float(np.nanmax(2 * p * r / np.maximum(p + r, 1e-12)))
    if metric == "mae":
        return float(m.mean_absolute_error(y, pred))
    if metric == "rmse":
        return float(np.sqrt(m.mean_squared_error(y, pred)))
    if metric == "r2":
        return float(m.r2_score(y, pred))
    raise ValueError(f"unknown metric {metric!r}")


def suggest(trial: Any, task: str, families: Sequence[str], n_features: int) -> dict[str, Any]:
    """The search space: family, its hyperparameters, preprocessing and selection."""
    p: dict[str, Any] = {"family": trial.suggest_categorical("family", families)}
    p["log_transform"] = trial.suggest_categorical("log_transform", [False, True])
    p["selection"] = trial.suggest_categorical("selection", ["none", "mutual_info", "l1"])
    if p["selection"] != "none":
        p["keep_fraction"] = trial.suggest_float("keep_fraction", 0.3, 1.0)
    if task == "binary":
        p["class_weight"] = trial.suggest_categorical("class_weight", ["none", "balanced"])
    f = p["family"]
    if f == "linear":
        p["scale"] = True
        p["C" if task == "binary" else "alpha"] = trial.suggest_float(
            "C" if task == "binary" else "alpha", 1e-3, 1e2, log=True
        )
    elif f in ("random_forest", "extra_trees"):
        p["n_estimators"] = trial.suggest_int("n_estimators", 50, 300, log=True)
        p["max_depth"] = trial.suggest_int("max_depth", 3, 24)
        p["min_samples_leaf"] = trial.suggest_int("min_samples_leaf", 1, 60, log=True)
        p["max_features"] = trial.suggest_float("max_features", 0.1, 1.0)
    elif f == "hist_gradient_boosting":
        p["learning_rate"] = trial.suggest_float("learning_rate", 0.02, 0.3, log=True)
        p["max_iter"] = trial.suggest_int("max_iter", 50, 600, log=True)
        p["max_leaf_nodes"] = trial.suggest_int("max_leaf_nodes", 7, 127, log=True)
        p["min_samples_leaf"] = trial.suggest_int("min_samples_leaf", 5, 200, log=True)
        p["l2_regularization"] = trial.suggest_float("l2_regularization", 1e-6, 10.0, log=True)
    elif f == "xgboost":
        p["max_depth"] = trial.suggest_int("max_depth", 2, 10)
        p["learning_rate"] = trial.suggest_float("learning_rate", 0.01, 0.3, log=True)
        p["subsample"] = trial.suggest_float("subsample", 0.5, 1.0)
        p["colsample_bytree"] = trial.suggest_float("colsample_bytree", 0.3, 1.0)
        p["min_child_weight"] = trial.suggest_float("min_child_weight", 0.5, 50, log=True)
        p["reg_lambda"] = trial.suggest_float("reg_lambda", 1e-3, 50, log=True)
    return p


def _signed_log1p(x: Any) -> Any:
    return np.sign(x) * np.log1p(np.abs(x))


def _mi_scores(task: str) -> Any:
    """Mutual information on a sample of at most 5,000 rows (it is quadratic-ish)."""
    from sklearn.feature_selection import mutual_info_classif, mutual_info_regression

    fn = mutual_info_classif if task == "binary" else mutual_info_regression

    def scores(X: np.ndarray, y: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng(0)
        i = rng.choice(len(y), size=min(len(y), 5_000), replace=False)
        return fn(X[i], y[i], random_state=0)

    return scores


def build_model(
    p: dict[str, Any],
    task: str,
    X: pd.DataFrame,
    y: pd.Series,
    X_val: pd.DataFrame | None = None,
    y_val: pd.Series | None = None,
    seed: int = 0,
    n_jobs: int = 1,
) -> Any:
    """Fit the pipeline ``p`` describes; returns a fitted sklearn ``Pipeline``.

    XGBoost stops early on the validation rows when they are given.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.feature_selection import SelectFromModel, SelectPercentile
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

    num = [c for c in X.columns if pd.api.types.is_numeric_dtype(X[c])]
    cat = [c for c in X.columns if c not in num]
    num_steps: list[Any] = [SimpleImputer(strategy="median", keep_empty_features=True)]
    if p.get("log_transform"):
        num_steps.append(FunctionTransformer(_signed_log1p, feature_names_out="one-to-one"))
    if p.get("scale"):
        num_steps.append(StandardScaler())
    transformers = [("num", make_pipeline(*num_steps), num)]
    if cat:
        transformers.append(
            (
                "cat",
                make_pipeline(
                    SimpleImputer(strategy="most_frequent"),
                    OneHotEncoder(
                        handle_unknown="infrequent_if_exist",
                        min_frequency=20,
                        max_categories=40,
                        sparse_output=False,
                    ),
                ),
                cat,
            )
        )
    pre = ColumnTransformer(transformers, verbose_feature_names_out=False)
    steps: list[tuple[str, Any]] = [("pre", pre)]
    binary = task == "binary"
    if p.get("selection", "none") == "mutual_info":
        steps.append(
            ("select", SelectPercentile(_mi_scores(task), percentile=100 * p["keep_fraction"]))
        )
    elif p.get("selection") == "l1":
        from sklearn.linear_model import Lasso, LogisticRegression

        strength = 10 ** (3 * p["keep_fraction"] - 3)  # keep more features -> weaker L1 penalty
        l1 = (
            LogisticRegression(penalty="l1", solver="liblinear", C=strength)
            if binary
            else Lasso(alpha=1.0 / strength / 1000)
        )
        steps += [("l1_scale", StandardScaler()), ("select", SelectFromModel(l1, threshold=1e-5))]
    cw = "balanced" if p.get("class_weight") == "balanced" else None
    est = _estimator(p, task, cw, y, seed, n_jobs)
    prep = Pipeline(steps)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Xt = prep.fit_transform(X, y)
        if p["family"] == "xgboost" and X_val is not None and y_val is not None:
            est.set_params(early_stopping_rounds=30)
            est.fit(Xt, y, eval_set=[(prep.transform(X_val), y_val)], verbose=False)
        else:
            est.fit(Xt, y)
    return Pipeline([*prep.steps, ("model", est)])


def _estimator(
    p: dict[str, Any], task: str, cw: str | None, y: pd.Series, seed: int, n_jobs: int
) -> Any:
    binary = task == "binary"
    f = p["family"]
    if f == "linear":
        from sklearn.linear_model import LogisticRegression, Ridge

        return (
            LogisticRegression(C=p["C"], class_weight=cw, max_iter=500)
            if binary
            else Ridge(alpha=p["alpha"])
        )
    if f in ("random_forest", "extra_trees"):
        from sklearn import ensemble

        cls = {
            "random_forest": (ensemble.RandomForestClassifier, ensemble.RandomForestRegressor),
            "extra_trees": (ensemble.ExtraTreesClassifier, ensemble.ExtraTreesRegressor),
        }[f][0 if binary else 1]
        kw = {"class_weight": cw} if binary else {}
        return cls(
            n_estimators=p["n_estimators"],
            max_depth=p["max_depth"],
            min_samples_leaf=p["min_samples_leaf"],
            max_features=p["max_features"],
            n_jobs=n_jobs,
            random_state=seed,
            **kw,
        )
    if f == "hist_gradient_boosting":
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

        cls2 = HistGradientBoostingClassifier if binary else HistGradientBoostingRegressor
        kw = {"class_weight": cw} if binary else {}
        return cls2(
            learning_rate=p["learning_rate"],
            max_iter=p["max_iter"],
            max_leaf_nodes=p["max_leaf_nodes"],
            min_samples_leaf=p["min_samples_leaf"],
            l2_regularization=p["l2_regularization"],
            early_stopping=True,
            random_state=seed,
            **kw,
        )
    if f == "xgboost":
        import xgboost as xgb

        common = dict(
            n_estimators=1000,
            max_depth=p["max_depth"],
            learning_rate=p["learning_rate"],
            subsample=p["subsample"],
            colsample_bytree=p["colsample_bytree"],
            min_child_weight=p["min_child_weight"],
            reg_lambda=p["reg_lambda"],
            tree_method="hist",
            n_jobs=n_jobs,
            random_state=seed,
        )
        if binary:
            pos = max(float(y.sum()), 1.0)
            spw = (len(y) - pos) / pos if cw == "balanced" else 1.0
            return xgb.XGBClassifier(**common, scale_pos_weight=spw, eval_metric="logloss")
        return xgb.XGBRegressor(**common)
    raise ValueError(f"unknown model family {f!r}")


def predict(model: Any, task: str, X: pd.DataFrame) -> np.ndarray:
    return model.predict_proba(X)[:, 1] if task == "binary" else model.predict(X)


def objective(
    ds: Dataset,
    splits: Splits,
    metric: str,
    families: Sequence[str],
    seed: int = 0,
    n_jobs: int = 1,
    keep_best: dict[str, Any] | None = None,
) -> Any:
    """An Optuna objective over ``ds``: fit on the training split, score on validation.

    Large training sets are first fitted on a quarter of the rows; the trial
    reports that score and is pruned if it trails the median (multi-fidelity).
    ``keep_best`` (coordinator only) receives the number and validation
    predictions of the best trial run in this process, so choosing the
    threshold needs no refit.
    """
    import os

    import optuna

    Xtr, ytr = ds.X.iloc[splits.train], ds.y.iloc[splits.train]
    Xva, yva = ds.X.iloc[splits.val], ds.y.iloc[splits.val]

    def run(trial: optuna.Trial) -> float:
        p = suggest(trial, ds.task, families, ds.X.shape[1])
        t0 = time.perf_counter()
        if len(Xtr) > 20_000:
            sub = np.random.default_rng(trial.number).choice(len(Xtr), len(Xtr) // 4, replace=False)
            m0 = build_model(p, ds.task, Xtr.iloc[sub], ytr.iloc[sub], Xva, yva, seed, n_jobs)
            trial.report(score(metric, yva.to_numpy(), predict(m0, ds.task, Xva)), step=0)
            if trial.should_prune():
                trial.set_user_attr("fit_seconds", time.perf_counter() - t0)
                raise optuna.TrialPruned()
        model = build_model(p, ds.task, Xtr, ytr, Xva, yva, seed, n_jobs)
        pred = predict(model, ds.task, Xva)
        value = score(metric, yva.to_numpy(), pred)
        trial.report(value, step=1)
        trial.set_user_attr("fit_seconds", time.perf_counter() - t0)
        trial.set_user_attr("params", p)
        others = ("average_precision", "roc_auc") if ds.task == "binary" else ("mae", "rmse", "r2")
        trial.set_user_attr("metrics", {m: score(m, yva.to_numpy(), pred) for m in others})
        trial.set_user_attr("pid", os.getpid())
        if not np.isfinite(value):
            raise optuna.TrialPruned("non-finite score")
        if keep_best is not None:
            prev = keep_best.get("value")
            if prev is None or (value > prev if HIGHER_IS_BETTER[metric] else value < prev):
                keep_best.update(value=value, number=trial.number, val_pred=pred)
        return value

    return run
