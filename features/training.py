"""Training sets and online lookups through Feast, never from raw telemetry."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from gatewise.settings import Settings

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["online_features", "training_frame"]


def training_frame(
    settings: Settings,
    service: str = "abuse_v1",
    *,
    entity_df: pd.DataFrame | None = None,
    as_of: datetime | None = None,
) -> pd.DataFrame:
    """Labels joined point-in-time with the features of ``service``.

    ``entity_df`` defaults to the labels table (client_id, event_timestamp,
    label, source, scenario). With ``as_of``, only labels already known at
    that time are used: their window started at least
    ``features.label_delay_minutes`` before it (labels arrive late).
    """
    from features.store import feature_store
    from telemetry.labels import LabelStore

    if entity_df is None:
        delay = timedelta(minutes=settings.features.label_delay_minutes)
        labels = (
            LabelStore(settings.labels_dir).read(available_at=as_of, delay=delay)
            if as_of
            else LabelStore(settings.labels_dir).read()
        )
        if labels.num_rows == 0:
            raise ValueError(
                f"no labels in {settings.labels_dir}: simulate traffic or import a labels table first"
            )
        entity_df = labels.to_pandas()
    store = feature_store(settings)
    return store.get_historical_features(
        entity_df=entity_df, features=store.get_feature_service(service)
    ).to_df()


def online_features(
    settings: Settings, entity_ids: list[str], service: str = "abuse_v1"
) -> dict[str, list[Any]]:
    """Latest features of ``service`` for these entities from the online store."""
    from features.store import feature_store

    store = feature_store(settings)
    fs = store.get_feature_service(service)
    join_key = store.get_feature_view(fs.feature_view_projections[0].name).entity_columns[0].name
    return store.get_online_features(
        features=fs, entity_rows=[{join_key: e} for e in entity_ids]
    ).to_dict()
