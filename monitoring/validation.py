"""Enforce only under a bounded harm estimate: validate a shadow target on recent traffic.

A model (or a policy's model rules) that was not validated on the traffic it will judge runs
in shadow. ``validate`` replays the period through the decision core with the target's rules
enforced and without them (``gateway.backtest``), scores the period with the target's model
when the telemetry has no scores (``serving.batch``), and bounds the legitimate harm from the
reviews people gave (``labeling.harm``). The verdict, with its arithmetic, is kept under
``<data_dir>/labeling/validation-<target>.json`` (and its history), logged to the model's
MLflow run, and, with ``publish``, acted on: a shadow target whose bound clears goes to
``enforce`` in a new policy version whose reason is the arithmetic; an enforcing target whose
bound no longer clears goes back to ``shadow``.

The question reopens (``reopened``) when the model version changes or when the target's
inputs have drifted from the period it was validated on (``labeling.harm.drift_share``).

    v = validate(settings, target="abuse", publish=True)
    v.harm.cleared, v.harm.bound, v.harm.next_reviews
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from config.settings import Settings

__all__ = ["Validation", "last_validation", "period", "reopened", "validate"]


@dataclass
class Validation:
    target: str
    policy_version: int
    model_version: str | None
    since: str
    until: str
    mode_before: str
    harm: Any  # labeling.harm.HarmReport
    published: int | None = None
    scored_windows: int = 0
    at: str = ""

    def record(self) -> dict[str, Any]:
        h = self.harm.as_dict()
        return {
            "target": self.target,
            "policy_version": self.policy_version,
            "model_version": self.model_version,
            "since": self.since,
            "until": self.until,
            "mode_before": self.mode_before,
            "published": self.published,
            "scored_windows": self.scored_windows,
            "at": self.at,
            **{k: h[k] for k in ("cleared", "bound", "estimate", "budget", "confidence", "reason")},
            "arithmetic": h["arithmetic"],
            "next_reviews": h["next_reviews"],
            "acted_clients": h["acted_clients"],
            "would_stop": h["would_stop"],
            "draws_used": h["draws_used"],
            "draws_harmful": h["draws_harmful"],
            "take_all": len(h["take_all"]),
            "take_all_unreviewed": len(h["take_all_unreviewed"]),
        }


def _path(settings: Settings, target: str) -> Path:
    return settings.data_dir / "labeling" / f"validation-{target}.json"


def last_validation(settings: Settings, target: str = "abuse") -> dict[str, Any] | None:
    p = _path(settings, target)
    return json.loads(p.read_text()) if p.exists() else None


def period(settings: Settings, since: Any, until: Any) -> tuple[datetime, datetime]:
    from telemetry.store import TelemetryStore, as_utc

    s, u = as_utc(since, "since"), as_utc(until, "until")
    if s is not None and u is not None:
        return s, u
    store = TelemetryStore(settings.telemetry_dir)
    if store.is_empty():
        raise LookupError(f"no telemetry in {settings.telemetry_dir}")
    con = store.connect()
    ts = pd.Timestamp(con.execute("SELECT max(timestamp) FROM events").fetchone()[0])
    last = (ts.tz_localize("UTC") if ts.tzinfo is None else ts).to_pydatetime()
    u = u or last + timedelta(microseconds=1)
    s = s or u - timedelta(hours=24)
    return s, u


def _model_version(settings: Settings, policy: Any, target: str) -> str | None:
    t = policy.targets.get(target)
    if t is not None and t.model_version:
        return str(t.model_version)
    try:
        from models.tracking import version_info

        champ = version_info(settings, target).get("champion")
    except Exception:
        return None
    return None if champ is None else str(champ["version"])


def _scores(settings: Settings, target: str, version: str | None, since: Any, until: Any) -> Any:
    from serving.batch import score_windows

    model = version or "champion"
    try:
        scores, _ = score_windows(settings, target, model, since=since, until=until)
    except (LookupError, ValueError):
        return None
    return scores.rename(columns={"entity": "client_id"})


def _harmed_in_legit_windows(
    settings: Settings, decisions: pd.DataFrame, reviewed: dict[str, int]
) -> dict[str, int]:
    """For reviewed clients: their would-be stops (beyond static) in windows people labelled
    legitimate."""
    from labeling.store import LabelStore

    if not reviewed:
        return {}
    store = LabelStore(settings.labels_dir)
    lab = store.resolve(store.read()).to_pandas()
    lab = lab[lab["source"].isin(("review", "import", "simulator"))]
    lab = lab[lab["client_id"].isin(list(reviewed))]
    stop = ("throttle", "block", "challenge")
    d = decisions[decisions["client_id"].isin(list(reviewed))]
    d = d[d["would_action"].isin(stop) & ~d["static_action"].isin(stop)]
    if d.empty:
        return {c: 0 for c in reviewed}
    w = settings.simulator.label_window_minutes
    d = d.assign(event_timestamp=pd.to_datetime(d["timestamp"], utc=True).dt.floor(f"{w}min"))
    lab["event_timestamp"] = pd.to_datetime(lab["event_timestamp"], utc=True)
    m = d.merge(lab[["client_id", "event_timestamp", "label"]], how="left")
    # a stop in a window nobody labelled, of a client reviewed legitimate, is harm
    legit = m["label"].fillna(1 - m["client_id"].map(reviewed)) == 0
    got = m[legit].groupby("client_id").size()
    return {c: int(got.get(c, 0)) for c in reviewed}


def _suspected(settings: Settings, since: datetime, until: datetime) -> set[str]:
    from labeling.store import LabelStore

    lab = LabelStore(settings.labels_dir).read().to_pandas()
    lab = lab[lab["source"] == "weak"]
    ts = pd.to_datetime(lab["event_timestamp"], utc=True)
    lab = lab[(ts >= pd.Timestamp(since)) & (ts < pd.Timestamp(until))]
    return set(lab.loc[lab["probability"] >= 0.5, "client_id"].astype(str))


def validate(
    settings: Settings,
    *,
    target: str = "abuse",
    policy: Any = None,
    since: Any = None,
    until: Any = None,
    scores: pd.DataFrame | None = None,
    publish: bool = False,
    author: str = "gatewise",
) -> Validation:
    """The harm bound of ``policy`` (default: the active one) for ``target`` on the period
    (default: the last 24 h of telemetry); see the module docstring."""
    from gateway.backtest import backtest
    from gateway.policy_store import active_or_initial
    from labeling.harm import harm_bound, per_client_harm
    from labeling.review import reviewed_clients

    policy = policy or active_or_initial(settings)
    t = policy.targets.get(target)
    if t is None:
        raise ValueError(f"the policy has no target {target!r}")
    since, until = period(settings, since, until)
    version = _model_version(settings, policy, target)
    if scores is None:
        scores = _scores(settings, target, version, since, until)
    if scores is None or not len(scores) or scores["score"].notna().sum() == 0:
        raise LookupError(
            f"no {target} scores for {since:%Y-%m-%d %H:%M} to {until:%Y-%m-%d %H:%M}: train and "
            f"promote a {target} model and build the period's features, or record scores live"
        )
    rep = backtest(
        policy,
        settings.telemetry_dir,
        label_window_minutes=settings.simulator.label_window_minutes,
        start=since,
        end=until,
        target=target,
        scores=scores,
        static=True,
    )
    per_client = per_client_harm(rep.decisions)
    reviewed = reviewed_clients(settings, since, until)
    cfg = settings.labeling.harm
    harm = harm_bound(
        per_client,
        reviewed=reviewed,
        harmed_if_legit=_harmed_in_legit_windows(settings, rep.decisions, reviewed),
        suspected=_suspected(settings, since, until),
        budget=cfg.share,
        confidence=cfg.confidence,
        take_all_share=cfg.take_all_share,
        max_take_all=cfg.max_take_all,
        salt=f"{target}:{version}:{since.isoformat()}",
    )
    now = datetime.now(UTC)
    v = Validation(
        target=target,
        policy_version=policy.version,
        model_version=version,
        since=since.isoformat(),
        until=until.isoformat(),
        mode_before=t.mode,
        harm=harm,
        scored_windows=int(scores["score"].notna().sum()),
        at=now.isoformat(),
    )
    if publish:
        v.published = _act(settings, policy, target, v, author)
    _save(settings, v)
    return v


def _act(settings: Settings, policy: Any, target: str, v: Validation, author: str) -> int | None:
    from gateway.policy_store import PolicyStore

    t = policy.targets[target]
    h = v.harm
    if h.cleared and t.mode == "shadow":
        mode = "enforce"
        why = (
            f"harm bound cleared for {target} (model v{v.model_version}): "
            f"{h.bound:.4%} <= {h.budget:.3%} at {h.confidence:.0%} on "
            f"{v.since[:16]}..{v.until[:16]}; " + " | ".join(h.arithmetic)
        )
    elif not h.cleared and t.mode == "enforce":
        mode = "shadow"
        why = f"harm bound no longer clears for {target}: {h.reason}"
    else:
        return None
    new = policy.model_copy(
        update={"targets": {**policy.targets, target: t.model_copy(update={"mode": mode})}}
    )
    return int(
        PolicyStore(settings.policy_dir).publish(new, author=author, reason=why[:4000]).version
    )


def _save(settings: Settings, v: Validation) -> None:
    p = _path(settings, v.target)
    p.parent.mkdir(parents=True, exist_ok=True)
    rec = v.record()
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec, indent=2, default=str))
    tmp.replace(p)
    with (p.parent / f"validation-{v.target}-history.jsonl").open("a") as fh:
        fh.write(json.dumps(rec, default=str) + "\n")


def reopened(
    settings: Settings,
    target: str,
    model_version: str | None,
    drift_share: float | None,
) -> str | None:
    """Why an earlier clearance no longer holds (None: it still does, or there was none)."""
    last = last_validation(settings, target)
    if last is None or not last.get("cleared"):
        return None
    if model_version is not None and str(last.get("model_version")) != str(model_version):
        return (
            f"model v{model_version} is not the v{last.get('model_version')} whose harm bound "
            "cleared"
        )
    limit = settings.labeling.harm.drift_share
    if drift_share is not None and drift_share >= limit:
        return (
            f"{drift_share:.0%} of its inputs drifted (>= {limit:.0%}) since it was validated on "
            f"{last['since'][:16]}..{last['until'][:16]}"
        )
    return None
