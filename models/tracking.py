"""MLflow tracking and registry reads: the client, experiments, a target's versions by alias.

No training code and nothing heavier than MLflow: analytics, monitoring, serving and the
flows read the registry through these; ``models/registry.py`` (promotion, rollback) and
training build on them.

    info = version_info(settings, "abuse")   # {"model", "champion": {...}, "challenger": ...}
"""

from __future__ import annotations

from typing import Any

from config.settings import Settings

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "champion_run_id",
    "client",
    "ensure_experiment",
    "version_by_alias",
    "version_info",
]

CHAMPION, CHALLENGER = "champion", "challenger"


def client(settings: Settings) -> Any:
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(settings.mlflow_uri)
    mlflow.set_registry_uri(settings.mlflow_uri)
    return MlflowClient(tracking_uri=settings.mlflow_uri, registry_uri=settings.mlflow_uri)


def ensure_experiment(settings: Settings, name: str) -> str:
    """The experiment ``gatewise-<name>``, artifacts under ``<data_dir>/mlartifacts``."""
    import mlflow

    c = client(settings)
    exp_name = f"{settings.tracking.registered_model_prefix}-{name}"
    exp = c.get_experiment_by_name(exp_name)
    if exp is None:
        loc = (settings.artifacts_dir / name).resolve()
        loc.mkdir(parents=True, exist_ok=True)
        exp_id = c.create_experiment(exp_name, artifact_location=loc.as_uri())
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return str(exp_id)


def version_by_alias(c: Any, name: str, alias: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return c.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def version_info(settings: Settings, target: str) -> dict[str, Any]:
    """Champion and challenger versions of a target, with their gate tags."""
    c = client(settings)
    name = settings.registered_model(target)
    out: dict[str, Any] = {"model": name}
    for alias in (CHAMPION, CHALLENGER):
        v = version_by_alias(c, name, alias)
        out[alias] = (
            None
            if v is None
            else {"version": str(v.version), "tags": dict(v.tags), "run_id": v.run_id}
        )
    return out


def champion_run_id(settings: Settings, target: str) -> str | None:
    """The MLflow run that trained the target's champion, if there is one."""
    champ = version_info(settings, target).get("champion")
    return None if champ is None else champ.get("run_id")
