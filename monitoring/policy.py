"""Findings → the next gateway policy, each change with a reason, refused if it does more harm.

``propose(current, drift, bias, rules)`` maps monitoring findings to a candidate policy:

- the share of drifted features at or above ``rules.drift_share`` → the target's model-based
  action goes to ``rules.drift_mode`` (``shadow``: scores recorded, not enforced) and a
  retraining is asked for;
- a sensitive group whose false-positive rate is more than ``rules.max_fpr_ratio`` times the
  best judgeable group's, and at least ``rules.min_fpr_gap`` above it → that group is exempted from model-based action (static limits still
  apply) until ``rules.exemption_hours`` from now, and an alert is raised.

``gate(candidate, current, ...)`` replays the recorded traffic (with the labels that have
arrived) under both policies with the gateway's own decision core (``gateway.backtest``) and
refuses a candidate that would harm a larger share of legitimate requests than the current
one. ``publish`` writes an accepted candidate as the next version (``PolicyStore``), with the
reasons as its ``reason``; the gateway picks it up on its next policy poll.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from gateway.policy import Policy, PolicyStore
    from monitoring.bias import BiasFinding
    from monitoring.drift import DriftResult

__all__ = [
    "Change",
    "GateResult",
    "MonitoringSettings",
    "PolicyRules",
    "Proposal",
    "gate",
    "overrides_from_scores",
    "propose",
    "publish",
]

Sensitive = Literal["tier", "region", "device_type"]
_EXEMPTABLE: tuple[Sensitive, ...] = ("tier", "region", "device_type")


class PolicyRules(BaseModel):
    """How findings become policy (``monitoring.policy`` in gatewise.yaml)."""

    model_config = ConfigDict(extra="forbid")

    drift_share: float = Field(0.3, gt=0, le=1, description="drifted feature share that acts")
    drift_mode: Literal["shadow", "off"] = "shadow"
    max_fpr_ratio: float = Field(1.25, ge=1, description="worst/best group FPR that acts")
    min_fpr_gap: float = Field(
        0.005,
        ge=0,
        description="and the worst FPR exceeds the best by at least this (tiny rates make "
        "ratios noise: 1 false positive in 2,000 against 0 is an infinite ratio)",
    )
    exemption_hours: float = Field(24.0, gt=0)
    harm_tolerance: float = Field(
        0.0, ge=0, description="extra legitimate-harm share a candidate may add"
    )


class MonitoringSettings(BaseModel):
    """``monitoring:`` in gatewise.yaml: what the drift and bias checks judge, and how their
    findings become policy."""

    model_config = ConfigDict(extra="forbid")

    sensitive: list[Sensitive] = Field(
        default_factory=lambda: list(_EXEMPTABLE),
        description="group columns of the bias check",
    )
    min_group_size: int = Field(30, ge=1, description="smaller groups are unjudgeable")
    drift_max_rows: int = Field(50_000, ge=100, description="rows sampled per side")
    policy: PolicyRules = Field(default_factory=PolicyRules)


@dataclass
class Change:
    kind: str  # target_mode | exemption
    detail: str
    reason: str


@dataclass
class Proposal:
    policy: Policy
    changes: list[Change] = field(default_factory=list)
    retrain: bool = False
    alerts: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.changes)


def propose(
    current: Policy,
    drift: DriftResult | None,
    bias: list[BiasFinding],
    rules: PolicyRules | None = None,
    *,
    target: str = "abuse",
    now: datetime | None = None,
) -> Proposal:
    from gateway.policy import Exemption

    rules = rules or PolicyRules()
    now = now or datetime.now(UTC)
    changes: list[Change] = []
    alerts: list[str] = []
    retrain = False
    targets = dict(current.targets)
    exemptions = list(current.exemptions)
    tp = targets.get(target)
    if drift is not None and drift.columns and drift.share >= rules.drift_share:
        retrain = True
        if tp is not None and tp.mode == "enforce":
            targets[target] = tp.model_copy(update={"mode": rules.drift_mode})
            cols = ", ".join(drift.drifted[:8]) + (" …" if len(drift.drifted) > 8 else "")
            changes.append(
                Change(
                    "target_mode",
                    f"{target}: enforce -> {rules.drift_mode}",
                    f"{len(drift.drifted)} of {len(drift.columns)} features drifted "
                    f"({drift.share:.0%} >= {rules.drift_share:.0%}: {cols}); model-based "
                    f"action goes to {rules.drift_mode} until a retrained model is promoted",
                )
            )
    if tp is not None:
        for b in bias:
            if b.feature not in _EXEMPTABLE or b.fpr_ratio is None:
                continue
            if b.fpr_ratio <= rules.max_fpr_ratio or b.worst_fpr_group is None:
                continue
            g = b.worst_fpr_group
            if any(
                e.target == target
                and e.attribute == b.feature
                and e.value == g
                and e.active(now.timestamp())
                for e in exemptions
            ):
                continue
            rates = {x.group: x.fpr for x in b.groups if x.fpr is not None}
            best = min(rates, key=lambda k: rates[k])
            if rates[g] - rates[best] < rules.min_fpr_gap:
                continue
            reason = (
                f"{b.feature}={g}: false-positive rate {rates[g]:.3%} is {b.fpr_ratio:.2f}x "
                f"{b.feature}={best}'s {rates[best]:.3%} (bound {rules.max_fpr_ratio:.2f}x); "
                "exempt from model-based action, static limits still apply"
            )
            exemptions.append(
                Exemption(
                    target=target,
                    attribute=b.feature,
                    value=g,
                    reason=reason,
                    expires_at=now + timedelta(hours=rules.exemption_hours),
                )
            )
            changes.append(Change("exemption", f"{target}: exempt {b.feature}={g}", reason))
            alerts.append(f"bias: {reason}")
    policy = current.model_copy(update={"targets": targets, "exemptions": exemptions})
    if changes:
        policy = policy.model_copy(
            update={"author": "gatewise monitor", "reason": "; ".join(c.reason for c in changes)}
        )
    return Proposal(policy, changes, retrain, alerts)


def overrides_from_scores(
    current: Policy,
    scores: Any,
    *,
    target: str = "abuse",
    model_version: str | None = None,
    ttl_minutes: float = 60.0,
    now: datetime | None = None,
) -> Proposal:
    """Per-client overrides from model scores: each client's highest score (``scores``: a
    DataFrame with ``entity`` or ``client_id`` and ``score``) mapped through the target's bands;
    a throttle keeps ``limit_factor`` of the default tier's limit. Overrides expire after
    ``ttl_minutes``; they take the target's mode (shadow stays shadow). Clients below every
    acting band lose an earlier model-written override; overrides written by people stay."""
    from gateway.policy import Override

    now = now or datetime.now(UTC)
    tp = current.targets.get(target)
    if tp is None or tp.mode == "off":
        return Proposal(current)
    key = "client_id" if "client_id" in scores.columns else "entity"
    best = scores.groupby(key)["score"].max()
    mode = "enforce" if tp.mode == "enforce" else "shadow"
    tier_rpm = current.tier(None).requests_per_minute
    keep = [o for o in current.overrides if o.model_version is None]  # people's
    written = []
    changes = []
    for cid, score in best.items():
        band = tp.band(float(score))
        if band is None or band.action == "allow" or any(o.client_id == cid for o in keep):
            continue
        rpm = max(1, int(tier_rpm * band.limit_factor)) if band.action == "throttle" else None
        reason = f"{target} score {float(score):.3f} >= band {band.min_score:g} ({band.action})"
        written.append(
            Override(
                client_id=str(cid),
                action=band.action,
                requests_per_minute=rpm,
                reason=reason,
                expires_at=now + timedelta(minutes=ttl_minutes),
                model_version=model_version or "unknown",
                mode=mode,
            )
        )
        changes.append(Change("override", f"{cid}: {band.action} ({mode})", reason))
    dropped = [o for o in current.overrides if o.model_version is not None]
    if not written and not dropped:
        return Proposal(current)
    if dropped and not written:
        changes.append(
            Change(
                "override",
                f"{len(dropped)} model overrides cleared",
                "no client scores in an acting band any more",
            )
        )
    policy = current.model_copy(
        update={
            "overrides": keep + written,
            "author": "gatewise monitor",
            "reason": f"{len(written)} client override(s) from {target} scores",
        }
    )
    return Proposal(policy, changes)


@dataclass
class GateResult:
    accepted: bool
    reason: str
    current: dict[str, Any]
    candidate: dict[str, Any]


def gate(
    candidate: Policy,
    current: Policy,
    telemetry: Path,
    labels: Path,
    *,
    label_window_minutes: int = 5,
    start: datetime | None = None,
    end: datetime | None = None,
    rules: PolicyRules | None = None,
    target: str = "abuse",
) -> GateResult:
    """Backtest both policies on the recorded, labelled traffic; refuse more legitimate harm."""
    from gateway.backtest import backtest

    rules = rules or PolicyRules()
    kw: dict[str, Any] = {
        "labels": labels,
        "label_window_minutes": label_window_minutes,
        "start": start,
        "end": end,
        "target": target,
    }
    cur = backtest(current, telemetry, **kw).outcome
    cand = backtest(candidate, telemetry, **kw).outcome
    if not cur or not cand:
        return GateResult(False, "no labelled traffic to judge the candidate on", cur, cand)
    h_cur, h_cand = cur["legitimate_harmed_share"], cand["legitimate_harmed_share"]
    s_cur, s_cand = cur["abusive_stopped_share"], cand["abusive_stopped_share"]
    if h_cand > h_cur + rules.harm_tolerance:
        return GateResult(
            False,
            f"refused: it would harm {h_cand:.3%} of legitimate requests, the current policy "
            f"{h_cur:.3%} (abuse stopped {s_cand:.1%} vs {s_cur:.1%})",
            cur,
            cand,
        )
    return GateResult(
        True,
        f"accepted: legitimate harm {h_cand:.3%} (current {h_cur:.3%}), abuse stopped "
        f"{s_cand:.1%} (current {s_cur:.1%})",
        cur,
        cand,
    )


def publish(store: PolicyStore, proposal: Proposal, verdict: GateResult) -> Policy | None:
    """The candidate as the next version when it changes something and passed the gate."""
    if not proposal.changed or not verdict.accepted:
        return None
    return store.publish(
        proposal.policy,
        author="gatewise monitor",
        reason=f"{proposal.policy.reason} [{verdict.reason}]",
    )
