"""Feast definitions: entities, sources, feature views and feature services.

Defined once, in ``definitions(data_dir)``. ``feast apply`` run in this folder
reads the module-level objects at the bottom (built for the default data dir,
or ``$GATEWISE_DATA_DIR``); gatewise's own code calls ``definitions()`` with
the data dir of its settings.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, ValueType
from feast.data_format import ParquetFormat
from feast.types import Float64, Int64

from features.windows import CLIENT_FEATURES, ROUTE_FEATURES

__all__ = ["definitions"]


def _fields(names: list[str]) -> list[Field]:
    return [
        Field(
            name=n,
            dtype=Int64 if n.startswith(("distinct_", "shared_", "route_distinct")) else Float64,
            description={**CLIENT_FEATURES, **ROUTE_FEATURES}[n],
        )
        for n in names
    ]


def definitions(data_dir: Path) -> dict[str, Any]:
    """Every Feast object of the repo, with sources under ``data_dir/features``."""
    root = Path(data_dir).resolve() / "features"

    # the API consumer a request is attributed to (telemetry's client_id)
    client = Entity(
        name="client",
        join_keys=["client_id"],
        value_type=ValueType.STRING,
        description="API consumer (telemetry client_id)",
    )
    # an endpoint: "METHOD /route/{template}"
    route = Entity(
        name="route",
        join_keys=["route_id"],
        value_type=ValueType.STRING,
        description="HTTP method and route template",
    )

    # per client and 5-minute window (stamped at the window's end), built by features/build.py
    client_windows_source = FileSource(
        name="client_windows_source",
        path=str(root / "client_windows" / "*" / "*.parquet"),
        file_format=ParquetFormat(),
        timestamp_field="event_timestamp",
        description="client window aggregates from telemetry (features/windows.py)",
    )
    # per route and 5-minute window, for load forecasting
    route_windows_source = FileSource(
        name="route_windows_source",
        path=str(root / "route_windows" / "*" / "*.parquet"),
        file_format=ParquetFormat(),
        timestamp_field="event_timestamp",
        description="route window aggregates from telemetry (features/windows.py)",
    )

    # the same rows plus the open windows as the online store held them at instants inside
    # windows (features/asof.py): training joins here and sees what /score is served
    client_asof_source = FileSource(
        name="client_asof_source",
        path=str(root / "client_windows*" / "*" / "*.parquet"),
        file_format=ParquetFormat(),
        timestamp_field="event_timestamp",
        description="closed-window rows and as-of snapshots of open windows (features/asof.py)",
    )

    # the stream processor (features/stream.py) pushes the same rows, seconds after the events,
    # straight to the online store; offline reads and materialisation use the batch source
    client_windows_push = PushSource(
        name="client_windows_push",
        batch_source=client_windows_source,
        description="live client window rows from the stream processor",
    )

    def by_window(w: str) -> list[str]:
        return [
            n for n in CLIENT_FEATURES if n.endswith(f"_{w}") and n != "shared_address_degree_1h"
        ]

    # what the client did in the last 5 minutes; stale after two silent windows
    client_5m_fv = FeatureView(
        name="client_5m",
        entities=[client],
        ttl=timedelta(minutes=10),
        schema=_fields(by_window("5m")),
        source=client_windows_push,
        online=True,
        tags={"window": "5m"},
    )
    # the last hour, rolling at each 5-minute step
    client_1h_fv = FeatureView(
        name="client_1h",
        entities=[client],
        ttl=timedelta(hours=1),
        schema=_fields(by_window("1h")),
        source=client_windows_push,
        online=True,
        tags={"window": "1h"},
    )
    # the last 24 hours, rolling at each 5-minute step
    client_24h_fv = FeatureView(
        name="client_24h",
        entities=[client],
        ttl=timedelta(hours=24),
        schema=_fields(by_window("24h")),
        source=client_windows_push,
        online=True,
        tags={"window": "24h"},
    )
    # slow-moving facts about the client: age and address sharing
    client_profile_fv = FeatureView(
        name="client_profile",
        entities=[client],
        ttl=timedelta(hours=24),
        schema=_fields(["client_age_days", "shared_address_degree_1h"]),
        source=client_windows_push,
        online=True,
        tags={"window": "profile"},
    )
    # the same four views over the as-of source, for training only (never materialised)
    asof_views = [
        FeatureView(
            name=f"{fv.name}_asof",
            entities=[client],
            ttl=fv.ttl,
            schema=list(fv.schema),
            source=client_asof_source,
            online=False,
            tags={**fv.tags, "training": "as-of"},
        )
        for fv in (client_5m_fv, client_1h_fv, client_24h_fv, client_profile_fv)
    ]

    # load on each route per 5 minutes
    route_5m_fv = FeatureView(
        name="route_5m",
        entities=[route],
        ttl=timedelta(minutes=10),
        schema=_fields(list(ROUTE_FEATURES)),
        source=route_windows_source,
        online=True,
        tags={"window": "5m"},
    )

    # client abuse classification (target `abuse`)
    abuse_v1 = FeatureService(
        name="abuse_v1",
        features=[client_5m_fv, client_1h_fv, client_24h_fv, client_profile_fv],
        description="per-client behaviour for abuse classification",
    )
    # the same features as the online store held them: abuse training rows (features/asof.py)
    abuse_asof_v1 = FeatureService(
        name="abuse_asof_v1",
        features=list[Any](asof_views),
        description="abuse_v1's features as served (open windows at instants inside windows),"
        " for training",
    )
    # per-route request-volume forecasting (target `load`)
    load_v1 = FeatureService(
        name="load_v1", features=[route_5m_fv], description="per-route load for forecasting"
    )

    return {
        "client": client,
        "route": route,
        "client_windows_source": client_windows_source,
        "route_windows_source": route_windows_source,
        "client_windows_push": client_windows_push,
        "client_asof_source": client_asof_source,
        "client_5m_fv": client_5m_fv,
        "client_1h_fv": client_1h_fv,
        "client_24h_fv": client_24h_fv,
        "client_profile_fv": client_profile_fv,
        "route_5m_fv": route_5m_fv,
        **{fv.name: fv for fv in asof_views},
        "abuse_v1": abuse_v1,
        "abuse_asof_v1": abuse_asof_v1,
        "load_v1": load_v1,
    }


# For the `feast` CLI run in this folder (feast apply / feast feature-views list).
_DEFAULT_DATA_DIR = Path(
    os.environ.get("GATEWISE_DATA_DIR") or Path(__file__).resolve().parents[1] / ".gatewise"
)
globals().update(definitions(_DEFAULT_DATA_DIR))
