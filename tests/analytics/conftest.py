from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

T0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)  # a Monday


def event(client: str, minutes: float, route: str, status: int, ms: float, **kw: Any) -> Any:
    from telemetry.schema import TelemetryEvent

    attrs = {
        "c1": ("free", "eu-west", "browser"),
        "c2": ("pro", "us-east", "server"),
        "c3": ("free", "us-east", "mobile"),
    }.get(client, ("free", "eu-west", "server"))
    tier, region, device = attrs
    base = {
        "timestamp": T0 + timedelta(minutes=minutes),
        "request_id": f"{client}-{minutes}-{route}",
        "client_id": client,
        "http_request_method": "GET",
        "url_path": route,
        "http_route": route,
        "http_response_status_code": status,
        "duration_ms": ms,
        "response_bytes": 1000,
        "upstream_service": route.split("/")[2],
        "ratelimit_decision": "throttle" if status == 429 else "allow",
        "tier": tier,
        "region": region,
        "device_type": device,
    }
    base.update(kw)
    return TelemetryEvent(**base)


# (client, minutes after T0, route, status, duration ms): hand-checked figures in the tests
SMALL = [
    ("c1", 0, "/v1/search", 200, 100),
    ("c1", 10, "/v1/search", 200, 200),
    ("c1", 20, "/v1/search", 500, 300),
    ("c1", 65, "/v1/search", 200, 900),
    ("c2", 30, "/v1/orders", 200, 50),
    ("c2", 40, "/v1/orders", 404, 60),
    ("c2", 90, "/v1/orders", 429, 70),
    ("c3", 50, "/v1/search", 200, 400),
    ("c3", 105, "/v2/new", 200, 10),
]


def store_of(root: Path, events: list[Any]) -> Path:
    from telemetry.schema import events_to_table
    from telemetry.store import TelemetryStore

    TelemetryStore(root).append(events_to_table(events))
    return root


@pytest.fixture()
def small(tmp_path: Path) -> Any:
    from analytics.source import Source

    root = store_of(tmp_path / "telemetry", [event(*row) for row in SMALL])
    src = Source([root])
    yield src
    src.close()
