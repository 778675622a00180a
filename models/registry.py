"""The registered model and its aliases: trial logging, promotion, rollback, loading.

Training sets alias ``challenger`` and writes its gate verdict as version
tags. Only promotion (the deploy flow, or ``gatewise promote`` by hand) moves
``champion``; each promotion pushes the previous champion on a stack kept as
a registered-model tag, so ``rollback`` can restore it. Reading the registry (versions,
aliases, experiments) needs no training code: ``models/tracking.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from config.settings import Settings
from models.tracking import CHALLENGER, CHAMPION, client, version_by_alias

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "PromotionError",
    "champion_moved",
    "load_alias",
    "log_trials",
    "promote",
    "rollback",
]

_STACK_TAG = "gatewise.champion_history"


class PromotionError(RuntimeError):
    """A promotion or rollback that must not happen; the message says why."""


def log_trials(settings: Settings, experiment_id: str, parent_run_id: str, study: Any) -> int:
    """One nested run per Optuna trial, written by this (the coordinator) process."""
    from mlflow.entities import Metric, Param, RunTag

    c = client(settings)
    n = 0
    for t in study.trials:
        if t.state.name not in ("COMPLETE", "PRUNED", "FAIL") or t.user_attrs.get("budget_skip"):
            continue
        run = c.create_run(
            experiment_id,
            run_name=f"trial-{t.number:03d}",
            tags={
                "mlflow.parentRunId": parent_run_id,
                "optuna.trial": str(t.number),
                "optuna.state": t.state.name,
            },
        )
        ts = (
            int((t.datetime_complete or t.datetime_start).timestamp() * 1000)
            if t.datetime_start
            else 0
        )
        params = [Param(k, str(v)[:500]) for k, v in t.params.items()]
        metrics = []
        if t.value is not None:
            metrics.append(Metric("val_score", float(t.value), ts, 0))
        for k, v in (t.user_attrs.get("metrics") or {}).items():
            metrics.append(Metric(f"val_{k}", float(v), ts, 0))
        if "fit_seconds" in t.user_attrs:
            metrics.append(Metric("fit_seconds", float(t.user_attrs["fit_seconds"]), ts, 0))
        for step, v in t.intermediate_values.items():
            metrics.append(Metric("val_score_by_fidelity", float(v), ts, int(step)))
        c.log_batch(
            run.info.run_id,
            metrics=metrics,
            params=params,
            tags=[RunTag("family", str(t.params.get("family")))],
        )
        c.set_terminated(run.info.run_id, "FINISHED" if t.state.name != "FAIL" else "FAILED")
        n += 1
    return n


def _history(c: Any, name: str) -> list[str]:
    rm = c.get_registered_model(name)
    raw = rm.tags.get(_STACK_TAG)
    return json.loads(raw) if raw else []


def promote(
    settings: Settings, target: str, version: str | None = None, *, force: bool = False
) -> dict[str, Any]:
    """Move ``champion`` to ``version`` (default: the current challenger).

    Refuses a version whose gate verdict is not eligible unless ``force``.
    """
    from mlflow.exceptions import MlflowException

    c = client(settings)
    name = settings.registered_model(target)
    try:
        c.get_registered_model(name)
    except MlflowException:
        raise PromotionError(
            f"no registered model {name!r}: train target {target!r} first"
        ) from None
    if version is None:
        ch = version_by_alias(c, name, CHALLENGER)
        if ch is None:
            raise PromotionError(f"{name} has no {CHALLENGER} to promote")
        version = str(ch.version)
    mv = c.get_model_version(name, version)
    eligible = mv.tags.get("gate.eligible") == "true"
    if not eligible and not force:
        reason = mv.tags.get("gate.reason", "no gate verdict recorded")
        raise PromotionError(
            f"{name} version {version} is not eligible for promotion: {reason} (use --force to override)"
        )
    current = version_by_alias(c, name, CHAMPION)
    if current is not None and str(current.version) == str(version):
        return {"model": name, "champion": version, "previous": None, "changed": False}
    history = _history(c, name)
    if current is not None:
        history.append(str(current.version))
    c.set_registered_model_alias(name, CHAMPION, version)
    moved = champion_moved(settings, target)
    c.set_registered_model_tag(name, _STACK_TAG, json.dumps(history[-50:]))
    c.set_model_version_tag(
        name, version, "gatewise.promoted", "forced" if force and not eligible else "gated"
    )
    return {
        "model": name,
        "champion": version,
        "previous": None if current is None else str(current.version),
        "changed": True,
        **({"scanner": moved} if moved is not None else {}),
    }


def rollback(settings: Settings, target: str) -> dict[str, Any]:
    """Restore the champion before the current one."""
    c = client(settings)
    name = settings.registered_model(target)
    history = _history(c, name)
    if not history:
        raise PromotionError(f"{name} has no earlier champion to roll back to")
    previous = history.pop()
    current = version_by_alias(c, name, CHAMPION)
    c.set_registered_model_alias(name, CHAMPION, previous)
    champion_moved(settings, target)
    c.set_registered_model_tag(name, _STACK_TAG, json.dumps(history))
    if current is not None:
        c.set_model_version_tag(name, str(current.version), "gatewise.rolled_back", "true")
    return {
        "model": name,
        "champion": previous,
        "replaced": None if current is None else str(current.version),
    }


def champion_moved(settings: Settings, target: str) -> dict[str, Any] | None:
    """What follows a champion move besides serving's own alias refresh: a payload
    target's compact scanner is re-exported for the gateway (``models.payload``)."""
    t = settings.targets.get(target)
    if t is None or t.label_source != "payloads":
        return None
    from models.payload import export_champion

    return export_champion(settings, target)


def load_alias(settings: Settings, target: str, alias: str) -> tuple[Any, Any] | None:
    """(sklearn model, model version) behind an alias, or None when unset."""
    import mlflow.sklearn

    c = client(settings)
    name = settings.registered_model(target)
    mv = version_by_alias(c, name, alias)
    if mv is None:
        return None
    return mlflow.sklearn.load_model(f"models:/{name}/{mv.version}"), mv


def write_json(path: Path, obj: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=str))
    return path
