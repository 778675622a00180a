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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from models.data import Dataset

__all__ = [
    "HIGHER_IS_BETTER",
    "Splits",
    "build_model",
    "default_configs",
    "evaluate_params",
    "make_splits",
    "objective",
    "oof_splits",
    "score",
    "suggest",
]

HIGHER_IS_BETTER = {
    "average_precision": True,
    "roc_auc": True,
    "f1": True,
    "accuracy": True,
    "r2": True,
    "log_loss": False,
    "mae": False,
    "rmse": False,
}


KEEP_PREDICTIONS = 20  # the best trials' out-of-fold predictions kept (ensemble candidates)
CV_MAX_ROWS = 20_000  # below this (and without a time column) trials are cross-validated


@dataclass
class Splits:
    train: np.ndarray
    val: np.ndarray
    holdout: np.ndarray
    folds: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.folds:
            self.folds = [(self.train, self.val)]

    @property
    def fit(self) -> np.ndarray:
        """Rows the final model is refit on (everything but the holdout)."""
        return np.concatenate([self.train, self.val])


def _group_bucket(groups: pd.Series, salt: str = "gatewise") -> np.ndarray:
    """Stable pseudo-random number in [0, 1) per group (same across runs)."""
    h = pd.util.hash_pandas_object(groups.astype(str) + salt, index=False).to_numpy()
    return (h % 10_000) / 10_000.0


def make_splits(
    ds: Dataset,
    holdout_fraction: float = 0.2,
    val_fraction: float = 0.2,
    seed: int = 0,
    cv_max_rows: int = CV_MAX_ROWS,
) -> Splits:
    """Train / validation / holdout.

    With time and groups: groups are split 60/20/20 by a stable hash; training
    rows come before the validation cut-off, validation rows after it and
    before the holdout cut-off, holdout rows after that (the most recent
    period). With groups only: a group split; with neither: a stratified random split.

    Trials are scored on ``folds``: the one train/validation split when rows
    carry time (the future must not train the past) or are many; otherwise
    k-fold cross-validation over train + validation (k = 5 up to 5,000 rows,
    3 above; folds keep groups whole and classes stratified), because a single
    validation split of a few hundred rows picks noise as often as signal.
    """
    n = len(ds.y)
    idx = np.arange(n)
    rng = np.random.default_rng(seed)
    if ds.groups is not None:
        b = _group_bucket(ds.groups)
        g_train, g_val, g_hold = b < 0.6, (b >= 0.6) & (b < 0.8), b >= 0.8
    else:
        r: np.ndarray = rng.random(n)
        if ds.task != "regression":  # stratify: rank the random numbers within each class
            r = pd.Series(r).groupby(ds.y.to_numpy()).rank(pct=True).to_numpy()
        g_train, g_val, g_hold = (
            r < 1 - val_fraction - holdout_fraction,
            (r >= 1 - val_fraction - holdout_fraction) & (r < 1 - holdout_fraction),
            r >= 1 - holdout_fraction,
        )
    if ds.holdout_only is not None:  # whole sources kept for evaluation, with their groups
        only = ds.holdout_only.to_numpy().astype(bool)
        if ds.groups is not None:
            only |= ds.groups.isin(set(ds.groups[only])).to_numpy()
        g_train, g_val, g_hold = g_train & ~only, g_val & ~only, g_hold | only
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
    folds: list[tuple[np.ndarray, np.ndarray]] = []
    fit = np.concatenate([train, val])
    if ds.time is None and len(fit) <= cv_max_rows:
        k = 5 if len(fit) <= 5_000 else 3
        if ds.groups is not None:
            key = (b[fit] - b[fit].min()) / max(float(np.ptp(b[fit])), 1e-12)
        else:
            key = rng.random(len(fit))
            if ds.task != "regression":
                key = pd.Series(key).groupby(ds.y.to_numpy()[fit]).rank(pct=True).to_numpy()
        fold = np.minimum((key * k).astype(int), k - 1)
        folds = [(fit[fold != i], fit[fold == i]) for i in range(k)]
        if any(len(v) == 0 or len(t) == 0 for t, v in folds):
            folds = []
    return Splits(train, val, hold, folds)


def oof_splits(ds: Dataset, splits: Splits, k: int = 5) -> Splits:
    """``splits`` with ``k`` folds over all non-holdout rows (groups kept whole): for
    out-of-fold predictions on every row a final model trains on, e.g. a threshold at a
    small false-positive budget that one validation split holds too few negatives for."""
    fit = splits.fit
    if ds.groups is not None:
        b = _group_bucket(ds.groups, salt="oof")[fit]
    else:
        b = np.random.default_rng(0).random(len(fit))
    key = pd.Series(b).rank(method="dense", pct=True).to_numpy()
    fold = np.minimum((key * k).astype(int), k - 1)
    folds = [(fit[fold != i], fit[fold == i]) for i in range(k)]
    if any(len(v) == 0 or len(t) == 0 for t, v in folds):
        return splits
    return Splits(splits.train, splits.val, splits.holdout, folds)


def score(metric: str, y: np.ndarray, pred: np.ndarray) -> float:
    """``metric`` of predictions ``pred``: a score per row (binary, regression) or a
    probability per class and row (multiclass: macro averages over classes, one against
    the rest; accuracy and F1 of the most probable class)."""
    from sklearn import metrics as m

    if np.ndim(pred) == 2:
        return _multiclass_score(metric, np.asarray(y, dtype=int), pred)
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
    if metric == "accuracy":
        return float(m.accuracy_score(y, np.asarray(pred) >= 0.5))
    raise ValueError(f"unknown metric {metric!r}")


def _multiclass_score(metric: str, y: np.ndarray, proba: np.ndarray) -> float:
    from sklearn import metrics as m

    k = proba.shape[1]
    if metric == "log_loss":
        p = np.clip(proba, 1e-7, 1)
        return float(m.log_loss(y, p / p.sum(axis=1, keepdims=True), labels=np.arange(k)))
    if metric == "accuracy":
        return float(m.accuracy_score(y, proba.argmax(axis=1)))
    if metric == "f1":
        return float(m.f1_score(y, proba.argmax(axis=1), average="macro", labels=np.unique(y)))
    if metric in ("roc_auc", "average_precision"):
        fn = m.roc_auc_score if metric == "roc_auc" else m.average_precision_score
        # one class against the rest, averaged over the classes these rows hold both sides of
        per = [
            fn((y == c).astype(int), proba[:, c])
            for c in range(k)
            if 0 < int((y == c).sum()) < len(y)
        ]
        return float(np.mean(per)) if per else float("nan")
    raise ValueError(f"metric {metric!r} does not apply to a multiclass label")


SELECTIONS = ("none", "mutual_info", "l1")
RFE_MAX_FEATURES = 200  # recursive elimination is offered below this many columns


def selections(n_features: int, budget_s: float | None, task: str = "binary") -> tuple[str, ...]:
    """Feature-selection choices: recursive elimination only where the budget allows; a
    multiclass label gets mutual information only (liblinear's L1 and RFE rankers are
    binary)."""
    if task == "multiclass":
        return ("none", "mutual_info")
    if n_features <= RFE_MAX_FEATURES and (budget_s is None or budget_s >= 120):
        return (*SELECTIONS, "rfe")
    return SELECTIONS


def is_text(X: pd.DataFrame) -> bool:
    """A payload frame: one column of raw request content (features come from the text)."""
    from features.payload import TEXT_COLUMN

    return list(X.columns) == [TEXT_COLUMN]


def suggest(
    trial: Any,
    task: str,
    families: Sequence[str],
    n_features: int,
    selection_choices: Sequence[str] = SELECTIONS,
    text: bool = False,
) -> dict[str, Any]:
    """The search space: family, its hyperparameters, preprocessing and selection.

    ``text``: features are hashed n-grams (``features.payload``): no log transform or
    column selection (the hashing already bounds the width)."""
    p: dict[str, Any] = {"family": trial.suggest_categorical("family", families)}
    if text:
        p.update(log_transform=False, selection="none", text=True)
    else:
        p["log_transform"] = trial.suggest_categorical("log_transform", [False, True])
        p["selection"] = trial.suggest_categorical("selection", list(selection_choices))
    if p["selection"] != "none":
        p["keep_fraction"] = trial.suggest_float("keep_fraction", 0.3, 1.0)
    if task != "regression":
        p["class_weight"] = trial.suggest_categorical("class_weight", ["none", "balanced"])
    f = p["family"]
    if f == "naive_bayes":
        p["alpha"] = trial.suggest_float("alpha", 1e-3, 10.0, log=True)
        p["norm"] = trial.suggest_categorical("norm", [False, True])
    elif f == "linear" and text:
        p["C"] = trial.suggest_float("C", 1e-1, 1e3, log=True)
    elif f == "linear":
        p["scale"] = True
        p["C" if task != "regression" else "alpha"] = trial.suggest_float(
            "C" if task != "regression" else "alpha", 1e-3, 1e2, log=True
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
        if text:
            # a fixed number of rounds: early stopping's evaluation matrix over 2^18 sparse
            # columns is pathologically slow to build in XGBoost 3.2 (minutes for 9k rows)
            p["n_rounds"] = trial.suggest_int("n_rounds", 30, 300, log=True)
        p["max_depth"] = trial.suggest_int("max_depth", 2, 10)
        p["learning_rate"] = trial.suggest_float("learning_rate", 0.01, 0.3, log=True)
        p["subsample"] = trial.suggest_float("subsample", 0.5, 1.0)
        p["colsample_bytree"] = trial.suggest_float("colsample_bytree", 0.3, 1.0)
        p["min_child_weight"] = trial.suggest_float("min_child_weight", 0.5, 50, log=True)
        p["reg_lambda"] = trial.suggest_float("reg_lambda", 1e-3, 50, log=True)
    return p


def default_configs(task: str, families: Sequence[str], text: bool = False) -> list[dict[str, Any]]:
    """Library defaults per family, tried first (cheap, robust starting points for TPE)."""
    base: dict[str, Any] = {} if text else {"log_transform": False, "selection": "none"}
    if task != "regression":
        base["class_weight"] = "none"
    if text:  # cheapest first: a slow family must not eat the budget before the fast ones ran
        text_defaults: dict[str, dict[str, Any]] = {
            "naive_bayes": {"alpha": 0.1, "norm": False},
            "linear": {"C": 20.0, "class_weight": "balanced"},
            "xgboost": {
                "max_depth": 6,
                "learning_rate": 0.3,
                "subsample": 1.0,
                "colsample_bytree": 0.5,
                "min_child_weight": 1.0,
                "reg_lambda": 1.0,
                "n_rounds": 100,
            },
        }
        return [{"family": f, **base, **text_defaults[f]} for f in text_defaults if f in families]
    by_family: dict[str, dict[str, Any]] = {
        "hist_gradient_boosting": {
            "learning_rate": 0.1,
            "max_iter": 100,
            "max_leaf_nodes": 31,
            "min_samples_leaf": 20,
            "l2_regularization": 1e-6,
        },
        "xgboost": {
            "max_depth": 6,
            "learning_rate": 0.1,
            "subsample": 1.0,
            "colsample_bytree": 1.0,
            "min_child_weight": 1.0,
            "reg_lambda": 1.0,
        },
        "linear": {"C" if task != "regression" else "alpha": 1.0},
        "random_forest": {
            "n_estimators": 100,
            "max_depth": 24,
            "min_samples_leaf": 1,
            "max_features": 0.5,
        },
        "extra_trees": {
            "n_estimators": 100,
            "max_depth": 24,
            "min_samples_leaf": 2,
            "max_features": 0.7,
        },
    }
    return [{"family": f, **base, **by_family[f]} for f in by_family if f in families]


def _signed_log1p(x: Any) -> Any:
    return np.sign(x) * np.log1p(np.abs(x))


def _mi_scores(task: str) -> Any:
    """Mutual information on a sample of at most 5,000 rows (it is quadratic-ish)."""
    from sklearn.feature_selection import mutual_info_classif, mutual_info_regression

    fn = mutual_info_regression if task == "regression" else mutual_info_classif

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

    if is_text(X):
        return _build_text_model(p, task, X, y, X_val, y_val, seed, n_jobs)
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
    binary = task != "regression"  # a classifier (binary or multiclass)
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
    elif p.get("selection") == "rfe":
        from sklearn.feature_selection import RFE
        from sklearn.linear_model import LogisticRegression, Ridge

        ranker = LogisticRegression(solver="liblinear", C=1.0) if binary else Ridge(alpha=1.0)
        steps += [
            ("rfe_scale", StandardScaler()),
            ("select", RFE(ranker, n_features_to_select=p["keep_fraction"], step=0.1)),
        ]
    cw = "balanced" if p.get("class_weight") == "balanced" else None
    est = _estimator(p, task, cw, y, seed, n_jobs)
    prep = Pipeline(steps)
    from threadpoolctl import threadpool_limits

    # n_jobs bounds OpenMP and BLAS too (HistGradientBoosting, XGBoost, NumPy): a search
    # told to use one core must not spin on every core (measured: 16 s instead of 1 s for
    # a 5-fold HistGradientBoosting trial beside another busy process)
    with warnings.catch_warnings(), threadpool_limits(limits=n_jobs):
        warnings.simplefilter("ignore")
        Xt = prep.fit_transform(X, y)
        if Xt.shape[1] == 0:
            raise EmptySelectionError(f"{p.get('selection')} feature selection kept no column")
        if p["family"] == "xgboost" and X_val is not None and y_val is not None:
            # early stopping only on rows the model does not train on; a refit uses
            # the number of rounds the search found (``n_rounds``)
            est.set_params(early_stopping_rounds=30)
            est.fit(Xt, y, eval_set=[(prep.transform(X_val), y_val)], verbose=False)
        else:
            est.fit(Xt, y)
    return Pipeline([*prep.steps, ("model", est)])


def _build_text_model(
    p: dict[str, Any],
    task: str,
    X: pd.DataFrame,
    y: pd.Series,
    X_val: pd.DataFrame | None,
    y_val: pd.Series | None,
    seed: int,
    n_jobs: int,
) -> Any:
    """Raw request content → ``PayloadVectorizer`` (sparse n-grams + statistics) → model."""
    from sklearn.pipeline import Pipeline

    from features.payload import PayloadVectorizer

    vec = PayloadVectorizer()
    cw = "balanced" if p.get("class_weight") == "balanced" else None
    est = _estimator(p, task, cw, y, seed, n_jobs)
    Xt = vec.transform(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if p["family"] == "naive_bayes" and cw == "balanced":
            counts = np.bincount(np.asarray(y, dtype=int), minlength=2).astype(float)
            weight = (len(y) / (2 * np.maximum(counts, 1)))[np.asarray(y, dtype=int)]
            est.fit(Xt, y, sample_weight=weight)
        else:
            est.fit(Xt, y)
    return Pipeline([("features", vec), ("model", est)])


class EmptySelectionError(ValueError):
    """Feature selection removed every column (a configuration, not a data, failure)."""


def _estimator(
    p: dict[str, Any], task: str, cw: str | None, y: pd.Series, seed: int, n_jobs: int
) -> Any:
    binary = task != "regression"  # a classifier (binary or multiclass)
    f = p["family"]
    if f == "naive_bayes":
        if not p.get("text"):
            raise ValueError("naive_bayes takes text (payload) features only")
        from sklearn.naive_bayes import ComplementNB

        return ComplementNB(alpha=p["alpha"], norm=bool(p.get("norm", False)))
    if f == "linear":
        from sklearn.linear_model import LogisticRegression, Ridge

        return (
            LogisticRegression(C=p["C"], class_weight=cw, max_iter=1000 if p.get("text") else 500)
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
            n_estimators=int(p.get("n_rounds", 1000)),
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
        if task == "multiclass":
            return xgb.XGBClassifier(**common, eval_metric="mlogloss")
        if binary:
            pos = max(float(y.sum()), 1.0)
            spw = (len(y) - pos) / pos if cw == "balanced" else 1.0
            return xgb.XGBClassifier(**common, scale_pos_weight=spw, eval_metric="logloss")
        return xgb.XGBRegressor(**common)
    raise ValueError(f"unknown model family {f!r}")


def predict(model: Any, task: str, X: pd.DataFrame) -> np.ndarray:
    """Binary: the positive class's probability; multiclass: every class's (rows ×
    classes); regression: the number."""
    if task == "binary":
        return model.predict_proba(X)[:, 1]
    if task == "multiclass":
        return model.predict_proba(X)
    return model.predict(X)


def evaluate_params(
    p: dict[str, Any],
    ds: Dataset,
    splits: Splits,
    metric: str,
    seed: int = 0,
    n_jobs: int = 1,
    report: Callable[[float, int], None] | None = None,
) -> tuple[float, np.ndarray, np.ndarray, dict[str, Any]]:
    """Score ``p`` on the splits' folds.

    Returns the mean score, the out-of-fold predictions, the rows they belong to
    and what a refit needs (``n_rounds``: XGBoost's early-stopped rounds, grown
    with the training size). ``report(value, step)`` is called after each fold
    (Optuna pruning).
    """
    preds, rows, values, rounds = [], [], [], []
    for i, (tr, va) in enumerate(splits.folds):
        Xtr, ytr, Xva, yva = ds.X.iloc[tr], ds.y.iloc[tr], ds.X.iloc[va], ds.y.iloc[va]
        model = build_model(p, ds.task, Xtr, ytr, Xva, yva, seed, n_jobs)
        pred = predict(model, ds.task, Xva)
        values.append(score(metric, yva.to_numpy(), pred))
        preds.append(pred)
        rows.append(va)
        est = model.steps[-1][1]
        if (
            p["family"] == "xgboost"
            and not p.get("text")
            and getattr(est, "best_iteration", None) is not None
        ):
            rounds.append((est.best_iteration + 1) * len(splits.fit) / max(len(tr), 1))
        if report is not None:
            report(float(np.mean(values)), i + 1)
    extra: dict[str, Any] = {}
    if rounds:
        extra["n_rounds"] = max(10, int(np.mean(rounds)))
    return float(np.mean(values)), np.concatenate(preds), np.concatenate(rows), extra


def objective(
    ds: Dataset,
    splits: Splits,
    metric: str,
    families: Sequence[str],
    seed: int = 0,
    n_jobs: int = 1,
    keep_best: dict[str, Any] | None = None,
    selection_choices: Sequence[str] = SELECTIONS,
    skip: Callable[[Any, dict[str, Any]], str | None] | None = None,
) -> Any:
    """An Optuna objective over ``ds``: mean validation score over the splits' folds.

    Large training sets are first fitted on a quarter of the rows; the trial
    reports that score and is pruned if it trails the median (multi-fidelity).
    Cross-validated trials report after each fold and may be pruned between
    folds. ``keep_best`` (coordinator only) receives the number and the
    out-of-fold predictions of the best trial run in this process, so choosing
    the threshold needs no refit. ``skip(trial, params)`` may refuse a trial before it
    fits (a reason: it would overrun the budget); it is pruned, marked ``budget_skip``.
    """
    import os

    import optuna

    Xtr, ytr = ds.X.iloc[splits.train], ds.y.iloc[splits.train]
    Xva, yva = ds.X.iloc[splits.val], ds.y.iloc[splits.val]

    text = is_text(ds.X)

    def run(trial: optuna.Trial) -> float:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=n_jobs):  # predictions too, not only fits
            return _run(trial)

    def _run(trial: optuna.Trial) -> float:
        p = suggest(trial, ds.task, families, ds.X.shape[1], selection_choices, text=text)
        why = skip(trial, p) if skip is not None else None
        if why:
            trial.set_user_attr("budget_skip", why)
            raise optuna.TrialPruned(why)
        t0 = time.perf_counter()
        if len(splits.folds) == 1 and len(Xtr) > 20_000:
            sub = np.random.default_rng(trial.number).choice(len(Xtr), len(Xtr) // 4, replace=False)
            try:
                m0 = build_model(p, ds.task, Xtr.iloc[sub], ytr.iloc[sub], Xva, yva, seed, n_jobs)
            except EmptySelectionError as exc:
                raise optuna.TrialPruned(str(exc)) from None
            trial.report(score(metric, yva.to_numpy(), predict(m0, ds.task, Xva)), step=0)
            if trial.should_prune():
                trial.set_user_attr("fit_seconds", time.perf_counter() - t0)
                raise optuna.TrialPruned()

        def report(value: float, step: int) -> None:
            trial.report(value, step=step)
            if step < len(splits.folds) and trial.should_prune():
                trial.set_user_attr("fit_seconds", time.perf_counter() - t0)
                raise optuna.TrialPruned()

        try:
            value, pred, rows, extra = evaluate_params(p, ds, splits, metric, seed, n_jobs, report)
        except EmptySelectionError as exc:
            trial.set_user_attr("fit_seconds", time.perf_counter() - t0)
            raise optuna.TrialPruned(str(exc)) from None
        p.update(extra)
        yv = ds.y.to_numpy()[rows]
        trial.set_user_attr("fit_seconds", time.perf_counter() - t0)
        trial.set_user_attr("params", p)
        trial.set_user_attr("folds", len(splits.folds))
        others = {
            "binary": ("average_precision", "roc_auc"),
            "multiclass": ("roc_auc", "accuracy", "f1", "log_loss"),
        }.get(ds.task, ("mae", "rmse", "r2"))
        trial.set_user_attr("metrics", {m: score(m, yv, pred) for m in others})
        trial.set_user_attr("pid", os.getpid())
        if not np.isfinite(value):
            raise optuna.TrialPruned("non-finite score")
        if keep_best is not None:  # every finished trial's predictions: ensemble candidates
            kept, values = keep_best.setdefault("trials", {}), keep_best.setdefault("values", {})
            kept[trial.number], values[trial.number] = pred, value
            keep_best["rows"] = rows
            if len(kept) > KEEP_PREDICTIONS:
                worst = (min if HIGHER_IS_BETTER[metric] else max)(values, key=values.__getitem__)
                del kept[worst], values[worst]
            prev = keep_best.get("value")
            if prev is None or (value > prev if HIGHER_IS_BETTER[metric] else value < prev):
                keep_best.update(value=value, number=trial.number, val_pred=pred, val_rows=rows)
        return value

    return run
