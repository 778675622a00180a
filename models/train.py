"""One AutoML training: search, refit, evaluate, judge, log and register.

``train_target(settings, "abuse")`` for a configured target (features through
Feast); ``fit_table(settings, path, label=...)`` for any table. Both end with a
registered version aliased ``challenger`` whose gate verdict is in its tags.
"""

from __future__ import annotations

import multiprocessing as mp
import pickle
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from config.settings import Settings
from config.targets import TargetSettings
from models.data import Dataset, check_quality, load_table, target_dataset
from models.search import (
    HIGHER_IS_BETTER,
    Splits,
    build_model,
    default_configs,
    evaluate_params,
    is_text,
    make_splits,
    objective,
    oof_splits,
    predict,
    score,
    selections,
)

__all__ = ["TrainResult", "fit_table", "run_automl", "train_target", "wait_for_reports"]


@dataclass
class TrainResult:
    model_name: str
    version: str
    run_id: str
    metric: str
    holdout_score: float
    champion_version: str | None
    champion_score: float | None
    eligible: bool
    reasons: list[str]
    threshold: float | None
    trials: int
    best_params: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0  # wall clock from the start to registration
    budget: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    rows_holdout_model: int = 0  # rows of the model the holdout judged
    rows_refit: int = 0  # rows of the registered model (all of them after a refit)
    rows_holdout: int = 0
    skipped_for_budget: int = 0
    notes: list[str] = field(default_factory=list)  # what loading the table decided
    classes: list[str] = field(default_factory=list)
    task: str = ""
    reports: str = "done"  # "background": plots and importance still being logged


# a configuration that cannot be fitted fails its trial (logged, kept in the study), not the search
_TRIAL_ERRORS = (ValueError, ArithmeticError)


def _worker(
    storage: str,
    study_name: str,
    data_path: str,
    metric: str,
    families: Sequence[str],
    timeout: float,
    seed: int,
    selection_choices: Sequence[str],
) -> None:
    """A search worker: loads the data, joins the shared study, never touches MLflow."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with open(data_path, "rb") as fh:
        ds, splits = pickle.load(fh)
    study = optuna.load_study(
        study_name=study_name,
        storage=storage,
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5),
    )
    study.optimize(
        objective(ds, splits, metric, families, seed=seed, selection_choices=selection_choices),
        timeout=timeout,
        gc_after_trial=True,
        catch=_TRIAL_ERRORS,
    )


def _search(
    settings: Settings,
    ds: Dataset,
    splits: Splits,
    name: str,
    metric: str,
    families: Sequence[str],
    budget: float,
    n_trials: int | None,
    workers: int,
    seed: int,
    on_trial: Callable[[Any], None] | None,
    keep_best: dict[str, Any] | None = None,
    warm: Sequence[dict[str, Any]] = (),
    clock: _Clock | None = None,
) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = settings.optuna_storage
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    study_name = (
        f"{name}-{time.strftime('%Y%m%dT%H%M%S')}-{np.random.default_rng().integers(1 << 30):08x}"
    )
    direction: Literal["maximize", "minimize"] = (
        "maximize" if HIGHER_IS_BETTER[metric] else "minimize"
    )
    study = optuna.create_study(
        study_name=study_name,
        storage=storage,
        direction=direction,
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5),
    )
    # a warm start first (the champion's configuration: a retraining on drifted traffic
    # starts from what won last time), then library defaults: cheap, robust configurations
    # TPE then improves on
    for cfg in [*warm, *default_configs(ds.task, families, text=is_text(ds.X))]:
        study.enqueue_trial(cfg, skip_if_exists=True)
    choices = selections(ds.X.shape[1], budget if n_trials is None else None, ds.task)
    timeout = budget
    if clock is not None:  # the search gets what the budget leaves after what must follow it
        timeout = max(1.0, clock.left() - clock.base)
    procs: list[Any] = []
    tmp = None
    if workers > 1:
        tmp = tempfile.NamedTemporaryFile(dir=settings.data_dir, suffix=".pkl", delete=False)  # noqa: SIM115
        pickle.dump((ds, splits), tmp)
        tmp.close()
        ctx = mp.get_context("spawn")
        for w in range(1, workers):
            p = ctx.Process(
                target=_worker,
                args=(storage, study_name, tmp.name, metric, families, timeout, seed + w, choices),
                daemon=True,
            )
            p.start()
            procs.append(p)
    callbacks: list[Any] = [lambda st, tr: on_trial(tr)] if on_trial else []
    if clock is not None:
        callbacks.append(clock.callback)
    try:
        study.optimize(
            objective(
                ds,
                splits,
                metric,
                families,
                seed=seed,
                keep_best=keep_best,
                selection_choices=choices,
                skip=None if clock is None else clock.skip,
            ),
            timeout=timeout,
            n_trials=n_trials,
            callbacks=callbacks,
            gc_after_trial=True,
            catch=_TRIAL_ERRORS,
        )
    finally:
        for p in procs:
            p.join(timeout=timeout + 600)
            if p.is_alive():
                p.terminate()
        if tmp is not None:
            Path(tmp.name).unlink(missing_ok=True)
    if not any(t.state.name == "COMPLETE" for t in study.trials):
        raise RuntimeError(f"no trial finished within the budget of {budget:.0f}s: raise --budget")
    return study


def champion_config(settings: Settings, name: str) -> dict[str, Any] | None:
    """The search parameters of the trial that made the target's champion: its MLflow run's
    ``optuna.study`` tag names the study in ``optuna_storage``; its best trial's parameters.
    None when there is no champion or its study is gone (another storage, deleted)."""
    import optuna

    from models.tracking import champion_run_id, client

    run_id = champion_run_id(settings, name)
    if run_id is None:
        return None
    study_name = client(settings).get_run(run_id).data.tags.get("optuna.study")
    if not study_name:
        return None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=study_name, storage=settings.optuna_storage)
        return dict(study.best_trial.params)
    except (KeyError, ValueError):  # no such study, or no finished trial
        return None


class _Clock:
    """The wall-clock budget of one training, search to registration. The search stops
    when what must follow it (refit, holdout, MLflow logging, registration: ``reserve``)
    would no longer fit, and a trial whose family has so far taken longer than what is
    left is skipped before it starts (``skip``)."""

    def __init__(
        self, deadline: float, folds: int, refits: float, base: float, members: int = 1
    ) -> None:
        self.deadline, self.folds, self.refits, self.base = deadline, folds, refits, base
        self.members = members  # an ensemble's refits are reserved too (capped)
        self.budget = max(deadline - time.perf_counter(), 0.0)

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def reserve(self, study: Any) -> float:
        done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
        per_fit = 0.0
        if done:
            best = (
                max(done, key=lambda t: t.value)
                if study.direction.name == "MAXIMIZE"
                else min(done, key=lambda t: t.value)
            )
            per_fit = float(best.user_attrs.get("fit_seconds", 0.0)) / max(self.folds, 1)
        extra = 0.0
        if self.members > 1 and len(done) > 1:  # the next best trials' refits, at most 15 %
            others = sorted(done, key=lambda t: t.value, reverse=study.direction.name == "MAXIMIZE")
            extra = sum(
                float(t.user_attrs.get("fit_seconds", 0.0)) / max(self.folds, 1)
                for t in others[1 : self.members]
            )
            extra = min(1.3 * extra * self.refits, 0.15 * self.budget)
        # a refit sees ~1.25x a fold's rows; logging a trial as a nested run ~20 ms
        return self.base + 1.3 * per_fit * self.refits + extra + 0.02 * len(study.trials)

    def skip(self, trial: Any, p: dict[str, Any]) -> str | None:
        """Why this trial must not start (it would overrun the budget), or None."""
        study = trial.study
        done = [
            t for t in study.get_trials(deepcopy=False) if t.state.name in ("COMPLETE", "PRUNED")
        ]
        same = [
            float(t.user_attrs["fit_seconds"])
            for t in done
            if t.params.get("family") == p["family"] and "fit_seconds" in t.user_attrs
        ]
        # a family not tried yet: the trials so far, scaled by the families' relative cost
        # (text: vectorising the content dominates every family's time, so no scaling)
        cost = (lambda f: 1.0) if p.get("text") else (lambda f: FAMILY_COST.get(f, 1.0))
        scaled = [
            float(t.user_attrs["fit_seconds"])
            * cost(p["family"])
            / cost(str(t.params.get("family")))
            for t in done
            if "fit_seconds" in t.user_attrs and t.state.name == "COMPLETE"
        ]
        expect = float(np.median(same)) if same else (float(np.median(scaled)) if scaled else 0.0)
        # the trial itself, and the refits it would need if it won
        need = expect + 1.3 * expect / max(self.folds, 1) * self.refits
        if expect and need > self.left() - self.reserve(study):
            return (
                f"{p['family']} takes ~{expect:.0f}s; {max(self.left(), 0):.0f}s of the budget left"
            )
        return None

    def callback(self, study: Any, trial: Any) -> None:
        recent = study.get_trials(deepcopy=False)[-5:]
        skipping = len(recent) == 5 and all(t.user_attrs.get("budget_skip") for t in recent)
        if self.left() <= self.reserve(study) or skipping:
            study.stop()


# the relative single-core cost of each family's search trial, to estimate one not tried
# yet (measured on the demo's 95k abuse rows: linear 2.4 s, XGBoost 5 s, the default random
# forest 139 s; on 800 rows the forest is ~10x a linear model, so these are pessimistic on
# small tables, where every trial is cheap anyway)
FAMILY_COST = {
    "naive_bayes": 0.5,
    "linear": 1.0,
    "hist_gradient_boosting": 2.0,
    "xgboost": 2.0,
    "extra_trees": 15.0,
    "random_forest": 30.0,
}

# after the search: the champion's holdout score and the gate (~1-2 s, the MLflow store's
# first use included), then MLflow logging, the compiled export and registration (~3 s)
GATE_S = 2.0
LOG_S = 3.0
POST_SEARCH_S = GATE_S + LOG_S
_PENDING: list[Any] = []  # report threads still logging plots (``wait_for_reports``)


def _import_families(families: Sequence[str]) -> None:
    import sklearn.compose
    import sklearn.ensemble
    import sklearn.impute
    import sklearn.linear_model
    import sklearn.pipeline
    import sklearn.preprocessing  # noqa: F401

    if "xgboost" in families:
        import xgboost  # noqa: F401


def wait_for_reports(timeout: float | None = None) -> int:
    """Join the threads still logging plots and permutation importance; how many ran."""
    n = 0
    while _PENDING:
        _PENDING.pop().join(timeout)
        n += 1
    return n


def run_automl(
    settings: Settings,
    ds: Dataset,
    name: str,
    target: TargetSettings,
    *,
    budget: float | None = None,
    n_trials: int | None = None,
    workers: int = 1,
    seed: int = 0,
    on_trial: Callable[[Any], None] | None = None,
    labels: str | None = None,
    warm_start: bool = False,
    started: float | None = None,
    background_reports: bool = False,
) -> TrainResult:
    """Search → refit → evaluate on the holdout → gate → MLflow + registry, inside ``budget``
    seconds of wall clock counted from ``started`` (``time.perf_counter()``; default: now).
    Plots and permutation importance are logged after registration: in a thread when
    ``background_reports`` (``wait_for_reports`` joins it), else before returning.
    ``target.refit_on_holdout``: the registered model is refit on every row after the
    holdout verdict. ``labels``: the label set the dataset came from (kept as a tag);
    ``warm_start``: the champion's configuration is the search's first trial."""
    import mlflow

    from models import evaluate as ev
    from models import registry as reg
    from models.tracking import ensure_experiment

    t0 = started if started is not None else time.perf_counter()
    timings: dict[str, float] = {}
    budget = budget or target.time_budget_s
    warnings = check_quality(ds)
    splits = make_splits(ds, target.holdout_fraction)
    metric = target.metric
    keep: dict[str, Any] = {}
    warm = champion_config(settings, name) if warm_start else None
    refits = 1.0 + (1.3 if target.refit_on_holdout else 0.0)
    if target.max_false_positive_rate is not None and ds.time is None and len(splits.folds) == 1:
        refits += 5  # the threshold's out-of-fold scores
    if ds.detail is not None:
        refits += 1  # the attack-class head (payloads)
    clock = _Clock(t0 + budget, len(splits.folds), refits, POST_SEARCH_S, max(target.ensemble, 1))
    _import_families(target.families)  # not in the first trial's time, which sets estimates
    timings["prepare_s"] = time.perf_counter() - t0
    study = _search(
        settings,
        ds,
        splits,
        name,
        metric,
        target.families,
        budget,
        n_trials or target.n_trials,
        workers,
        seed,
        on_trial,
        keep,
        warm=[warm] if warm else [],
        clock=clock,
    )
    timings["search_s"] = time.perf_counter() - t0 - timings["prepare_s"]
    mark = time.perf_counter()
    best = study.best_trial
    params = best.user_attrs["params"]
    members, ensemble_note, ens_pred = [(params, 1)], "", None
    if target.ensemble > 1 and ds.detail is None and keep.get("trials"):
        members, ensemble_note, ens_pred = _choose_ensemble(
            study, keep, ds, metric, target, clock, len(splits.folds)
        )

    # threshold from the best configuration's validation (out-of-fold) predictions:
    # reused from the search when the best trial ran in this process, re-evaluated otherwise
    threshold = None
    if ds.task == "binary":
        if len(members) > 1 and ens_pred is not None:
            val_pred, val_rows = ens_pred, keep["rows"]
        elif keep.get("number") == best.number:
            val_pred, val_rows = keep["val_pred"], keep["val_rows"]
        else:
            _, val_pred, val_rows, _ = evaluate_params(params, ds, splits, metric, seed)
        if target.max_false_positive_rate is not None:
            if ds.time is None and len(splits.folds) == 1:
                # a budget of 0.1 % is a handful of the validation split's negatives: take
                # the threshold from out-of-fold scores over every non-holdout row instead
                _, val_pred, val_rows, _ = evaluate_params(
                    params, ds, oof_splits(ds, splits), metric, seed
                )
            threshold = ev.threshold_at_fpr(
                ds.y.to_numpy()[val_rows], val_pred, target.max_false_positive_rate
            )
        else:
            threshold, _ = ev.choose_threshold(ds.y.to_numpy()[val_rows], val_pred, target.costs)
    # the holdout verdict comes from a model that never saw the holdout: fitted on every
    # other row, without early stopping on rows it trains on (XGBoost gets the rounds the
    # search found instead)
    fit_t = time.perf_counter()
    model = _fit_members(members, ds.task, ds.X.iloc[splits.fit], ds.y.iloc[splits.fit], seed)
    fit_seconds = time.perf_counter() - fit_t
    Xh, yh = ds.X.iloc[splits.holdout], ds.y.iloc[splits.holdout].to_numpy()
    payload = None
    if ds.detail is not None and threshold is not None:  # payloads: name the attack class too
        from models.payload import holdout_report, with_class_head

        model = with_class_head(
            model, ds.X.iloc[splits.fit], ds.detail.iloc[splits.fit], threshold, seed
        )
        payload = holdout_report(model, Xh, ds.detail.iloc[splits.holdout])
    ph = predict(model, ds.task, Xh)
    holdout_score = score(metric, yh, ph)

    # the gate: beat the champion on the same holdout by the margin, and be fair
    reasons: list[str] = []
    champion = reg.load_alias(settings, name, reg.CHAMPION)
    champ_version = champ_score = None
    if champion is not None:
        cm, cv = champion
        champ_version = str(cv.version)
        try:
            champ_score = score(metric, yh, predict(cm, ds.task, Xh))
        except Exception as exc:
            reasons.append(
                f"champion v{champ_version} cannot be scored on the current holdout ({type(exc).__name__}: {exc})"[
                    :300
                ]
            )
        if champ_score is not None:
            gain = (
                holdout_score - champ_score
                if HIGHER_IS_BETTER[metric]
                else champ_score - holdout_score
            )
            if gain < target.promotion_margin:
                reasons.append(
                    f"{metric} {holdout_score:.4f} does not beat champion v{champ_version} ({champ_score:.4f}) by {target.promotion_margin}"
                )
    if target.max_false_positive_rate is not None and threshold is not None:
        # refused only when the holdout shows the rate above the bound with 95 % confidence
        # (a few hundred benign rows cannot show 0.1 % either way; the bound says how sure)
        neg = yh == 0
        fp = int((ph[neg] >= threshold).sum())
        if ev.rate_lower_bound(fp, int(neg.sum())) > target.max_false_positive_rate:
            reasons.append(
                f"holdout false-positive rate {fp}/{int(neg.sum())} is above the bound"
                f" {target.max_false_positive_rate} with 95 % confidence"
            )
    fairness = None
    if ds.task == "binary" and len(ds.sensitive.columns):
        fairness = ev.fairness_report(
            yh,
            ph >= threshold,
            ds.sensitive.iloc[splits.holdout].reset_index(drop=True),
            target.fairness,
            units=None
            if ds.groups is None
            else ds.groups.iloc[splits.holdout].astype(str).to_numpy(),
        )
        if not fairness.passed:
            reasons += fairness.failures
    elif len(ds.sensitive.columns):
        warnings.append(
            f"fairness bounds are checked for binary labels; this {ds.task} model's per-group"
            " scores are not gated"
        )
    eligible = not reasons

    # use the rows: the holdout has given its verdict; the registered model learns from it too
    # (tables), when the budget still holds the refit
    served = model
    refit_rows = len(splits.fit)
    if target.refit_on_holdout and payload is None:
        need = 1.3 * fit_seconds + LOG_S
        if clock.left() >= need:
            served = _fit_members(members, ds.task, ds.X, ds.y, seed)
            refit_rows = len(ds.y)
        else:
            warnings.append(
                f"registered model not refit on the {len(splits.holdout):,} holdout rows: "
                f"~{need:.0f}s needed, {max(clock.left(), 0):.0f}s of the budget left"
            )
    timings["refit_evaluate_s"] = time.perf_counter() - mark
    mark = time.perf_counter()

    ensure_experiment(settings, name)
    model_name = settings.registered_model(name)
    fingerprint = ds.fingerprint()
    art = Path(tempfile.mkdtemp())
    with mlflow.start_run(run_name=f"{name}-automl") as run:
        mlflow.set_tags(
            {
                "target": name,
                "task": ds.task,
                "feature_service": getattr(target, "feature_service", ""),
                "data_fingerprint": fingerprint,
                "optuna.study": study.study_name,
                "workers": str(workers),
                "labels": labels or "table",
                "warm_start": "champion" if warm else "none",
                "refit": "all rows" if refit_rows == len(ds.y) else "all but the holdout",
                "ensemble": ensemble_note or "one model",
            }
        )
        if ds.classes:
            mlflow.set_tag("classes", ", ".join(map(str, ds.classes))[:4000])
        if ds.notes:
            mlflow.set_tag("data.notes", "; ".join(ds.notes)[:4000])
        mlflow.log_params(
            {
                "metric": metric,
                "budget_s": budget,
                "workers": workers,
                "rows": len(ds.y),
                "rows_train": len(splits.train),
                "rows_val": len(splits.val),
                "cv_folds": len(splits.folds),
                "rows_holdout": len(splits.holdout),
                "rows_refit": refit_rows,
                "ensemble_members": len(members),
                **{f"best.{k}": v for k, v in params.items()},
            }
        )
        searched = [t for t in study.trials if not t.user_attrs.get("budget_skip")]
        mlflow.log_metrics(
            {
                f"holdout_{metric}": holdout_score,
                "best_val_score": float(best.value),
                "trials": len(searched),
                "trials_pruned": sum(t.state.name == "PRUNED" for t in searched),
                "trials_skipped_for_budget": len(study.trials) - len(searched),
            }
        )
        if champ_score is not None:
            mlflow.log_metric(f"champion_holdout_{metric}", champ_score)
        if payload is not None:
            p_metrics, per_class, errors = payload
            mlflow.log_metrics({f"holdout_{k}": v for k, v in p_metrics.items() if v == v})
            (art / "findings").mkdir()
            per_class.to_csv(art / "findings" / "per_class.csv", index=False)
            errors.to_csv(art / "findings" / "holdout_errors.csv", index=False)
            (art / "findings" / "findings.html").write_text(
                "<h2>Detection by class (holdout, at the threshold)</h2>"
                + per_class.to_html(index=False, float_format=lambda v: f"{v:.4f}")
                + "<h2>False positives and missed attacks</h2>"
                + errors.to_html(index=False, float_format=lambda v: f"{v:.4f}")
            )
            mlflow.log_artifacts(str(art / "findings"), "findings")
        if threshold is not None:
            cls_metrics = ev.classification_metrics(yh, ph, threshold)
            mlflow.log_metrics({f"holdout_{k}": v for k, v in cls_metrics.items()})
            mlflow.log_metric("threshold", threshold)
        if ds.task == "multiclass":
            mc, per = ev.multiclass_metrics(yh, ph, ds.classes)
            mlflow.log_metrics({f"holdout_{k}": v for k, v in mc.items()})
            (art / "findings").mkdir(exist_ok=True)
            per.to_csv(art / "findings" / "per_class.csv", index=False)
            (art / "findings" / "per_class.html").write_text(
                "<h2>Holdout by class (the most probable class decides)</h2>"
                + per.to_html(index=False, float_format=lambda v: f"{v:.4f}")
            )
            mlflow.log_artifacts(str(art / "findings"), "findings")
        if fairness is not None:
            fairness.table.to_csv(art / "fairness_by_group.csv", index=False)
            (art / "fairness_by_group.html").write_text(
                fairness.table.to_html(index=False, float_format=lambda v: f"{v:.3f}")
            )
            mlflow.log_artifact(str(art / "fairness_by_group.csv"), "fairness")
            mlflow.log_artifact(str(art / "fairness_by_group.html"), "fairness")
        study.trials_dataframe().to_csv(art / "trials.csv", index=False)
        mlflow.log_artifact(str(art / "trials.csv"))
        reg.write_json(
            art / "gate.json",
            {
                "eligible": eligible,
                "reasons": reasons,
                "holdout_score": holdout_score,
                "champion_version": champ_version,
                "champion_score": champ_score,
                "fairness_gaps": fairness.gaps if fairness else {},
                "holdout_model_rows": len(splits.fit),
                "registered_model_rows": refit_rows,
            },
        )
        mlflow.log_artifact(str(art / "gate.json"))
        _log_compiled(served, ds.X, Xh, ds.task, threshold, art)
        sample = ds.X.iloc[splits.fit[:200]]
        info = mlflow.sklearn.log_model(
            served,
            name="model",
            registered_model_name=model_name,
            # our own pipelines (custom transformers, XGBoost): skops would need every type listed as trusted
            serialization_format="cloudpickle",
            pip_requirements=_requirements(),
            signature=_signature(sample, predict(served, ds.task, sample)),
            input_example=ds.X.iloc[splits.fit[:3]],
            pyfunc_predict_fn="predict" if ds.task == "regression" else "predict_proba",
            metadata={
                "target": name,
                "task": ds.task,
                "feature_service": getattr(target, "feature_service", ""),
                "threshold": threshold,
                "metric": metric,
                "data_fingerprint": fingerprint,
                "features": list(ds.X.columns),
                "classes": list(map(str, ds.classes)),
            },
        )
        reg.log_trials(settings, run.info.experiment_id, run.info.run_id, study)
    version = str(info.registered_model_version)
    c = reg.client(settings)
    tags = {
        "gate.eligible": str(eligible).lower(),
        "gate.reason": "; ".join(reasons) or "beats champion and passes fairness bounds",
        "gate.metric": metric,
        "gate.holdout_score": f"{holdout_score:.6f}",
        "gate.champion_version": champ_version or "none",
        "gate.champion_score": "" if champ_score is None else f"{champ_score:.6f}",
        "gate.margin": str(target.promotion_margin),
        "threshold": "" if threshold is None else f"{threshold:.6f}",
        "feature_service": getattr(target, "feature_service", ""),
        "data_fingerprint": fingerprint,
        "target": name,
        "fairness.passed": "n/a" if fairness is None else str(fairness.passed).lower(),
        "fairness.notes": "" if fairness is None else "; ".join(fairness.reasons)[:4000],
        "labels": labels or "table",
        "refit_rows": str(refit_rows),
    }
    if ds.classes:
        tags["classes"] = ", ".join(map(str, ds.classes))[:4000]
    for k, v in tags.items():
        c.set_model_version_tag(model_name, version, k, v)
    c.set_registered_model_alias(model_name, reg.CHALLENGER, version)
    timings["log_register_s"] = time.perf_counter() - mark
    seconds = time.perf_counter() - t0
    c.log_batch(
        run.info.run_id,
        metrics=[_metric(k, v) for k, v in {**timings, "wall_to_registration_s": seconds}.items()],
    )

    # after registration: what a reviewer looks at, which nothing above waits for
    def reports() -> None:
        out = art / "plots"
        importance = (
            pd.Series(dtype=float) if is_text(ds.X) else _importance(model, ds.task, Xh, yh, metric)
        )
        for f in ev.write_plots(out, ds.task, yh, ph, threshold, importance, study, ds.classes):
            c.log_artifact(run.info.run_id, str(f), "plots")
        if len(importance):
            importance.sort_values(ascending=False).rename("importance").to_csv(
                art / "feature_importance.csv", index_label="feature"
            )
            c.log_artifact(run.info.run_id, str(art / "feature_importance.csv"), "plots")

    if background_reports:
        import threading

        th = threading.Thread(target=_guarded(reports), name=f"reports-{run.info.run_id}")
        th.start()
        _PENDING.append(th)
    else:
        reports()
    return TrainResult(
        model_name,
        version,
        run.info.run_id,
        metric,
        holdout_score,
        champ_version,
        champ_score,
        eligible,
        reasons,
        threshold,
        len(searched),
        params,
        warnings,
        seconds,
        budget=budget,
        timings=timings,
        rows_holdout_model=len(splits.fit),
        rows_refit=refit_rows,
        rows_holdout=len(splits.holdout),
        skipped_for_budget=len(study.trials) - len(searched),
        notes=list(ds.notes),
        classes=list(map(str, ds.classes)),
        task=ds.task,
        reports="background" if background_reports else "done",
    )


def _signature(sample: pd.DataFrame, pred: np.ndarray) -> Any:
    """The model's signature, without MLflow's hint about integer columns (the served
    model reads features as floats)."""
    import warnings

    from mlflow.models import infer_signature

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return infer_signature(sample, pred)


def _choose_ensemble(
    study: Any,
    keep: dict[str, Any],
    ds: Dataset,
    metric: str,
    target: TargetSettings,
    clock: _Clock,
    folds: int,
) -> tuple[list[tuple[dict[str, Any], int]], str, np.ndarray | None]:
    """Members (params, weight) greedily chosen on the kept out-of-fold predictions
    (``models.ensemble.select``), trimmed to what the budget's clock can still refit;
    the single best when averaging does not beat it. Returns the members, what was
    decided (for the run's tags) and the ensemble's out-of-fold predictions."""
    from models.ensemble import select

    by_number = {t.number: t for t in study.trials}
    kept = keep["trials"]
    higher = HIGHER_IS_BETTER[metric]
    order = sorted(kept, key=lambda n: keep["values"][n], reverse=higher)
    seen: set[str] = set()
    cands = []
    for n in order:  # identical configurations (an enqueued default twice) count once
        key = repr(sorted(by_number[n].user_attrs["params"].items()))
        if key not in seen:
            seen.add(key)
            cands.append(n)
    best = study.best_trial
    single = [(best.user_attrs["params"], 1)]
    if len(cands) < 2:
        return single, "", None
    y = ds.y.to_numpy()[keep["rows"]]
    counts, ens_score, best_score = select(
        [kept[n] for n in cands], y, metric, max_members=target.ensemble
    )
    if len(counts) < 2:
        return single, f"one model: averaging did not beat it out of fold ({best_score:.4f})", None
    # the refits must fit in what is left: the heaviest-weighted members first
    fits = 1 + (1 if target.refit_on_holdout else 0)
    left = clock.left() - LOG_S - GATE_S
    chosen: dict[int, int] = {}
    cost = 0.0
    for i, w in sorted(counts.items(), key=lambda kv: -kv[1]):
        t = by_number[cands[i]]
        c = 1.3 * fits * float(t.user_attrs.get("fit_seconds", 0.0)) / max(folds, 1)
        if cost + c > left and chosen:
            continue
        chosen[i], cost = w, cost + c
    if len(chosen) < 2:
        return single, f"one model: no time left to refit an ensemble of {len(counts)}", None
    total = sum(chosen.values())
    pred = sum(kept[cands[i]] * w for i, w in chosen.items()) / total
    ens_score = score(metric, y, pred)
    if not (ens_score > best_score if higher else ens_score < best_score):
        return single, f"one model: averaging did not beat it out of fold ({best_score:.4f})", None
    members = [(by_number[cands[i]].user_attrs["params"], w) for i, w in chosen.items()]
    fams = " + ".join(f"{p['family']}×{w}" for p, w in members)
    note = f"{fams}: {metric} {ens_score:.4f} out of fold vs {best_score:.4f} for the best one"
    return members, note, pred


def _fit_members(
    members: Sequence[tuple[dict[str, Any], int]],
    task: str,
    X: pd.DataFrame,
    y: pd.Series,
    seed: int,
) -> Any:
    """One pipeline, or a ``MeanEnsemble`` of one per member."""
    from models.ensemble import MeanEnsemble

    if len(members) == 1:
        return build_model(members[0][0], task, X, y, seed=seed)
    pipes = [build_model(p, task, X, y, seed=seed) for p, _ in members]
    return MeanEnsemble(pipes, [w for _, w in members], task)


def _metric(key: str, value: float) -> Any:
    from mlflow.entities import Metric

    return Metric(key, float(value), int(time.time() * 1000), 0)


def _guarded(fn: Callable[[], None]) -> Callable[[], None]:
    """A report thread never dies silently: its failure is logged."""

    def run() -> None:
        try:
            fn()
        except Exception:
            import logging

            logging.getLogger("gatewise.train").exception("plots and importance failed")

    return run


def _log_compiled(
    model: Any, X: pd.DataFrame, holdout: pd.DataFrame, task: str, threshold: Any, art: Path
) -> None:
    """The champion's compiled form beside it (``models/compiled.py``): run artifacts under
    ``compiled/``, whether it converted or not (``compiled.json`` says why not)."""
    import mlflow

    from models.compiled import ARTIFACT_DIR, export

    if is_text(X):
        return  # the payload scanner has its own compact export (features/scanner.py)
    check = holdout if len(holdout) else X
    try:
        e = export(model, list(X.columns), check, task, threshold)
    except Exception as exc:  # compiling is an optimisation: it never fails a training
        from models.compiled import Export

        e = Export("refused", f"export failed: {type(exc).__name__}: {exc}"[:500])
    d = e.write(art / ARTIFACT_DIR)
    mlflow.log_artifacts(str(d), ARTIFACT_DIR)
    mlflow.set_tag("compiled", e.status if not e.reason else f"{e.status}: {e.reason[:200]}")
    if e.info.get("compiled_us_per_call"):
        mlflow.log_metrics(
            {
                "compiled_us_per_call": e.info["compiled_us_per_call"],
                "pipeline_us_per_call": e.info["pipeline_us_per_call"],
            }
        )


def _requirements() -> list[str]:
    """The exact versions of what the pipeline needs (skips MLflow's slow inference)."""
    from importlib.metadata import version

    return [
        f"{p}=={version(p)}"
        for p in ("scikit-learn", "xgboost", "pandas", "numpy", "scipy", "cloudpickle")
    ]


def _importance(model: Any, task: str, X: pd.DataFrame, y: np.ndarray, metric: str) -> pd.Series:
    from sklearn.inspection import permutation_importance

    n = min(len(y), 4000)
    idx = np.random.default_rng(0).choice(len(y), n, replace=False)
    scoring = {"binary": "average_precision", "multiclass": "accuracy"}.get(
        task, "neg_mean_absolute_error"
    )
    try:
        r = permutation_importance(
            model, X.iloc[idx], y[idx], n_repeats=3, random_state=0, scoring=scoring
        )
    except ValueError:  # a holdout sample with a single class
        return pd.Series(dtype=float)
    return pd.Series(r.importances_mean, index=X.columns)


def train_target(settings: Settings, name: str, labels: str = "all", **kw: Any) -> TrainResult:
    """AutoML for a target of ``gatewise.yaml`` (features from Feast); ``labels``: which
    labels train it (``models.data.labelled_windows``). Anomaly targets learn without them."""
    target = settings.target(name)
    if target.task == "anomaly":
        from models.anomaly import train_anomaly

        return train_anomaly(settings, name, target)
    ds = target_dataset(settings, name, target, labels=labels)
    return run_automl(settings, ds, name, target, labels=labels, **kw)


def fit_table(
    settings: Settings,
    path: Path,
    label: str,
    *,
    name: str | None = None,
    metric: str | None = None,
    sensitive: list[str] | None = None,
    time_col: str | None = None,
    group_col: str | None = None,
    task: str | None = None,
    positive: str | None = None,
    on_loaded: Callable[[Dataset], None] | None = None,
    **kw: Any,
) -> TrainResult:
    """AutoML on a table a data scientist brings (any format ``read_table`` reads),
    tracked and registered like a target. The budget counts from the start of reading
    the table; ``on_loaded(ds)`` sees what loading decided (``ds.notes``) before the
    search starts. The registered model is refit on every row after the holdout verdict."""
    started = kw.pop("started", None) or time.perf_counter()
    ds = load_table(
        path,
        label,
        time_col=time_col,
        group_col=group_col,
        sensitive=sensitive,
        task=task,
        positive=positive,
    )
    if on_loaded is not None:
        on_loaded(ds)
    name = name or ds.name.replace("_", "-").lower()
    metric = metric or {"binary": "roc_auc", "multiclass": "roc_auc"}.get(ds.task, "rmse")
    target = TargetSettings(
        task=ds.task,
        entity="client",
        feature_service="",
        metric=metric,
        sensitive_features=sensitive or [],
        refit_on_holdout=True,
        ensemble=5,
    )
    return run_automl(settings, ds, name, target, started=started, **kw)
