"""Replay recorded telemetry through the decision core in event time.

Days of traffic take seconds: each event is judged at its own timestamp by
the same ``DecisionCore`` the live gateway uses (in-memory limiter, the
policy under test). Requests the gateway refused before the decision
(authentication, authorization, unknown route) keep their recorded outcome.
With labels, the report says how many abusive requests the policy would have
stopped and how many legitimate ones it would have harmed, overall and per
tier, region and device type.

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

__all__ = ["BacktestReport", "backtest", "scores_for_requests"]

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
    decisions: pd.DataFrame  # request_id, timestamp, client_id, ..., decision, action
    summary: pd.DataFrame  # action → requests, share
    by_group: pd.DataFrame = field(default_factory=pd.DataFrame)  # with labels
    outcome: dict[str, Any] = field(default_factory=dict)  # with labels

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
    """Per request: 1 when its client's window is labelled abusive (missing windows: 0)."""
    from labeling.store import LabelStore

    if labels.is_dir():
        lab = LabelStore(labels).read().to_pandas()
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
) -> BacktestReport:
    """Judge every recorded request under ``policy``, in event time.

    ``scores`` (client_id, event_timestamp = window start, score), e.g. from
    ``serving.batch.score_windows``, replaces the recorded ``model_score``. ``clients``: only
    these clients' requests (every limit is per client, so their decisions are the same as in
    a backtest of everyone).
    """
    t0 = time.perf_counter()
    df = _read(telemetry, start, end, clients)
    if scores is not None:
        df["model_score"] = scores_for_requests(df, scores, label_window_minutes)
    core = DecisionCore(policy, MemoryLimiter(), target=target)
    # seconds since the epoch whatever the datetime unit (DuckDB hands back microseconds)
    epoch = pd.Timestamp(0, tz="UTC")
    ts = (pd.to_datetime(df["timestamp"], utc=True) - epoch).dt.total_seconds().to_numpy()
    actions: list[str] = []
    labels_out: list[str] = []
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
            actions.append("refused")
            labels_out.append(recorded or auth or "refused")
            continue
        key = (cid, tier, region, device)
        p = principals.get(key)
        if p is None:
            p = principals[key] = Principal(cid, (), tier, region, device)
        s = None if score is None or score != score else float(score)
        d = core.decide(p, method, route, s, float(ts[i]))
        actions.append(d.action)
        labels_out.append(d.label)
    df["action"] = actions
    df["decision"] = labels_out
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
        _outcome(report)
    return report


def _outcome(report: BacktestReport) -> None:
    df = report.decisions
    stopped = df["action"].isin(["throttle", "block", "challenge"])
    ab, legit = df["abusive"] == 1, df["abusive"] == 0
    shadow = df["decision"].astype(str).str.startswith("shadow_")  # (an empty range: no str)
    report.outcome = {
        "abusive_requests": int(ab.sum()),
        "abusive_stopped": int((ab & stopped).sum()),
        "abusive_stopped_share": float((ab & stopped).sum() / max(ab.sum(), 1)),
        "legitimate_requests": int(legit.sum()),
        "legitimate_harmed": int((legit & stopped).sum()),
        "legitimate_harmed_share": float((legit & stopped).sum() / max(legit.sum(), 1)),
        "shadow_would_stop_abusive": int((ab & shadow).sum()),
        "shadow_would_harm_legitimate": int((legit & shadow).sum()),
    }
    rows = []
    for attr in ("tier", "region", "device_type"):
        for value, g in df.groupby(attr, dropna=False):
            s = g["action"].isin(["throttle", "block", "challenge"])
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
