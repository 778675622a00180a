"""The dashboard's panels: one function per panel, each a thin call to the analytics.

A panel gets a ``PanelContext`` (the dataset's Source, the request's Filters and
parameters) and returns ``(frame, meta)``: the table the page draws or downloads as
CSV, and whatever else a chart needs (curves, summaries, notes). Every number comes
from ``analytics.usage``/``series``/``cohorts``/``stats``/``security``; nothing here
reads events itself. Panels that cannot be computed on the data at hand (too few
consumers for a survival fit, no policy change) answer an empty table and say why in
``meta["error"]``. ``jsonable``/``rows``/``csv_text`` turn the answers into JSON and CSV.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from analytics import cohorts, security, series, stats, usage
from analytics.source import Filters, Source

if TYPE_CHECKING:
    from config.settings import Settings

__all__ = [
    "PANELS",
    "BadParam",
    "PanelContext",
    "PanelSpec",
    "csv_text",
    "jsonable",
    "panel_names",
    "rows",
]

Panel = tuple[pd.DataFrame, dict[str, Any]]
# a policy's effect needs its treatment window and the outcome window 42-56 days on
POLICY_EFFECT_DAYS = 56
LOST_COLUMNS = [
    "client_id", "first_tier", "tier", "region", "device_type", "first_seen", "last_seen",
    "requests", "active_days", "rate_5xx", "refused_share", "throttled",
]  # fmt: skip


class BadParam(ValueError):
    """A request parameter the dashboard cannot use; ``param`` names it."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param


@dataclass
class PanelContext:
    settings: Settings
    src: Source
    filters: Filters
    granularity: str
    params: Callable[[str], list[str]]  # every value of a query parameter
    people: Callable[[], pd.DataFrame]  # cohorts.consumers for these filters, cached

    def one(self, name: str, default: str | None = None) -> str | None:
        values = self.params(name)
        if len(values) > 1:
            raise BadParam(name, f"expected one value, got {len(values)}")
        return values[0] if values else default

    def choice(self, name: str, allowed: Any, default: str | None) -> str | None:
        v = self.one(name, default)
        if v is not None and v not in allowed:
            raise BadParam(name, f"{v!r} is not one of {sorted(allowed)}")
        return v

    def integer(self, name: str, default: int, lo: int = 1, hi: int = 1000) -> int:
        v = self.one(name)
        if v is None:
            return default
        try:
            n = int(v)
        except ValueError:
            raise BadParam(name, f"{v!r} is not a whole number") from None
        if not lo <= n <= hi:
            raise BadParam(name, f"{n} is outside {lo}..{hi}")
        return n


@dataclass(frozen=True)
class PanelSpec:
    fn: Callable[[PanelContext], Panel]
    # False: the answer ignores the filters (cache it per dataset, not per filter)
    filtered: bool = True
    # True: also depends on stores beside the telemetry (policies, registry, monitoring)
    external: bool = False


def _overview(c: PanelContext) -> Panel:
    return usage.overview(c.src, c.filters), {}


def _traffic(c: PanelContext) -> Panel:
    by = c.choice("by", usage.DIMENSIONS, None)
    df = usage.traffic(c.src, c.filters, c.granularity, by=by, top=c.integer("top", 8, hi=50))
    return df, {"granularity": df.attrs.get("granularity"), "by": by}


def _breakdown(c: PanelContext) -> Panel:
    by = c.choice("by", usage.DIMENSIONS, "route")
    assert by is not None
    return usage.breakdown(c.src, c.filters, by, top=c.integer("n", 50)), {"by": by}


def _slo(c: PanelContext) -> Panel:
    df = usage.slo(c.src, c.filters, c.settings.analytics.slo)
    status = df["status"] if "status" in df else pd.Series(dtype=str)
    return df, {
        "breaching": df.loc[status == "breaching", "route"].tolist() if len(df) else [],
        "at_risk": df.loc[status == "at risk", "route"].tolist() if len(df) else [],
    }


def _top_consumers(c: PanelContext) -> Panel:
    return usage.top_consumers(c.src, c.filters, n=c.integer("n", 20)), {}


def _route_consumers(c: PanelContext) -> Panel:
    routes = c.filters.routes
    if len(routes) != 1:
        raise BadParam("route", "route_consumers needs exactly one route")
    return usage.top_consumers(c.src, c.filters, n=c.integer("n", 50)), {"route": routes[0]}


def _consumer_requests(c: PanelContext) -> Panel:
    clients = c.filters.clients
    if len(clients) != 1:
        raise BadParam("client", "consumer_requests needs exactly one client")
    df = usage.consumer_requests(c.src, c.filters, clients[0], limit=c.integer("limit", 200))
    return df, {"client": clients[0]}


def _adoption(c: PanelContext) -> Panel:
    return usage.adoption(c.src, c.filters), {}


def _forecast(c: PanelContext) -> Panel:
    by = c.choice("by", [*usage.DIMENSIONS, "all"], "route")
    horizons = c.settings.analytics.forecast_horizons
    df = series.forecast(c.src, c.filters, by=None if by == "all" else by, horizons=horizons)
    return df, {"by": by, "horizons": horizons}


def _revenue(c: PanelContext) -> Panel:
    a = c.settings.analytics
    return usage.revenue(c.src, c.filters, a.tiers, a.cost), {"priced_tiers": sorted(a.tiers)}


def _anomalies(c: PanelContext) -> Panel:
    metric = c.choice("metric", ("requests", "error_rate", "p95_ms"), "requests")
    assert metric is not None
    threshold = c.settings.analytics.anomaly_threshold
    df = series.anomalies(c.src, c.filters, metric=metric, by="route", threshold=threshold)
    meta = {"metric": metric, "threshold": threshold, "seasonality": df.attrs.get("seasonality")}
    return df.sort_values("hour", ascending=False) if len(df) else df, meta


def _security_decisions(c: PanelContext) -> Panel:
    df = security.decisions_by_policy(c.src, c.filters, c.granularity)
    totals = df.groupby(["policy_version", "decision"])["requests"].sum().reset_index()
    return df, {
        "granularity": df.attrs.get("granularity"),
        "totals": totals.to_dict(orient="records"),
    }


def _security_models(c: PanelContext) -> Panel:
    df = security.model_flags(c.src, c.filters)
    clients = security.flagged_clients(c.src, c.filters, n=c.integer("n", 20))
    return df, {"threshold": security.FLAG_SCORE, "clients": clients}


def _security_scan(c: PanelContext) -> Panel:
    df = security.scan_verdicts(c.src, c.filters)
    note = (
        None
        if len(df)
        else "no scanned requests in this range (no payload champion exported yet, or"
        " gateway.scanning off)"
    )
    return df, {"note": note, "clients": security.scan_clients(c.src, c.filters)}


def _security_refused(c: PanelContext) -> Panel:
    return security.refused_by_tier_region(c.src, c.filters), {}


def _policies(c: PanelContext) -> Panel:
    history, note = security.policy_history(c.settings)
    seen = security.policy_versions_seen(c.src, c.filters)
    return history, {"note": note, "observed": seen}


def _models(c: PanelContext) -> Panel:
    findings, note = security.drift_bias_findings(c.settings)
    return findings, {"note": note, "registry": security.champion_info(c.settings)}


def _people(c: PanelContext) -> pd.DataFrame:
    return c.people()


def _retention(c: PanelContext) -> Panel:
    by = c.choice("by", cohorts.COHORT_ATTRIBUTES, "first_week")
    assert by is not None
    people = _people(c)
    r = cohorts.retention(
        c.src, c.filters, by=by, churn_after_days=c.settings.analytics.churn_after_days,
        people=people,
    )  # fmt: skip
    table: pd.DataFrame = r["table"]
    if table.empty:
        return pd.DataFrame(columns=["cohort", "size"]), {"by": by, "milestones": {}}
    out = table.copy()
    out.columns = [str(k) for k in out.columns]
    out.insert(0, "size", r["sizes"].reindex(out.index).to_numpy())
    out.insert(0, "cohort", out.index)
    return out.reset_index(drop=True), {"by": by, "milestones": r["milestones"]}


def _survival(c: PanelContext) -> Panel:
    by = c.choice("by", cohorts.COHORT_ATTRIBUTES, "first_tier")
    people = _people(c)
    if len(people) < 2:
        return pd.DataFrame(), {"by": by, "error": "fewer than two consumers in the range"}
    km = cohorts.kaplan_meier(people, by=by)
    rows, curves = [], {}
    for name, g in km["groups"].items():
        curves[name] = {k: g[k] for k in ("timeline", "survival", "lower", "upper")}
        rows.append({"group": name, **{k: v for k, v in g.items() if k not in curves[name]}})
    return pd.DataFrame(rows), {"by": by, "curves": curves, "logrank": km.get("logrank")}


def _cox(c: PanelContext) -> Panel:
    people = _people(c)
    try:
        res = cohorts.cox(people)
    except Exception as exc:  # lifelines refuses tiny or degenerate samples
        return pd.DataFrame(), {
            "error": f"cannot fit a Cox model on {len(people)} consumers: {exc}"
        }
    return res.pop("table"), res


def _funnel(c: PanelContext) -> Panel:
    steps = c.settings.analytics.funnel
    return cohorts.funnel(c.src, c.filters, steps), {"steps": [s.name for s in steps]}


def _compare(c: PanelContext) -> Panel:
    by = c.choice("by", cohorts.COHORT_ATTRIBUTES, "first_tier")
    assert by is not None
    people = _people(c)
    if people.empty:
        return pd.DataFrame(), {"by": by, "error": "no consumers first seen in the range"}
    return stats.compare(people, by), {"by": by}


def _lost_consumers(c: PanelContext) -> Panel:
    people = _people(c)
    days = c.settings.analytics.churn_after_days
    if people.empty:
        return pd.DataFrame(columns=LOST_COLUMNS), {"churned": 0, "consumers": 0}
    lost = people[people["churned"]].sort_values("requests", ascending=False)
    meta = {
        "churned": len(lost),
        "consumers": len(people),
        "churn_share": len(lost) / len(people),
        "lost_requests": int(lost["requests"].sum()),
        "churn_after_days": days,
    }
    return lost[LOST_COLUMNS].head(c.integer("n", 20)).reset_index(drop=True), meta


def _days_after(at: pd.Timestamp, end: pd.Timestamp) -> int:
    """Whole days of data from the day of ``at`` to the day of the last event."""
    return (end.floor("D") + timedelta(days=1) - at.floor("D")).days


def _choose_policy(c: PanelContext) -> tuple[str, pd.Timestamp, str | None]:
    seen, end = security.policy_first_seen(c.src)
    versions = dict(seen)
    asked = c.one("policy")
    if asked is not None and asked not in versions:
        raise BadParam("policy", f"{asked!r} is not one of {sorted(versions)}")
    if not seen or end is None:
        raise LookupError("no policy version appears in the telemetry")
    if asked is None:
        # the newest change that can be judged; else the newest (with a warning)
        roomy = [v for v, t in seen if _days_after(t, end) >= POLICY_EFFECT_DAYS]
        asked = roomy[-1] if roomy else seen[-1][0]
    at = versions[asked]
    days = _days_after(at, end)
    warning = None
    if days < POLICY_EFFECT_DAYS:
        warning = (
            f"the data covers {days} days after {asked} took effect; the outcome window "
            f"needs {POLICY_EFFECT_DAYS}, so retention is understated"
        )
    return asked, at, warning


def _policy_effect(c: PanelContext) -> Panel:
    try:
        policy, at, warning = _choose_policy(c)
    except LookupError as exc:
        return pd.DataFrame(), {"error": str(exc)}
    meta: dict[str, Any] = {"policy": policy, "change_at": at, "warning": warning}
    frame = stats.policy_cohort(c.src, at.to_pydatetime())
    try:
        if frame.empty:
            raise ValueError(
                "no consumer is in the data both in the 14 days before it took effect and "
                "7-14 days after (the estimate also needs 56 days after it)"
            )
        res = stats.propensity_match(frame)
    except ValueError as exc:
        meta["error"] = f"cannot estimate the effect of policy version {policy}: {exc}"
        return pd.DataFrame(), meta
    for k in ("scores", "matched"):
        res.pop(k)
    balance = res.pop("balance")
    meta.update(res)
    meta["sentence"] = _effect_sentence(policy, at, res)
    try:  # the same question over every consumer's whole life: a time-varying Cox model
        hz = cohorts.exposure_hazard(c.people())
        hz.pop("table")
        meta["throttle_hazard"] = hz
        meta["sentence"] += (
            f" Over all consumers, the churn hazard after a first refusal is "
            f"x{hz['hazard_ratio']:.2f} (95 % CI {hz['lower_95']:.2f} to {hz['upper_95']:.2f}; "
            f"time-varying Cox, {hz['exposed']:,} exposed)."
        )
    except (ValueError, ArithmeticError, KeyError) as exc:
        meta["throttle_hazard"] = {"error": str(exc)}
    return balance, meta


def _effect_sentence(policy: str, at: pd.Timestamp, r: dict[str, Any]) -> str:
    att, lo, hi = r["att"], r["ci_low"], r["ci_high"]
    if lo > 0 or hi < 0:
        verdict = (
            "Yes: throttling under it cost retention."
            if att < 0
            else "No: throttled consumers were retained better than their matches."
        )
    else:
        verdict = "Not shown: the interval includes no effect."
    more_less = "less" if att < 0 else "more"
    return (
        f"{verdict} Consumers throttled after {policy} took effect ({at.date()}) were retained "
        f"{abs(att) * 100:.1f} points {more_less} often than matched similar consumers "
        f"(ATT {att * 100:+.1f} points, 95 % CI {lo * 100:+.1f} to {hi * 100:+.1f}; "
        f"{r['n_matched']} matched pairs; naive difference {r['naive_difference'] * 100:+.1f})."
    )


def jsonable(v: Any) -> Any:
    """``v`` as plain JSON values: ISO timestamps, NaN/NaT as null, numpy as Python."""
    if v is None or v is pd.NaT:
        return None
    if isinstance(v, pd.DataFrame):
        return {"columns": [str(c) for c in v.columns], "rows": rows(v)}
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, np.ndarray, pd.Series)):
        return [jsonable(x) for x in v]
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return f if math.isfinite(f) else None
    if isinstance(v, datetime):  # pd.Timestamp too
        return (v if v.tzinfo else v.replace(tzinfo=UTC)).isoformat()
    if isinstance(v, date):
        return v.isoformat()
    return v if isinstance(v, str) else str(v)


def rows(df: pd.DataFrame) -> list[list[Any]]:
    return [[jsonable(x) for x in row] for row in df.itertuples(index=False, name=None)]


def _csv_cell(v: Any) -> Any:
    return "" if v is None else json.dumps(v) if isinstance(v, (list, dict)) else v


def csv_text(columns: list[str], body_rows: list[list[Any]]) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(columns)
    w.writerows([_csv_cell(v) for v in row] for row in body_rows)
    return out.getvalue()


PANELS: dict[str, PanelSpec] = {
    "overview": PanelSpec(_overview),
    "traffic": PanelSpec(_traffic),
    "breakdown": PanelSpec(_breakdown),
    "slo": PanelSpec(_slo),
    "top_consumers": PanelSpec(_top_consumers),
    "route_consumers": PanelSpec(_route_consumers),
    "consumer_requests": PanelSpec(_consumer_requests),
    "adoption": PanelSpec(_adoption),
    "forecast": PanelSpec(_forecast),
    "revenue": PanelSpec(_revenue),
    "anomalies": PanelSpec(_anomalies),
    "security_decisions": PanelSpec(_security_decisions),
    "security_models": PanelSpec(_security_models),
    "security_refused": PanelSpec(_security_refused),
    "security_scan": PanelSpec(_security_scan),
    "policies": PanelSpec(_policies, external=True),
    "models": PanelSpec(_models, filtered=False, external=True),
    "retention": PanelSpec(_retention),
    "survival": PanelSpec(_survival),
    "cox": PanelSpec(_cox),
    "funnel": PanelSpec(_funnel),
    "compare": PanelSpec(_compare),
    "lost_consumers": PanelSpec(_lost_consumers),
    "policy_effect": PanelSpec(_policy_effect, filtered=False),
}


def panel_names() -> list[str]:
    return list(PANELS)
