from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pytest
from pydantic import ValidationError

from telemetry.schema import (
    EVENT_SCHEMA,
    OTEL_NAMES,
    TelemetryEvent,
    conform,
    events_to_table,
    table_to_events,
)


def _event(**kw):
    base = dict(
        timestamp=datetime(2026, 11, 2, 12, 0, 0, 123456, tzinfo=UTC),
        request_id="r1",
        client_id="c1",
        http_request_method="GET",
        url_path="/v1/orders/7",
        http_route="/v1/orders/{id}",
        http_response_status_code=200,
        duration_ms=12.5,
        tier="pro",
    )
    base.update(kw)
    return TelemetryEvent(**base)


def test_pydantic_and_arrow_round_trip():
    events = [
        _event(),
        _event(request_id="r2", url_query="a=1", model_score=0.25, response_bytes=10),
    ]
    table = events_to_table(events)
    assert table.schema.equals(EVENT_SCHEMA)
    assert table_to_events(table) == events


def test_schema_uses_otel_names_and_one_definition():
    assert set(TelemetryEvent.model_fields) == set(EVENT_SCHEMA.names)
    assert OTEL_NAMES["http_request_method"] == "http.request.method"
    assert OTEL_NAMES["http_route"] == "http.route"
    assert OTEL_NAMES["client_address"] == "client.address"


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"http_response_status_code": 99}, "http_response_status_code"),
        ({"timestamp": datetime(2026, 1, 1)}, "timestamp"),
        ({"request_id": ""}, "request_id"),
        ({"duration_ms": -1.0}, "duration_ms"),
        ({"unknown": 1}, "unknown"),
    ],
)
def test_invalid_event_names_the_field(kw, field):
    with pytest.raises(ValidationError) as exc:
        _event(**kw)
    assert field in str(exc.value)


def test_conform_names_missing_required_column():
    t = pa.table({"request_id": ["x"]})
    with pytest.raises(ValueError, match="'timestamp'"):
        conform(t)


def test_conform_rejects_nulls_in_required_column():
    t = events_to_table([_event()])
    t = t.set_column(
        t.schema.get_field_index("client_id"), "client_id", pa.array([None], pa.string())
    )
    with pytest.raises(ValueError, match="client_id"):
        conform(t)
