"""Replay recorded telemetry through the decision core in event time.

Days of traffic take seconds: each event is judged at its own timestamp by
the same ``DecisionCore`` the live gateway uses (in-memory limiter, the
policy under test). Requests the gateway refused before the decision
(authentication, authorization, unknown route) keep their recorded outcome.
With labels, the report says how many abusive requests the policy would have
stopped and how many legitimate ones it would have harmed, overall and per
tier, region and device type; what its shadow rules would have done enforced (replayed as
enforcement, not guessed from the shadow labels); and per model rule (score band or
override), what it stopped beyond the static limits.

    report = backtest(policy, Path(".gatewise/telemetry"), labels=Path(".gatewise/labels"))
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from gateway.auth import Principal
from gateway.decision import DecisionCore
from gateway.policy import Policy
from gateway.ratelimit import MemoryLimiter

__all__ = [
    "BacktestReport",
    "as_enforced",
    "backtest",
    "scores_for_requests",
    "without_model",
]

_PRE_DECISION = {"no_route", "scoring_unavailable"}
_COLS = (
    "request_id, timestamp, client_id, http_request_method, http_route, auth_result, "
    "ratelimit_decision, model_score, tier, region, device_type"
)


@dataclass
class BacktestReport:
    policy_version: int
    events: int
    seconds: float
    # request_id, timestamp, client_id, ..., model_score; action, decision, band (as judged);
    # would_action/_decision/_band (shadow rules enforced); static_* (no model action)
    decisions: pd.DataFrame
    summary: pd.DataFrame  # action → requests, share
    by_group: pd.DataFrame = field(default_factory=pd.DataFrame)  # with labels
    outcome: dict[str, Any] = field(default_factory=dict)  # with labels
    bands: pd.DataFrame = field(default_factory=pd.DataFrame)  # with labels: per model rule

    @property
    def events_per_second(self) -> float:
        return self.events / max(self.seconds, 1e-9)


def _read(
    telemetry: Path,
    start: datetime | str | None,
    end: datetime | str | None,
    clients: list[str] | None = None,
) -> pd.DataFrame:
    import duckdb

    from telemetry.store import TelemetryStore, as_utc

    start, end = as_utc(start, "start"), as_utc(end, "end")
    where = []
    if telemetry.is_dir():  # the store: its own range relation reads only the hours needed
        src = f"({TelemetryStore(telemetry).relation_sql(start, end)})"
    else:
        src = (
            f"read_json_auto('{telemetry.as_posix()}')"
            if telemetry.suffix in (".jsonl", ".json")
            else f"read_parquet('{telemetry.as_posix()}')"
        )
        if start:
            where.append(f"timestamp >= TIMESTAMPTZ '{start.isoformat()}'")
        if end:
            where.append(f"timestamp < TIMESTAMPTZ '{end.isoformat()}'")
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    if clients is not None:
        import pyarrow as pa

        con.register(
            "only_clients", pa.table({"client_id": pa.array(sorted(set(clients)), pa.string())})
        )
        where.append("client_id IN (SELECT client_id FROM only_clients)")
    w = f"WHERE {' AND '.join(where)}" if where else ""
    return con.execute(f"SELECT {_COLS} FROM {src} {w} ORDER BY timestamp, request_id").df()


def _labels(df: pd.DataFrame, labels: Path, window_minutes: int) -> pd.Series:
    """Per request: 1 when its client's window is labelled abusive (missing windows: 0). From
    the label store, the label that counts per window (``LabelStore.resolve``)."""
    from labeling.store import LabelStore

    if labels.is_dir():
        store = LabelStore(labels)
        lab = store.resolve(store.read()).to_pandas()
    else:
        lab = pd.read_parquet(labels) if labels.suffix == ".parquet" else pd.read_csv(labels)
    lab["event_timestamp"] = pd.to_datetime(lab["event_timestamp"], utc=True)
    key = pd.to_datetime(df["timestamp"], utc=True).dt.floor(f"{window_minutes}min")
    m = lab.groupby(["client_id", "event_timestamp"])["label"].max()
    idx = pd.MultiIndex.from_arrays([df["client_id"], key])
    return pd.Series(m.reindex(idx).fillna(0).astype(int).to_numpy(), index=df.index)


def scores_for_requests(
    requests: pd.DataFrame, scores: pd.DataFrame, window_minutes: int
) -> pd.Series:
    """Each request's score: its client's window score (NaN where there is none)."""
    key = pd.to_datetime(requests["timestamp"], utc=True).dt.floor(f"{window_minutes}min")
    s = scores.set_index(["client_id", "event_timestamp"])["score"]
    idx = pd.MultiIndex.from_arrays([requests["client_id"], key])
    return pd.Series(s.reindex(idx).to_numpy(), index=requests.index)


def as_enforced(policy: Policy, target: str = "abuse") -> Policy | None:
    """``policy`` with everything it only records enforced: the target's shadow mode and
    shadow overrides. None when nothing is in shadow (the policy already is its own)."""
    t = policy.targets.get(target)
    shadow_target = t is not None and t.mode == "shadow"
    shadow_overrides = any(o.mode == "shadow" for o in policy.overrides)
    if not shadow_target and not shadow_overrides:
        return None
    targets = dict(policy.targets)
    if shadow_target:
        assert t is not None
        targets[target] = t.model_copy(update={"mode": "enforce"})
    overrides = [o.model_copy(update={"mode": "enforce"}) for o in policy.overrides]
    return policy.model_copy(update={"targets": targets, "overrides": overrides})


def without_model(policy: Policy, target: str = "abuse") -> Policy:
    """``policy`` with no model action: the target off and the overrides a model wrote
    (``model_version`` set) removed. What the static rules alone would do."""
    targets = dict(policy.targets)
    if target in targets:
        targets[target] = targets[target].model_copy(update={"mode": "off"})
    overrides = [o for o in policy.overrides if o.model_version is None]
    return policy.model_copy(update={"targets": targets, "overrides": overrides})


_STOP = ("throttle", "block", "challenge")


def backtest(
    policy: Policy,
    telemetry: Path,
    *,
    labels: Path | None = None,
    label_window_minutes: int = 5,
    start: datetime | str | None = None,
    end: datetime | str | None = None,
    target: str = "abuse",
    scores: pd.DataFrame | None = None,
    clients: list[str] | None = None,
    counterfactuals: bool = True,
    static: bool = False,
) -> BacktestReport:
    """Judge every recorded request under ``policy``, in event time.

    ``scores`` (client_id, event_timestamp = window start, score), e.g. from
    ``serving.batch.score_windows``, replaces the recorded ``model_score``. ``clients``: only
    these clients' requests (every limit is per client, so their decisions are the same as in
    a backtest of everyone).

    With ``counterfactuals`` the same requests are also replayed, each world with limiters of
    its own, under the policy with its shadow rules enforced (``as_enforced``: what shadow
    mode would really have stopped: a throttle band stops only what its reduced limit
    refuses) and, with labels, under the policy without model action (``without_model``),
    so each band's report says what it stopped beyond the static rules (``static``: that
    replay without labels too, for the harm bound).
    """
    t0 = time.perf_counter()
    df = _read(telemetry, start, end, clients)
    if scores is not None:
        df["model_score"] = scores_for_requests(df, scores, label_window_minutes)
    enforced = as_enforced(policy, target) if counterfactuals else None
    worlds: dict[str, DecisionCore] = {"": DecisionCore(policy, MemoryLimiter(), target=target)}
    if enforced is not None:
        worlds["would_"] = DecisionCore(enforced, MemoryLimiter(), target=target)
    if counterfactuals and (labels is not None or static):
        worlds["static_"] = DecisionCore(
            without_model(policy, target), MemoryLimiter(), target=target
        )
    # seconds since the epoch whatever the datetime unit (DuckDB hands back microseconds)
    epoch = pd.Timestamp(0, tz="UTC")
    ts = (pd.to_datetime(df["timestamp"], utc=True) - epoch).dt.total_seconds().to_numpy()
    out: dict[str, list[Any]] = {
        f"{w}{c}": [] for w in worlds for c in ("action", "decision", "band")
    }
    cols = [
        df[c].tolist()
        for c in (
            "client_id",
            "http_request_method",
            "http_route",
            "auth_result",
            "ratelimit_decision",
            "model_score",
            "tier",
            "region",
            "device_type",
        )
    ]
    principals: dict[tuple[Any, ...], Principal] = {}
    for i, (cid, method, route, auth, recorded, score, tier, region, device) in enumerate(
        zip(*cols, strict=True)
    ):
        if auth not in (None, "ok", "anonymous") or recorded in _PRE_DECISION:
            for w in worlds:
                out[f"{w}action"].append("refused")
                out[f"{w}decision"].append(recorded or auth or "refused")
                out[f"{w}band"].append(None)
            continue
        key = (cid, tier, region, device)
        p = principals.get(key)
        if p is None:
            p = principals[key] = Principal(cid, (), tier, region, device)
        s = None if score is None or score != score else float(score)
        now = float(ts[i])
        for w, core in worlds.items():
            d = core.decide(p, method, route, s, now)
            out[f"{w}action"].append(d.action)
            out[f"{w}decision"].append(d.label)
            out[f"{w}band"].append(d.band)
    for k, v in out.items():
        df[k] = v
    if enforced is None and counterfactuals:  # nothing in shadow: enforcing changes nothing
        for c in ("action", "decision", "band"):
            df[f"would_{c}"] = df[c]
    seconds = time.perf_counter() - t0
    summary = (
        df.groupby("decision")
        .size()
        .rename("requests")
        .reset_index()
        .sort_values("requests", ascending=False)
    )
    summary["share"] = summary["requests"] / max(len(df), 1)
    report = BacktestReport(policy.version, len(df), seconds, df, summary.reset_index(drop=True))
    if labels is not None:
        df["abusive"] = _labels(df, labels, label_window_minutes)
        _outcome(report, policy, target)
    return report


def _shares(df: pd.DataFrame, col: str) -> dict[str, Any]:
    stopped = df[col].isin(_STOP)
    ab, legit = df["abusive"] == 1, df["abusive"] == 0
    return {
        "abusive_requests": int(ab.sum()),
        "abusive_stopped": int((ab & stopped).sum()),
        "abusive_stopped_share": float((ab & stopped).sum() / max(ab.sum(), 1)),
        "legitimate_requests": int(legit.sum()),
        "legitimate_harmed": int((legit & stopped).sum()),
        "legitimate_harmed_share": float((legit & stopped).sum() / max(legit.sum(), 1)),
    }


def _outcome(report: BacktestReport, policy: Policy, target: str) -> None:
    df = report.decisions
    report.outcome = _shares(df, "action")
    if "would_action" in df:
        stopped = df["action"].isin(_STOP)
        would = df["would_action"].isin(_STOP)
        ab, legit = df["abusive"] == 1, df["abusive"] == 0
        report.outcome |= {
            # beyond what is enforced: what enforcing the shadow rules would have added
            "shadow_would_stop_abusive": int((ab & would & ~stopped).sum()),
            "shadow_would_harm_legitimate": int((legit & would & ~stopped).sum()),
            "if_enforced": _shares(df, "would_action"),
        }
        report.bands = _band_table(df, policy, target)
    rows = []
    for attr in ("tier", "region", "device_type"):
        for value, g in df.groupby(attr, dropna=False):
            s = g["action"].isin(_STOP)
            a, legit_g = g["abusive"] == 1, g["abusive"] == 0
            rows.append(
                {
                    "attribute": attr,
                    "value": "(none)" if value is None or value != value else str(value),
                    "requests": len(g),
                    "abusive": int(a.sum()),
                    "abusive_stopped_share": float((a & s).sum() / a.sum())
                    if a.sum()
                    else float("nan"),
                    "legitimate": int(legit_g.sum()),
                    "legitimate_harmed_share": float((legit_g & s).sum() / legit_g.sum())
                    if legit_g.sum()
                    else float("nan"),
                }
            )
    report.by_group = pd.DataFrame(rows)


def _band_table(df: pd.DataFrame, policy: Policy, target: str) -> pd.DataFrame:
    """Per model rule, as it would act enforced: requests it applied to, what it stopped of
    them (abusive and legitimate), and of those what the static rules alone would have let
    through (``static_action`` allowed): the rule's own effect."""
    t = policy.targets.get(target)
    target_mode = t.mode if t is not None else "off"
    shadow_overrides = {f"override {o.action}" for o in policy.overrides if o.mode == "shadow"}
    rows = []
    in_rule = df["would_band"].notna()
    for name, g in df[in_rule].groupby("would_band"):
        stopped = g["would_action"].isin(_STOP)
        own = stopped & ~g["static_action"].isin(_STOP) if "static_action" in g else stopped
        ab, legit = g["abusive"] == 1, g["abusive"] == 0
        mode = (
            ("shadow" if name in shadow_overrides else "enforce")
            if str(name).startswith("override")
            else target_mode
        )
        rows.append(
            {
                "rule": str(name),
                "mode": mode,
                "requests": len(g),
                "clients": int(g["client_id"].nunique()),
                "abusive_stopped": int((ab & stopped).sum()),
                "legitimate_harmed": int((legit & stopped).sum()),
                "abusive_stopped_beyond_static": int((ab & own).sum()),
                "legitimate_harmed_beyond_static": int((legit & own).sum()),
            }
        )
    return pd.DataFrame(
        rows,
        columns=[
            "rule",
            "mode",
            "requests",
            "clients",
            "abusive_stopped",
            "legitimate_harmed",
            "abusive_stopped_beyond_static",
            "legitimate_harmed_beyond_static",
        ],
    )
