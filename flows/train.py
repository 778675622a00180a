"""Prefect flow ``train``: AutoML for one target, tracked in MLflow, challenger registered.

Runnable ad hoc (``gatewise train``) or as a Prefect deployment
(``gatewise train --serve`` keeps a process that serves deployment
``train/<target>`` so runs can be triggered from the Prefect UI or API, e.g.
by monitoring; point ``PREFECT_API_URL`` at a ``prefect server``).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

from config.settings import Settings, settings_for_flow

__all__ = ["train_flow"]


@task(name="automl", cache_policy=NONE)
def automl(
    settings: Settings,
    target: str,
    budget: float | None,
    n_trials: int | None,
    workers: int,
    seed: int,
    labels: str = "all",
    warm_start: bool = False,
) -> dict[str, Any]:
    from models.train import train_target

    log = get_run_logger()

    def on_trial(t: Any) -> None:
        log.info(
            "trial %s %s %s = %s",
            t.number,
            t.params.get("family"),
            t.state.name,
            None if t.value is None else round(t.value, 5),
        )

    res = train_target(
        settings,
        target,
        budget=budget,
        n_trials=n_trials,
        workers=workers,
        seed=seed,
        on_trial=on_trial,
        labels=labels,
        warm_start=warm_start,
    )
    log.info(
        "%s v%s: holdout %s %.4f; %s",
        res.model_name,
        res.version,
        res.metric,
        res.holdout_score,
        "ELIGIBLE" if res.eligible else "NOT eligible: " + "; ".join(res.reasons),
    )
    return asdict(res)


@flow(name="train", log_prints=True)
def train_flow(
    target: str = "abuse",
    budget: float | None = None,
    n_trials: int | None = None,
    workers: int = 1,
    seed: int = 0,
    config_path: str | None = None,
    data_dir: str | None = None,
    labels: str = "all",
    warm_start: bool = False,
) -> dict[str, Any]:
    """Search, evaluate and register a challenger for ``target``; ``labels``: all, weak or
    reviewed (which labels train it); ``warm_start``: the champion's configuration is the
    first trial (a retraining after drift)."""
    settings = settings_for_flow(config_path, data_dir)
    settings.target(target)  # fail fast on an unknown target
    from models.data import check_ready

    check_ready(settings, target, labels)  # no labels, consumers or features: say which
    return automl(settings, target, budget, n_trials, workers, seed, labels, warm_start)


def train_deployment(
    settings: Settings, config_path: Path | None, target: str, budget: float | None, workers: int
) -> Any:
    """The deployment ``train/<target>`` with this project's parameters."""
    return train_flow.to_deployment(
        name=target,
        parameters={
            "target": target,
            "budget": budget,
            "workers": workers,
            "config_path": str(config_path) if config_path else None,
            "data_dir": str(settings.data_dir.resolve()),
        },
        description=f"AutoML for target {target!r}: search, MLflow tracking, challenger with a gate verdict",
        tags=["gatewise", "train", target],
    )


def serve_train(
    settings: Settings, config_path: Path | None, target: str, budget: float | None, workers: int
) -> None:
    """Serve the deployment until interrupted (blocks)."""
    from prefect import serve

    serve(train_deployment(settings, config_path, target, budget, workers))
