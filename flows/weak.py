"""Prefect flow ``weak_labels``: labelling functions → label model → weak labels, in MLflow.

The day-one anomaly model (a target with ``task: anomaly``; its champion, else its
challenger) scores each window's own features first, so its vote (``anomalous``) counts;
without one the function abstains. Then ``labeling.weak.weak_labels`` votes, weighs and
writes; the run is logged to the MLflow experiment ``gatewise-labeling`` with each function's
coverage, overlaps, conflicts and estimated accuracy (metrics, a table and a chart).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

from config.settings import Settings, settings_for_flow

__all__ = ["anomaly_scorer", "weak_labels_flow"]


def anomaly_target(settings: Settings) -> str | None:
    return next((n for n, t in settings.targets.items() if t.task == "anomaly"), None)


def anomaly_scorer(settings: Settings) -> tuple[Any, str | None]:
    """(window frame -> anomaly score, model version), or (None, None) without a model."""
    from models import registry as reg

    name = anomaly_target(settings)
    if name is None:
        return None, None
    try:
        loaded = reg.load_alias(settings, name, reg.CHAMPION) or reg.load_alias(
            settings, name, reg.CHALLENGER
        )
    except Exception:  # no registry yet: nothing has been trained
        return None, None
    if loaded is None:
        return None, None
    model, mv = loaded
    feats = list(getattr(model, "features_", []))

    def score(windows: Any) -> Any:
        return model.predict_proba(windows.reindex(columns=feats).astype(float))[:, 1]

    return score, str(mv.version)


@task(name="weak-labels", cache_policy=NONE)
def run_weak(settings: Settings, since: str | None, until: str | None, use_anomaly: bool) -> Any:
    from labeling.weak import weak_labels

    log = get_run_logger()
    scorer, version = anomaly_scorer(settings) if use_anomaly else (None, None)
    log.info("anomaly model: %s", f"v{version}" if version else "none (its function abstains)")
    rep = weak_labels(settings, since, until, anomaly=scorer)
    rep.anomaly_version = version
    return rep


@task(name="log-weak-labels", cache_policy=NONE)
def log_weak(settings: Settings, rep: Any) -> str:
    import mlflow
    import pandas as pd

    from models.tracking import ensure_experiment

    exp = ensure_experiment(settings, "labeling")
    table = pd.DataFrame(rep.table())
    with mlflow.start_run(experiment_id=exp, run_name=f"weak labels {rep.since[:16]}") as run:
        mlflow.set_tags({"kind": "weak-labels", "batch": rep.batch or ""})
        mlflow.log_params(
            {
                "since": rep.since,
                "until": rep.until,
                "functions": len(rep.functions),
                "merged": "; ".join(f"{a}+{b}" for a, b, _ in rep.merges) or "none",
                "anomaly_model": rep.anomaly_version or "none",
            }
        )
        metrics = {
            "windows": rep.windows,
            "clients": rep.clients,
            "anchored_windows": rep.anchored_windows,
            "prior_abusive": rep.prior,
            "abusive_confident": rep.abusive_confident,
            "legitimate_confident": rep.legitimate_confident,
        }
        for f in rep.functions:
            metrics[f"coverage.{f.name}"] = f.coverage
            metrics[f"conflicts.{f.name}"] = f.conflicts
            if f.estimated_accuracy == f.estimated_accuracy:
                metrics[f"accuracy.{f.name}"] = f.estimated_accuracy
        mlflow.log_metrics(metrics)
        art = Path(tempfile.mkdtemp())
        table.to_csv(art / "functions.csv", index=False)
        (art / "functions.html").write_text(
            "<h2>Labelling functions</h2>"
            + table.to_html(index=False, float_format=lambda v: f"{v:.4f}")
            + "<p>merged (modelled jointly): "
            + (", ".join(f"{a} + {b}" for a, b, _ in rep.merges) or "none")
            + "</p>"
        )
        _chart(table, art / "functions.png")
        for f in ("functions.csv", "functions.html", "functions.png"):
            mlflow.log_artifact(str(art / f), "labeling")
        if rep.stats_path:
            mlflow.log_artifact(str(rep.stats_path), "labeling")
        return str(run.info.run_id)


def _chart(table: Any, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 0.35 * len(table) + 1.5), sharey=True)
    a.barh(table["name"], table["coverage"], color="#58a")
    a.set_xscale("log")
    a.set_xlabel("coverage (share of windows)")
    b.barh(table["name"], table["estimated_accuracy"], color="#a85")
    b.set_xlim(0, 1)
    b.set_xlabel("estimated accuracy")
    fig.suptitle("labelling functions")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@flow(name="weak_labels", log_prints=True)
def weak_labels_flow(
    since: str | None = None,
    until: str | None = None,
    anomaly: bool = True,
    config_path: str | None = None,
    data_dir: str | None = None,
) -> dict[str, Any]:
    """Weak labels for ``[since, until)`` (default: every window with features)."""
    settings = settings_for_flow(config_path, data_dir)
    rep: Any = run_weak(settings, since, until, anomaly)
    run_id = log_weak(settings, rep)
    return {
        "since": rep.since,
        "until": rep.until,
        "windows": rep.windows,
        "clients": rep.clients,
        "anchored_windows": rep.anchored_windows,
        "prior": rep.prior,
        "merges": [list(m) for m in rep.merges],
        "abusive_confident": rep.abusive_confident,
        "legitimate_confident": rep.legitimate_confident,
        "functions": rep.table(),
        "batch": rep.batch,
        "path": str(rep.path) if rep.path else None,
        "anomaly_model": rep.anomaly_version,
        "run_id": run_id,
        "seconds": rep.seconds,
    }
