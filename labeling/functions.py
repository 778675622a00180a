"""Labelling functions: weak signals that vote on client windows.

A client window is a client's five minutes of traffic (the same grid as the labels table:
``event_timestamp`` = the window's start). Its columns (``window_columns``) are the window
features the feature build computed (``features/windows.py``: the window's own 5 m, 1 h and
24 h aggregates, ending with the window) plus a few read straight from the telemetry:

- ``n_401_5m``: failed authentications in the window;
- ``automation_share_5m``: share of requests from script or HTTP-library user agents
  (``labeling.automation_agents``);
- ``canary_hits_5m``: requests to a canary route (``labeling.canary_routes``);
- ``scan_attacks_5m``: requests the payload scanner labelled an attack;
- ``network_failing_clients_5m``: the most clients failing a login from one /16 network the
  client used in the window;
- ``tier``, ``tier_limit_per_minute``: the client's tier (consumers table, else the
  telemetry's) and its static limit;
- ``anomaly_score``: the day-one anomaly model's score of the window, when one was given.

A function is data (``labeling.functions`` in gatewise.yaml: a DuckDB boolean expression and
the vote it casts) or Python (``labeling.module``: ``lf_<name>(windows) -> votes``). Each
votes 1 (abusive), 0 (legitimate) or -1 (abstain) per window; a missing value abstains.

    windows = window_table(settings, since, until)
    votes = apply_functions(settings, windows)        # DataFrame: one column per function
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from fnmatch import translate
from typing import Any

import numpy as np
import pandas as pd

from config.settings import Settings

__all__ = [
    "ABSTAIN",
    "FunctionSpec",
    "apply_functions",
    "function_specs",
    "window_columns",
    "window_table",
]

ABSTAIN = -1
_VOTE = {"abusive": 1, "legitimate": 0}


@dataclass(frozen=True)
class FunctionSpec:
    name: str
    vote: int  # the vote a declared function casts (1 or 0); -2 for Python functions
    where: str | None  # the declared predicate, None for Python functions
    description: str
    source: str  # "config" | "module"


def function_specs(settings: Settings) -> list[FunctionSpec]:
    cfg = settings.labeling
    out = [
        FunctionSpec(f.name, _VOTE[f.vote], f.where, f.description, "config") for f in cfg.functions
    ]
    for name, fn in _module_functions(settings).items():
        out.append(FunctionSpec(name, -2, None, (fn.__doc__ or "").strip(), "module"))
    return out


def _module_functions(settings: Settings) -> dict[str, Any]:
    mod = settings.labeling.module
    if not mod:
        return {}
    try:
        m = importlib.import_module(mod)
    except ImportError as exc:
        raise ValueError(f"labeling.module: cannot import {mod!r}: {exc}") from None
    fns = {k[3:]: v for k, v in vars(m).items() if k.startswith("lf_") and callable(v)}
    if not fns:
        raise ValueError(f"labeling.module: {mod!r} defines no lf_<name> functions")
    return fns


def _glob_regex(patterns: list[str]) -> str:
    # fnmatch's translation is a Python regex; its (?s:...)\Z wrapper becomes ^...$ for DuckDB
    parts = [translate(p).removeprefix("(?s:").removesuffix(")\\Z") for p in patterns]
    return "^(" + "|".join(parts) + ")$" if parts else "^$a"  # "$a": matches nothing


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def window_table(
    settings: Settings,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    *,
    clients: list[str] | None = None,
    anomaly_scores: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Every client window with traffic in ``[since, until)`` (default: all the features
    cover) with the columns the functions read (module docstring). ``anomaly_scores``:
    (client_id, event_timestamp = window start, score)."""
    import duckdb

    from features.windows import WINDOW_MINUTES
    from telemetry.store import TelemetryStore, as_utc

    since, until = as_utc(since, "since"), as_utc(until, "until")
    feats_dir = settings.features_dir / "client_windows"
    if not any(feats_dir.glob("*/*.parquet")):
        raise LookupError(f"no window features in {feats_dir}: run `gatewise features build`")
    store = TelemetryStore(settings.telemetry_dir)
    if store.is_empty():
        raise LookupError(f"no telemetry in {settings.telemetry_dir}")
    w = WINDOW_MINUTES
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    cond = []
    if since is not None:
        cond.append(f"event_timestamp > TIMESTAMPTZ '{since.isoformat()}'")
    if until is not None:
        cond.append(
            f"event_timestamp <= TIMESTAMPTZ '{(until + timedelta(minutes=w)).isoformat()}'"
        )
    if clients is not None:
        import pyarrow as pa

        con.register("only", pa.table({"client_id": pa.array(sorted(set(clients)), pa.string())}))
        cond.append("client_id IN (SELECT client_id FROM only)")
    where = f"WHERE {' AND '.join(cond)}" if cond else ""
    con.execute(
        f"""CREATE TEMP TABLE f AS
            SELECT * EXCLUDE (event_timestamp),
                   event_timestamp - INTERVAL {w} MINUTES AS event_timestamp
            FROM read_parquet('{feats_dir.as_posix()}/*/*.parquet', hive_partitioning = true)
            {where}"""
    )
    for c in [c for c in con.execute("DESCRIBE f").df()["column_name"] if c == "date"]:
        con.execute(f"ALTER TABLE f DROP COLUMN {c}")
    lo = con.execute("SELECT min(event_timestamp), max(event_timestamp) FROM f").fetchone()
    if lo is None or lo[0] is None:
        return con.execute("SELECT * FROM f").df()
    first, last = pd.Timestamp(lo[0]), pd.Timestamp(lo[1]) + pd.Timedelta(minutes=w)
    cfg = settings.labeling
    step = w * 60_000_000
    con.execute(
        f"""CREATE TEMP TABLE x AS
        WITH ev AS (
          SELECT client_id, http_response_status_code AS status, http_route, url_path,
                 user_agent, scan_label, client_address,
                 make_timestamptz((epoch_us(timestamp) // {step}) * {step}) AS event_timestamp,
                 regexp_extract(client_address, '^(\\d+\\.\\d+\\.\\d+)\\.', 1) AS net
          FROM ({store.relation_sql(first.to_pydatetime(), last.to_pydatetime())})
        ),
        fails AS (
          SELECT net, event_timestamp, count(DISTINCT client_id) AS n
          FROM ev WHERE status = 401 AND http_route = '/v1/auth/login' AND net <> ''
          GROUP BY ALL
        ),
        per_net AS (
          SELECT DISTINCT e.client_id, e.event_timestamp, f.n
          FROM ev e JOIN fails f USING (net, event_timestamp)
        )
        SELECT client_id, event_timestamp,
               sum((status = 401)::INT)::DOUBLE AS n_401_5m,
               avg(regexp_matches(coalesce(user_agent, ''), {_sql_str(cfg.automation_agents)})::INT)
                   AS automation_share_5m,
               sum(regexp_matches(coalesce(url_path, ''), {_sql_str(_glob_regex(cfg.canary_routes))})::INT)::DOUBLE
                   AS canary_hits_5m,
               sum((scan_label IS NOT NULL AND scan_label NOT IN ('benign', 'unavailable', 'unscanned'))::INT)::DOUBLE
                   AS scan_attacks_5m,
               coalesce(max(p.n), 0)::DOUBLE AS network_failing_clients_5m
        FROM ev LEFT JOIN (SELECT client_id, event_timestamp, max(n) AS n FROM per_net GROUP BY ALL) p
          USING (client_id, event_timestamp)
        GROUP BY client_id, event_timestamp"""
    )
    tiers = _tiers(settings, con, store.relation_sql(first.to_pydatetime(), last.to_pydatetime()))
    con.register("tiers", tiers)
    limits = pd.DataFrame(
        {
            "tier": list(settings.static_limits_per_minute),
            "tier_limit_per_minute": [float(v) for v in settings.static_limits_per_minute.values()],
        }
    )
    con.register("limits", limits)
    default_limit = float(min(settings.static_limits_per_minute.values()))
    df = con.execute(
        f"""SELECT f.*, coalesce(x.n_401_5m, 0) AS n_401_5m,
                   coalesce(x.automation_share_5m, 0) AS automation_share_5m,
                   coalesce(x.canary_hits_5m, 0) AS canary_hits_5m,
                   coalesce(x.scan_attacks_5m, 0) AS scan_attacks_5m,
                   coalesce(x.network_failing_clients_5m, 0) AS network_failing_clients_5m,
                   coalesce(t.tier, '(unknown)') AS tier,
                   coalesce(l.tier_limit_per_minute, {default_limit}) AS tier_limit_per_minute
            FROM f LEFT JOIN x USING (client_id, event_timestamp)
            LEFT JOIN tiers t USING (client_id)
            LEFT JOIN limits l ON l.tier = t.tier
            ORDER BY event_timestamp, client_id"""
    ).df()
    df["event_timestamp"] = pd.to_datetime(df["event_timestamp"], utc=True)
    df["anomaly_score"] = np.nan
    if anomaly_scores is not None and len(anomaly_scores):
        a = anomaly_scores[["client_id", "event_timestamp", "score"]].copy()
        a["event_timestamp"] = pd.to_datetime(a["event_timestamp"], utc=True)
        df = df.drop(columns="anomaly_score").merge(
            a.rename(columns={"score": "anomaly_score"}),
            on=["client_id", "event_timestamp"],
            how="left",
        )
    return df


def _tiers(settings: Settings, con: Any, relation: str) -> pd.DataFrame:
    """client_id -> tier: the consumers table where it has one, else the telemetry's most
    frequent tier of the client in the range."""
    from_events = con.execute(
        f"SELECT client_id, mode(tier) AS tier FROM ({relation}) GROUP BY client_id"
    ).df()
    if settings.consumers_path.exists():
        t = pd.read_parquet(settings.consumers_path, columns=["client_id", "tier"])
        t = t[t["tier"].notna()]
        from_events = from_events[~from_events["client_id"].isin(t["client_id"])]
        return pd.concat([t, from_events], ignore_index=True)
    return from_events


def window_columns(windows: pd.DataFrame) -> list[str]:
    return [c for c in windows.columns if c not in ("client_id", "event_timestamp")]


def apply_functions(settings: Settings, windows: pd.DataFrame) -> pd.DataFrame:
    """One column per function: 1 abusive, 0 legitimate, -1 abstain, per window (row).
    Raises ``ValueError`` naming the function (and its config path) that does not run."""
    import duckdb

    specs = function_specs(settings)
    con = duckdb.connect()
    con.register("w", windows)
    out = pd.DataFrame(index=windows.index)
    for i, spec in enumerate(s for s in specs if s.source == "config"):
        sql = (
            f"SELECT CASE WHEN coalesce(({spec.where}), FALSE) THEN {spec.vote} ELSE {ABSTAIN} END "
            "AS v FROM w"
        )
        try:
            v = con.execute(sql).fetchnumpy()["v"]
        except duckdb.Error as exc:
            msg = str(exc).splitlines()[0]
            raise ValueError(
                f"labeling.functions[{i}] ({spec.name}): `{spec.where}` does not run: {msg}"
            ) from None
        out[spec.name] = np.asarray(v, dtype=np.int8)
    for name, fn in _module_functions(settings).items():
        v = np.asarray(fn(windows))
        if v.shape != (len(windows),) or not np.isin(v, (-1, 0, 1)).all():
            raise ValueError(
                f"labeling.module: lf_{name} must return one vote (1, 0 or -1) per window"
            )
        out[name] = v.astype(np.int8)
    return out
