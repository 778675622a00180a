"""Training sets and online lookups through Feast, never from raw telemetry.

The entity rows (with their labels) come from the caller: ``models/data.py`` reads the
labels table (``labeling/``) and asks here for the features known at each row's time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from config.settings import Settings

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["online_features", "training_frame"]


def training_frame(settings: Settings, service: str, entity_df: pd.DataFrame) -> pd.DataFrame:
    """``entity_df`` (entity key, ``event_timestamp``, any other columns such as the label)
    joined point-in-time with the features of ``service``: each row gets the features known
    at its ``event_timestamp``."""
    import pandas as pd

    from features.store import feature_store

    store = feature_store(settings)
    fs = store.get_feature_service(service)
    step = settings.features.training_chunk_rows
    if len(entity_df) <= step:
        return store.get_historical_features(entity_df=entity_df, features=fs).to_df()
    # each row's join depends on its own key and time only, so chunks give the same rows;
    # Feast's DuckDB/ibis join holds ~30 KB per entity row (docs/benchmarks.md, issue 26)
    parts = [
        store.get_historical_features(entity_df=entity_df.iloc[lo : lo + step], features=fs).to_df()
        for lo in range(0, len(entity_df), step)
    ]
    return pd.concat(parts, ignore_index=True)


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
