"""The telemetry contract: one event per request, defined once.

Field names follow OpenTelemetry's HTTP semantic conventions with dots turned
into underscores (``http.request.method`` -> ``http_request_method``); the
dotted name is kept in each field's Arrow metadata (key ``otel``) so exporters
can speak OTel without a second mapping table.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "CONSUMERS_SCHEMA",
    "EVENT_SCHEMA",
    "OTEL_NAMES",
    "TS",
    "TelemetryEvent",
    "conform",
    "events_to_table",
    "table_to_events",
]

TS = pa.timestamp("us", tz="UTC")

# (name, type, nullable, OpenTelemetry attribute or None, description)
_FIELDS: list[tuple[str, pa.DataType, bool, str | None, str]] = [
    ("timestamp", TS, False, None, "when the request arrived at the gateway (UTC)"),
    (
        "request_id",
        pa.string(),
        False,
        "http.request.header.x-request-id",
        "unique per request; from the log or derived from file + byte offset",
    ),
    ("client_id", pa.string(), False, None, "authenticated consumer, else the client address"),
    ("api_key_id", pa.string(), True, None, "id (never the secret) of the API key used"),
    ("client_address", pa.string(), True, "client.address", "remote IP address"),
    ("user_agent", pa.string(), True, "user_agent.original", "User-Agent header"),
    (
        "http_request_method",
        pa.string(),
        False,
        "http.request.method",
        "method; _OTHER when unknown (OTel)",
    ),
    ("url_path", pa.string(), False, "url.path", "path without the query string"),
    ("url_query", pa.string(), True, "url.query", "query string without the leading '?'"),
    ("http_route", pa.string(), False, "http.route", "route template, e.g. /v1/orders/{id}"),
    (
        "http_response_status_code",
        pa.int16(),
        False,
        "http.response.status_code",
        "status sent to the client",
    ),
    (
        "duration_ms",
        pa.float32(),
        True,
        "http.server.request.duration",
        "total time at the gateway (ms; OTel uses seconds)",
    ),
    ("upstream_duration_ms", pa.float32(), True, None, "time spent waiting on the upstream (ms)"),
    ("request_bytes", pa.int64(), True, "http.request.size", "request size in bytes"),
    ("response_bytes", pa.int64(), True, "http.response.size", "response size in bytes"),
    ("upstream_service", pa.string(), True, "server.address", "upstream service that answered"),
    ("cache_status", pa.string(), True, None, "HIT | MISS | BYPASS | EXPIRED | STALE"),
    (
        "auth_result",
        pa.string(),
        True,
        None,
        "ok | anonymous | invalid_key | invalid_token | expired | forbidden",
    ),
    (
        "ratelimit_decision",
        pa.string(),
        True,
        None,
        "allow | throttle | block | challenge | shadow_*",
    ),
    ("policy_version", pa.string(), True, None, "policy document version in force"),
    ("model_version", pa.string(), True, None, "model version that scored the client"),
    ("model_score", pa.float32(), True, None, "the model's score for the client"),
    ("tier", pa.string(), True, None, "client tier: free | pro | enterprise"),
    ("region", pa.string(), True, None, "client region"),
    ("device_type", pa.string(), True, None, "server | mobile | browser | iot | bot | other"),
    (
        "scan_score",
        pa.float32(),
        True,
        None,
        "payload scanner: attack probability of the request's most suspicious value",
    ),
    (
        "scan_label",
        pa.string(),
        True,
        None,
        "payload scanner: benign | <attack class> | unscanned (a budget ran out before the "
        "request was read in full) | unavailable",
    ),
    (
        "scan_action",
        pa.string(),
        True,
        None,
        "payload policy band: log | challenge | block | shadow_challenge | shadow_block",
    ),
    (
        "scan_gap",
        pa.string(),
        True,
        None,
        "payload scanner: what was left unread when scan_label is unscanned",
    ),
    (
        "attributes",
        pa.map_(pa.string(), pa.string()),
        True,
        None,
        "log variables no field above takes (http_referer, server_name, ...); null if none",
    ),
]

EVENT_SCHEMA = pa.schema(
    [
        pa.field(
            name,
            typ,
            nullable=nullable,
            metadata={"otel": otel or "", "doc": doc},
        )
        for name, typ, nullable, otel, doc in _FIELDS
    ],
    metadata={"gatewise.schema": "telemetry/1"},
)

OTEL_NAMES: dict[str, str] = {name: otel for name, _, _, otel, _ in _FIELDS if otel}

CONSUMERS_SCHEMA = pa.schema(
    [
        pa.field("client_id", pa.string(), nullable=False),
        pa.field("tier", pa.string()),
        pa.field("region", pa.string()),
        pa.field("device_type", pa.string()),
    ]
)


class TelemetryEvent(BaseModel):
    """One request as the gateway saw it; the row model of ``EVENT_SCHEMA``.

    ``TelemetryEvent(timestamp=now, request_id="r1", client_id="c1",
    http_request_method="GET", url_path="/v1/x", http_route="/v1/x",
    http_response_status_code=200)``
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    timestamp: datetime
    request_id: str = Field(min_length=1)
    client_id: str = Field(min_length=1)
    api_key_id: str | None = None
    client_address: str | None = None
    user_agent: str | None = None
    http_request_method: str = Field(min_length=1)
    url_path: str
    url_query: str | None = None
    http_route: str
    http_response_status_code: int = Field(ge=100, le=599)
    duration_ms: float | None = Field(default=None, ge=0)
    upstream_duration_ms: float | None = Field(default=None, ge=0)
    request_bytes: int | None = Field(default=None, ge=0)
    response_bytes: int | None = Field(default=None, ge=0)
    upstream_service: str | None = None
    cache_status: str | None = None
    auth_result: str | None = None
    ratelimit_decision: str | None = None
    policy_version: str | None = None
    model_version: str | None = None
    model_score: float | None = None
    tier: str | None = None
    region: str | None = None
    device_type: str | None = None
    scan_score: float | None = Field(default=None, ge=0, le=1)
    scan_label: str | None = None
    scan_action: str | None = None
    scan_gap: str | None = None
    attributes: dict[str, str] | None = None

    @field_validator("timestamp")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("timestamp must carry a time zone")
        return v

    def to_row(self) -> dict[str, Any]:
        return self.model_dump()


def events_to_table(events: list[TelemetryEvent]) -> pa.Table:
    """Rows of the pydantic model -> an Arrow table in the contract schema."""
    return pa.Table.from_pylist([e.to_row() for e in events], schema=EVENT_SCHEMA)


def table_to_events(table: pa.Table) -> list[TelemetryEvent]:
    rows = conform(table).to_pylist()
    for row in rows:  # Arrow gives a map as (key, value) pairs
        if row["attributes"] is not None:
            row["attributes"] = dict(row["attributes"])
    return [TelemetryEvent(**row) for row in rows]


def conform(table: pa.Table, schema: pa.Schema = EVENT_SCHEMA) -> pa.Table:
    """Cast ``table`` to ``schema``: missing nullable columns become nulls.

    Raises ``ValueError`` naming the column when a required one is missing,
    has nulls, or cannot be cast.
    """
    cols = []
    for field in schema:
        if field.name in table.column_names:
            col = table.column(field.name)
            try:
                col = col.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise ValueError(
                    f"column {field.name!r}: cannot cast to {field.type}: {exc}"
                ) from exc
            if not field.nullable and col.null_count:
                raise ValueError(
                    f"column {field.name!r}: {col.null_count} null value(s) in a required column"
                )
        elif field.nullable:
            col = pa.nulls(table.num_rows, field.type)
        else:
            raise ValueError(f"column {field.name!r} is required but missing")
        cols.append(col)
    return pa.Table.from_arrays(cols, schema=schema)
