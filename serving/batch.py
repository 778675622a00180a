"""Batch scoring: every entity window of a telemetry range, scored by one model version.

Features come point-in-time from Feast (the training convention: a window's
row carries the features known at its start), so a backtest re-scored this
way sees what the model would have seen live.

    df, version = score_windows(settings, "abuse", "champion", since="2026-11-02")
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd

from config.settings import Settings

__all__ = ["score_entities_at", "score_windows"]


def _windows(
    settings: Settings, entity: str, since: datetime | str | None, until: datetime | str | None
) -> pd.DataFrame:
    from telemetry.store import TelemetryStore

    minutes = settings.simulator.label_window_minutes
    store = TelemetryStore(settings.telemetry_dir)
    if store.is_empty():
        raise LookupError(f"no telemetry in {settings.telemetry_dir}")
    key = "client_id" if entity == "client" else "http_request_method || ' ' || http_route"
    con = store.connect()
    sql = (
        f"SELECT DISTINCT {key} AS entity, time_bucket(INTERVAL '{minutes} minutes', timestamp) "
        f"AS event_timestamp FROM ({store.relation_sql(since, until)}) ORDER BY 2, 1"
    )
    return con.execute(sql).df()


def score_windows(
    settings: Settings,
    target: str,
    model: str = "champion",
    *,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
) -> tuple[pd.DataFrame, str]:
    """(entity, event_timestamp, score) per window, and the model version used."""
    t = settings.target(target)
    win = _windows(settings, t.entity, since, until)
    if win.empty:
        raise LookupError("no traffic in that range")
    return _score(settings, target, model, win)


def score_entities_at(
    settings: Settings,
    target: str,
    entities: list[str],
    at: datetime,
    model: str = "champion",
) -> tuple[pd.DataFrame, str]:
    """Each entity's score for the window starting at ``at``: what the model expects of it
    next, from the features of the windows that closed by then (monitoring's overrides)."""
    if not entities:
        raise LookupError("no entities to score")
    win = pd.DataFrame({"entity": entities, "event_timestamp": pd.Timestamp(at)})
    return _score(settings, target, model, win)


def _score(
    settings: Settings, target: str, model: str, win: pd.DataFrame
) -> tuple[pd.DataFrame, str]:
    from features.store import feature_store
    from serving.runtime import Runtime

    t = settings.target(target)
    rt = Runtime(settings)
    m = rt.load_version(target, "batch", model) if model.isdigit() else rt.ensure(target, model)
    join = "client_id" if t.entity == "client" else "route_id"
    entity_df = win.rename(columns={"entity": join})
    entity_df["event_timestamp"] = pd.to_datetime(entity_df["event_timestamp"], utc=True)
    store = feature_store(settings)
    feats = store.get_historical_features(
        entity_df=entity_df, features=store.get_feature_service(m.feature_service)
    ).to_df()
    X = feats.reindex(columns=m.features).astype(float)
    known = X.notna().any(axis=1).to_numpy()
    if not known.any():
        first = pd.Timestamp(entity_df["event_timestamp"].min())
        last = pd.Timestamp(entity_df["event_timestamp"].max())
        raise LookupError(
            f"no features for any of the {len(win):,} windows from {first:%Y-%m-%d %H:%M} to "
            f"{last:%Y-%m-%d %H:%M} UTC: build them with `gatewise features build --since "
            f"{first:%Y-%m-%d} --until {(last + pd.Timedelta(days=1)):%Y-%m-%d}`"
        )
    scores = np.full(len(feats), np.nan)
    if known.any():
        scores[known] = m.predict(X[known])
    out = pd.DataFrame(
        {
            join: feats[join].to_numpy(),
            "event_timestamp": pd.to_datetime(feats["event_timestamp"], utc=True),
            "score": scores,
        }
    ).sort_values(["event_timestamp", join], kind="stable")
    return out.reset_index(drop=True), m.version
