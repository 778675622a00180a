"""Window aggregates over telemetry, defined once.

Plain DuckDB SQL over a relation named ``ev`` (the telemetry contract), kept
to constructs that sqlglot transpiles to Spark/Trino/BigQuery (window frames,
``count(DISTINCT ...)``, ``quantile_cont``), so the same definitions can move
to a bigger engine. The batch build (``features/build.py``) and the stream
processor run these same functions; neither holds feature SQL of its own.

Every output row is stamped ``event_timestamp`` = the END of its 5-minute
window, and uses only events strictly before it: a feature row never sees the
future of its own timestamp (the point-in-time join relies on that).
"""

from __future__ import annotations

__all__ = [
    "CLIENT_FEATURES",
    "ROUTE_FEATURES",
    "SENSITIVE_ROUTES",
    "WINDOW_MINUTES",
    "client_base_sql",
    "client_roll_sql",
    "client_state_compact_sql",
    "client_windows_sql",
    "route_windows_sql",
]

WINDOW_MINUTES = 5
SENSITIVE_ROUTES = ("/v1/auth/login", "/v1/auth/password-reset", "/v1/reports/export")

# name -> description; suffixes _5m/_1h/_24h are the window the value covers
CLIENT_FEATURES: dict[str, str] = {}
for _w in ("5m", "1h", "24h"):
    CLIENT_FEATURES.update(
        {
            f"request_count_{_w}": "requests",
            f"rate_4xx_{_w}": "share of 4xx responses",
            f"rate_5xx_{_w}": "share of 5xx responses",
            f"rate_401_{_w}": "share of 401 (failed authentication)",
            f"rate_403_{_w}": "share of 403 (forbidden)",
            f"rate_429_{_w}": "share of 429 (rate limited)",
            f"distinct_routes_{_w}": "distinct route templates",
            f"distinct_addresses_{_w}": "distinct client addresses",
            f"distinct_user_agents_{_w}": "distinct user agents",
            f"distinct_networks_{_w}": "distinct /16 networks of the addresses (geographic spread)",
            f"bytes_in_{_w}": "request bytes",
            f"bytes_out_{_w}": "response bytes",
            f"burstiness_{_w}": "coefficient of variation of inter-arrival gaps (0 = regular, >1 = bursty)",
            f"sensitive_share_{_w}": "share of login, password-reset and export requests",
            f"enumeration_score_{_w}": "share of id requests whose id is 1-3 above the previous one on that route",
            f"night_share_{_w}": "share of requests between 00:00 and 06:00 UTC",
            f"latency_p95_{_w}": "p95 latency (ms); for 1h/24h the worst 5-minute p95",
        }
    )
CLIENT_FEATURES.update(
    {
        "latency_p50_5m": "median latency (ms)",
        "client_age_days": "days since the client was first seen",
        "shared_address_degree_1h": "most other clients seen on one of this client's addresses in the last hour",
    }
)

ROUTE_FEATURES: dict[str, str] = {
    "route_request_count_5m": "requests",
    "route_error_rate_5m": "share of 5xx responses",
    "route_latency_p95_5m": "p95 latency (ms)",
    "route_distinct_clients_5m": "distinct clients",
    "route_request_count_1h": "requests in the last hour",
    "route_request_count_24h": "requests in the last 24 hours",
}

_ADDITIVE = (
    "request_count",
    "n_served",
    "n_4xx",
    "n_5xx",
    "n_401",
    "n_403",
    "n_429",
    "bytes_in",
    "bytes_out",
    "n_sensitive",
    "n_id",
    "n_enum",
    "n_night",
    "n_gap",
    "sum_gap",
    "sumsq_gap",
)


def _rolling(col: str, minutes: int, fn: str = "sum") -> str:
    return (
        f"{fn}({col}) OVER (PARTITION BY client_id ORDER BY window_start "
        f"RANGE BETWEEN INTERVAL {minutes - WINDOW_MINUTES} MINUTES PRECEDING AND CURRENT ROW)"
    )


def _rates(w: str, src: str) -> str:
    n = f"{src}request_count_{w}"
    return ",\n".join(
        [
            f"{n} AS request_count_{w}",
            # response-side rates over the requests the gateway's policy let through: its own
            # refusals say what the policy did, not how the client behaved (a throttled flood
            # must not look like a client with 90% errors to a model trained before the policy)
            *(
                f"coalesce({src}n_{c}_{w} / nullif({src}n_served_{w}, 0), 0) AS rate_{c}_{w}"
                for c in ("4xx", "5xx", "401", "403")
            ),
            f"{src}n_429_{w} / {n} AS rate_429_{w}",
            f"{src}bytes_in_{w} AS bytes_in_{w}",
            f"{src}bytes_out_{w} AS bytes_out_{w}",
            f"{src}n_sensitive_{w} / {n} AS sensitive_share_{w}",
            f"coalesce({src}n_enum_{w} / nullif({src}n_id_{w}, 0), 0) AS enumeration_score_{w}",
            f"{src}n_night_{w} / {n} AS night_share_{w}",
            f"coalesce(sqrt(greatest({src}sumsq_gap_{w} / nullif({src}n_gap_{w}, 0) - pow({src}sum_gap_{w} / nullif({src}n_gap_{w}, 0), 2), 0))"
            f" / nullif({src}sum_gap_{w} / nullif({src}n_gap_{w}, 0), 0), 0) AS burstiness_{w}",
        ]
    )


_PAIR_DIMS = {
    "routes": "http_route",
    "addresses": "client_address",
    "user_agents": "user_agent",
    "networks": "regexp_extract(client_address, '^(\\d+\\.\\d+)\\.', 1)",
}
# a gap (or id step) to an event more than 24 h earlier is no gap: the features of an event
# never depend on how far back the engine happened to look (batch day boundaries, stream state)
_MAX_GAP_MS = 24 * 3600 * 1000


def _client_base_ctes() -> str:
    """Stage 1, events -> per client and window: ``base`` (additive counts, latency quantiles)
    and ``pairs`` (the distinct routes, addresses, user agents, networks of each window).

    An event's gap and id step look at the client's previous event (per route for the id), so
    recomputing a window needs those previous events in ``ev`` too (the stream's carry rows).
    Ties in time are broken by request_id: the result never depends on scan order.
    """
    w = WINDOW_MINUTES
    sensitive = ", ".join(f"'{r}'" for r in SENSITIVE_ROUTES)
    pairs = "\nUNION ALL\n".join(
        f"SELECT DISTINCT client_id, window_start, '{k}' AS dim, {expr} AS v FROM e WHERE {expr} IS NOT NULL"
        for k, expr in _PAIR_DIMS.items()
    )
    return f"""
e AS (
  SELECT *,
         time_bucket(INTERVAL {w} MINUTES, timestamp) AS window_start,
         TRY_CAST(regexp_extract(url_path, '/(\\d+)(/|$)', 1) AS BIGINT) AS path_id,
         epoch_ms(timestamp) - lag(epoch_ms(timestamp)) OVER (PARTITION BY client_id ORDER BY timestamp, request_id) AS gap_all,
         coalesce(ratelimit_decision IN ('throttle', 'block', 'challenge'), FALSE) AS refused
  FROM ev
),
e2 AS (
  SELECT *,
         CASE WHEN gap_all <= {_MAX_GAP_MS} THEN gap_all END AS gap_ms,
         CASE WHEN epoch_ms(timestamp) - lag(epoch_ms(timestamp)) OVER r <= {_MAX_GAP_MS}
              THEN path_id - lag(path_id) OVER r END AS id_step
  FROM e WINDOW r AS (PARTITION BY client_id, http_route ORDER BY timestamp, request_id)
),
base AS (
  SELECT client_id, window_start,
         count(*)::DOUBLE AS request_count,
         sum((NOT refused)::INT)::DOUBLE AS n_served,
         sum((NOT refused AND http_response_status_code BETWEEN 400 AND 499)::INT)::DOUBLE AS n_4xx,
         sum((NOT refused AND http_response_status_code >= 500)::INT)::DOUBLE AS n_5xx,
         sum((NOT refused AND http_response_status_code = 401)::INT)::DOUBLE AS n_401,
         sum((NOT refused AND http_response_status_code = 403)::INT)::DOUBLE AS n_403,
         sum((http_response_status_code = 429)::INT)::DOUBLE AS n_429,
         coalesce(sum(request_bytes), 0)::DOUBLE AS bytes_in,
         coalesce(sum(CASE WHEN NOT refused THEN response_bytes END), 0)::DOUBLE AS bytes_out,
         sum((http_route IN ({sensitive}))::INT)::DOUBLE AS n_sensitive,
         count(path_id)::DOUBLE AS n_id,
         sum((id_step BETWEEN 1 AND 3)::INT)::DOUBLE AS n_enum,
         sum((hour(timestamp) < 6)::INT)::DOUBLE AS n_night,
         count(gap_ms)::DOUBLE AS n_gap,
         coalesce(sum(gap_ms), 0)::DOUBLE AS sum_gap,
         coalesce(sum(gap_ms * gap_ms), 0)::DOUBLE AS sumsq_gap,
         quantile_cont(CASE WHEN NOT refused THEN duration_ms END::DOUBLE, 0.5) AS latency_p50,
         quantile_cont(CASE WHEN NOT refused THEN duration_ms END::DOUBLE, 0.95) AS latency_p95
  FROM e2 GROUP BY client_id, window_start
),
pairs AS ({pairs})"""


def _client_roll_ctes() -> str:
    """Stage 2, ``base`` + ``pairs`` -> rolling 1 h / 24 h aggregates and address sharing."""
    w = WINDOW_MINUTES
    distinct_cols = [
        f"count(DISTINCT v) OVER (PARTITION BY client_id, dim ORDER BY window_start "
        f"RANGE BETWEEN INTERVAL {minutes - w} MINUTES PRECEDING AND CURRENT ROW) AS d_{win}"
        for win, minutes in (("5m", w), ("1h", 60), ("24h", 1440))
    ]
    base_rolls = []
    for win, minutes in (("1h", 60), ("24h", 1440)):
        base_rolls += [f"{_rolling(c, minutes)} AS {c}_{win}" for c in _ADDITIVE]
        base_rolls.append(f"{_rolling('latency_p95', minutes, 'max')} AS latency_p95_{win}")
    distinct_select = ",\n      ".join(
        f"max(d_{win}) FILTER (WHERE dim = '{k}') AS distinct_{k}_{win}"
        for win in ("5m", "1h", "24h")
        for k in _PAIR_DIMS
    )
    return f"""
rolled AS (
  SELECT *, {", ".join(f"{c} AS {c}_5m" for c in _ADDITIVE)}, latency_p95 AS latency_p95_5m,
         {", ".join(base_rolls)}
  FROM base
),
distincts AS (
  SELECT client_id, window_start,
      {distinct_select}
  FROM (SELECT client_id, window_start, dim, {", ".join(distinct_cols)} FROM pairs)
  GROUP BY client_id, window_start
),
addr AS (SELECT DISTINCT client_id, window_start, v AS client_address FROM pairs WHERE dim = 'addresses'),
addr_clients AS (
  SELECT client_address, window_start,
         count(DISTINCT client_id) OVER (PARTITION BY client_address ORDER BY window_start
             RANGE BETWEEN INTERVAL {60 - w} MINUTES PRECEDING AND CURRENT ROW) AS n_clients
  FROM (SELECT DISTINCT client_address, window_start, client_id FROM addr)
),
shared AS (
  SELECT a.client_id, a.window_start, max(c.n_clients) - 1 AS shared_address_degree_1h
  FROM (SELECT client_id, client_address, window_start,
               max(window_start) OVER (PARTITION BY client_id) AS _last FROM addr) a
  JOIN (SELECT client_address, window_start, max(n_clients) AS n_clients FROM addr_clients GROUP BY ALL) c
    ON a.client_address = c.client_address AND a.window_start = c.window_start
  GROUP BY a.client_id, a.window_start
)"""


def _client_select(first_seen: str) -> str:
    w = WINDOW_MINUTES
    return f"""
SELECT r.client_id,
       r.window_start + INTERVAL {w} MINUTES AS event_timestamp,
       {_rates("5m", "r.")},
       {_rates("1h", "r.")},
       {_rates("24h", "r.")},
       r.latency_p50 AS latency_p50_5m, r.latency_p95_5m, r.latency_p95_1h, r.latency_p95_24h,
       {", ".join(f"d.distinct_{k}_{win}::BIGINT AS distinct_{k}_{win}" for win in ("5m", "1h", "24h") for k in _PAIR_DIMS)},
       coalesce(s.shared_address_degree_1h, 0)::BIGINT AS shared_address_degree_1h,
       date_diff('second', least(f.first_seen, r.window_start), r.window_start + INTERVAL {w} MINUTES) / 86400.0 AS client_age_days
FROM rolled r
JOIN distincts d USING (client_id, window_start)
LEFT JOIN shared s USING (client_id, window_start)
LEFT JOIN {first_seen} f USING (client_id)
"""


def client_windows_sql(first_seen: str = "first_seen") -> str:
    """Per client and 5-minute window (with traffic): 5m, rolling 1h and 24h features.

    Reads relation ``ev`` (events, including 24 h of history before the range
    wanted) and ``first_seen`` (client_id, first_seen). Returns every window;
    the caller keeps the range it builds. Both stages in one statement (batch).
    """
    return f"WITH {_client_base_ctes()},\n{_client_roll_ctes()}\n{_client_select(first_seen)}"


def client_base_sql(relation: str) -> str:
    """Stage 1 alone: ``relation`` is ``base`` or ``pairs``, from ``ev`` (the stream keeps these
    per window as state)."""
    if relation not in ("base", "pairs"):
        raise ValueError(f"relation must be base or pairs, not {relation!r}")
    return f"WITH {_client_base_ctes()}\nSELECT * FROM {relation}"


def client_roll_sql(first_seen: str = "first_seen") -> str:
    """Stage 2 alone, from relations ``base`` and ``pairs`` (as stage 1 makes them) and
    ``first_seen``: the same rows ``client_windows_sql`` gives for those windows."""
    return f"WITH {_client_roll_ctes()}\n{_client_select(first_seen)}"


def client_state_compact_sql(relation: str, source: str, since: str, last: str) -> str:
    """Stage-1 rows (``relation`` = base or pairs, read from ``source``) reduced to what stage 2
    needs for windows starting in ``[since, last]`` (SQL timestamp literals), same results.

    Rows in every one of those windows' 24 h frames and in none of their 1 h frames
    (``[last - 24h + 5m, since - 1h + 5m)``) merge into one row per client at the end of that
    span: additive counts summed, the worst p95 kept, distinct values kept once. Rows older
    than every frame go. The stream processor rolls a few open windows over 24 h of state; this
    makes that roughly 15 rows per client instead of 288, without a second feature definition.
    """
    w = WINDOW_MINUTES
    lo = f"({last} - INTERVAL {1440 - w} MINUTES)"
    hi = f"({since} - INTERVAL {60 - w} MINUTES)"
    syn = f"({hi} - INTERVAL {w} MINUTES)"
    oldest = f"({since} - INTERVAL {1440 - w} MINUTES)"
    keep = f"window_start >= {oldest} AND NOT (window_start >= {lo} AND window_start < {hi})"
    mid = f"window_start >= {lo} AND window_start < {hi} AND {syn} >= {lo}"
    if relation == "base":
        sums = ", ".join(f"sum({c}) AS {c}" for c in _ADDITIVE)
        merged = (
            f"SELECT client_id, {syn} AS window_start, {sums}, "
            f"NULL::DOUBLE AS latency_p50, max(latency_p95) AS latency_p95 "
            f"FROM {source} WHERE {mid} GROUP BY client_id"
        )
    elif relation == "pairs":
        merged = (
            f"SELECT DISTINCT client_id, {syn} AS window_start, dim, v FROM {source} WHERE {mid}"
        )
    else:
        raise ValueError(f"relation must be base or pairs, not {relation!r}")
    # when the span is empty (targets spread over ~23 h) nothing merges and every row is kept
    keep_all = f"{syn} < {lo} AND window_start >= {oldest}"
    return f"SELECT * FROM {source} WHERE ({keep}) OR ({keep_all})\nUNION ALL BY NAME\n{merged}"


def route_windows_sql() -> str:
    """Per route (``METHOD template``) and 5-minute window: load features.

    Reads relation ``ev``. Stamped at the window end like the client features.
    """
    w = WINDOW_MINUTES
    return f"""
WITH base AS (
  SELECT http_request_method || ' ' || http_route AS route_id,
         time_bucket(INTERVAL {w} MINUTES, timestamp) AS window_start,
         count(*)::DOUBLE AS n,
         avg((http_response_status_code >= 500)::INT) AS route_error_rate_5m,
         quantile_cont(duration_ms::DOUBLE, 0.95) AS route_latency_p95_5m,
         count(DISTINCT client_id)::BIGINT AS route_distinct_clients_5m
  FROM ev GROUP BY ALL
)
SELECT route_id, window_start + INTERVAL {w} MINUTES AS event_timestamp,
       n AS route_request_count_5m, route_error_rate_5m, route_latency_p95_5m, route_distinct_clients_5m,
       sum(n) OVER (PARTITION BY route_id ORDER BY window_start RANGE BETWEEN INTERVAL {60 - w} MINUTES PRECEDING AND CURRENT ROW) AS route_request_count_1h,
       sum(n) OVER (PARTITION BY route_id ORDER BY window_start RANGE BETWEEN INTERVAL {1440 - w} MINUTES PRECEDING AND CURRENT ROW) AS route_request_count_24h
FROM base
"""
