"""The dashboard's security and models/policies questions.

SQL over the telemetry (pushed down to DuckDB like ``analytics.usage``): rate-limit
decisions per policy version over time, clients the model flagged, refusals by tier
and region, and when each policy version was first seen. Loaders for what lives
beside the telemetry: the policy store's history, the model registry's champions and
the monitoring history of drift and bias findings. Each loader tolerates a missing
store (an empty answer plus a note), because a fresh install has none of them.

``decisions_by_policy(src, Filters(), "day")``
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import pandas as pd

from analytics.source import Filters, Source, bucket_sql
from analytics.usage import auto_granularity

if TYPE_CHECKING:
    from config.settings import Settings

__all__ = [
    "FLAG_SCORE",
    "REFUSED",
    "champion_info",
    "decisions_by_policy",
    "drift_bias_findings",
    "flagged_clients",
    "model_flags",
    "policy_first_seen",
    "policy_history",
    "policy_versions_seen",
    "refused_by_tier_region",
    "scan_clients",
    "scan_verdicts",
]

log = logging.getLogger(__name__)

REFUSED = "ratelimit_decision IN ('throttle', 'block', 'challenge')"
FLAG_SCORE = 0.5  # a client scored at or above this counts as flagged by the model


def decisions_by_policy(src: Source, f: Filters, granularity: str = "auto") -> pd.DataFrame:
    """Requests per time bucket, policy version and rate-limit decision (long format)."""
    f = src.resolve(f)
    gran = auto_granularity(f) if granularity == "auto" else granularity
    df = src.df(
        f"""SELECT {bucket_sql(gran)} AS bucket,
               coalesce(CAST(policy_version AS VARCHAR), '(none)') AS policy_version,
               coalesce(ratelimit_decision, '(none)') AS decision, count(*) AS requests
            FROM ev GROUP BY ALL ORDER BY bucket, policy_version, decision""",
        f,
    )
    df.attrs["granularity"] = gran
    return df


def model_flags(src: Source, f: Filters, threshold: float = FLAG_SCORE) -> pd.DataFrame:
    """Per model version: scored requests and clients, and how many the model flagged."""
    df = src.df(
        """SELECT coalesce(model_version, '(none)') AS model_version,
               count(*) AS scored_requests, count(DISTINCT client_id) AS clients,
               count_if(model_score >= ?)::BIGINT AS flagged_requests,
               count(DISTINCT client_id) FILTER (WHERE model_score >= ?) AS flagged_clients,
               avg(model_score) AS mean_score, min(timestamp) AS first, max(timestamp) AS last
            FROM ev WHERE model_score IS NOT NULL GROUP BY 1 ORDER BY last DESC""",
        f,
        params=[threshold, threshold],
    )
    df["flagged_client_share"] = df["flagged_clients"] / df["clients"].where(df["clients"] > 0)
    return df


def flagged_clients(
    src: Source, f: Filters, threshold: float = FLAG_SCORE, n: int = 20
) -> pd.DataFrame:
    """The ``n`` clients with most flagged requests, with what was done to them."""
    return src.df(
        f"""SELECT client_id, arg_max(tier, timestamp) AS tier,
               arg_max(region, timestamp) AS region,
               arg_max(model_version, timestamp) AS model_version,
               count_if(model_score >= ?)::BIGINT AS flagged_requests,
               max(model_score) AS max_score, avg(({REFUSED})::DOUBLE) AS refused_share,
               max(timestamp) AS last
            FROM ev WHERE model_score IS NOT NULL GROUP BY client_id
            HAVING count_if(model_score >= ?) > 0
            ORDER BY flagged_requests DESC, client_id LIMIT {int(n)}""",
        f,
        params=[threshold, threshold],
    )


def scan_verdicts(src: Source, f: Filters) -> pd.DataFrame:
    """The payload scanner's verdicts (``docs/scanning.md``): requests per label and band
    action, with the clients and routes they came from and their scores."""
    return src.df(
        """SELECT * FROM (
              SELECT scan_label AS label, coalesce(scan_action, 'none') AS action,
                 count(*) AS requests, count(DISTINCT client_id) AS clients,
                 count(DISTINCT http_route) AS routes, max(scan_score) AS max_score,
                 avg(scan_score) AS mean_score, max(timestamp) AS last
              FROM ev WHERE scan_label IS NOT NULL GROUP BY ALL)
            ORDER BY label = 'benign', requests DESC, label, action""",
        f,
    )


def scan_clients(src: Source, f: Filters, n: int = 20) -> pd.DataFrame:
    """The ``n`` clients with most requests the scanner called attacks, and which kinds."""
    return src.df(
        f"""SELECT client_id, arg_max(tier, timestamp) AS tier,
               count(*) AS attack_requests, string_agg(DISTINCT scan_label, ', ') AS classes,
               max(scan_score) AS max_score,
               count_if(ratelimit_decision IN ('scan_block', 'scan_challenge'))::BIGINT AS refused,
               max(timestamp) AS last
            FROM ev WHERE scan_label NOT IN ('benign', 'unavailable', 'unscanned') GROUP BY client_id
            ORDER BY attack_requests DESC, client_id LIMIT {int(n)}""",
        f,
    )


def refused_by_tier_region(src: Source, f: Filters) -> pd.DataFrame:
    """Refused requests (throttled, blocked, challenged) per tier and region."""
    df = src.df(
        f"""SELECT coalesce(tier, '(none)') AS tier, coalesce(region, '(none)') AS region,
               count(*) AS requests, count_if({REFUSED})::BIGINT AS refused,
               count_if(ratelimit_decision = 'throttle')::BIGINT AS throttled,
               count_if(ratelimit_decision = 'block')::BIGINT AS blocked,
               count_if(ratelimit_decision = 'challenge')::BIGINT AS challenged,
               count(DISTINCT client_id) FILTER (WHERE {REFUSED}) AS refused_clients
            FROM ev GROUP BY ALL ORDER BY refused DESC, requests DESC""",
        f,
    )
    df["refused_share"] = df["refused"] / df["requests"].where(df["requests"] > 0)
    return df


def policy_versions_seen(src: Source, f: Filters) -> pd.DataFrame:
    """Each policy version in the telemetry: first/last request, requests, refusals."""
    df = src.df(
        f"""SELECT CAST(policy_version AS VARCHAR) AS policy_version,
               min(timestamp) AS first_seen, max(timestamp) AS last_seen,
               count(*) AS requests, avg(({REFUSED})::DOUBLE) AS refused_share,
               count(DISTINCT client_id) AS consumers
            FROM ev WHERE policy_version IS NOT NULL GROUP BY 1 ORDER BY first_seen""",
        f,
    )
    return df


def policy_first_seen(src: Source) -> tuple[list[tuple[str, pd.Timestamp]], pd.Timestamp | None]:
    """Every policy version with its first appearance (oldest first) and the data's last
    event, over all the telemetry: a policy's effect is judged on everyone."""
    rows = src.rows(
        """SELECT CAST(policy_version AS VARCHAR), min(timestamp),
               (SELECT max(timestamp) FROM all_ev)
           FROM all_ev WHERE policy_version IS NOT NULL GROUP BY 1 ORDER BY 2""",
        Filters(),
        time=False,
    )
    if not rows:
        end = src.rows("SELECT max(timestamp) FROM all_ev", Filters(), time=False)[0][0]
        return [], (None if end is None else _utc(end))
    return [(str(v), _utc(t)) for v, t, _ in rows], _utc(rows[0][2])


def _utc(v: Any) -> pd.Timestamp:
    ts = pd.Timestamp(v)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def policy_history(settings: Settings) -> tuple[pd.DataFrame, str | None]:
    """The policy store's published versions, newest first, and a note when there is
    no store (or it cannot be read)."""
    cols = ["version", "created_at", "author", "reason", "tiers", "routes", "overrides"]
    try:
        from gateway.policy_store import read_history

        history = read_history(settings.policy_dir)
    except Exception as exc:  # a broken store must not take the page down
        log.warning("policy history unreadable: %s", exc)
        return pd.DataFrame(columns=cols), f"policy store unreadable: {exc}"
    if not history:
        return pd.DataFrame(columns=cols), f"no published policies in {settings.policy_dir}"
    df = pd.DataFrame(history)
    if "targets" in df:
        df["targets"] = [
            ", ".join(f"{k}: {v}" for k, v in t.items()) if isinstance(t, dict) else None
            for t in df["targets"]
        ]
    if "version" in df:
        df = df.sort_values("version", ascending=False, na_position="last")
    return df.reset_index(drop=True), None


def champion_info(settings: Settings) -> dict[str, Any]:
    """Champion and challenger of each target from the MLflow registry, or
    ``{"status": "no registry", ...}`` when there is none or it cannot be reached."""
    if not (settings.data_dir / "mlflow.db").exists() and not settings.tracking.mlflow_uri:
        return {"status": "no registry", "note": f"no {settings.data_dir / 'mlflow.db'}"}
    try:
        from models.tracking import version_info
    except Exception as exc:
        return {"status": "no registry", "note": f"registry unavailable: {exc}"}
    targets: dict[str, Any] = {}
    for name in settings.targets:
        try:
            targets[name] = version_info(settings, name)
        except Exception as exc:  # one unreachable target: say so, keep the others
            targets[name] = {"error": str(exc)}
    if all("error" in t for t in targets.values()):
        return {"status": "no registry", "note": "the registry could not be read", "targets": {}}
    return {"status": "ok", "targets": targets}


def drift_bias_findings(settings: Settings, limit: int = 500) -> tuple[pd.DataFrame, str | None]:
    """The monitoring history's drift and bias rows, newest first (``limit`` rows), and
    a note when there is none."""
    root = settings.data_dir / "monitoring" / "history"
    try:
        from monitoring.record import read_history

        table = read_history(root)
    except Exception as exc:
        log.warning("monitoring history unreadable: %s", exc)
        return pd.DataFrame(), f"monitoring history unreadable: {exc}"
    if table.num_rows == 0:
        return table.to_pandas(), f"no drift or bias checks recorded in {root}"
    df = table.to_pandas().iloc[::-1].head(limit).reset_index(drop=True)
    return df, None
