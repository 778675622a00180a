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
from typing import TYPE_CHECKING, Any

from config.monitoring import EXEMPTABLE, PolicyRules

if TYPE_CHECKING:
    from gateway.policy import Policy
    from gateway.policy_store import PolicyStore
    from monitoring.bias import BiasFinding
    from monitoring.drift import DriftResult

__all__ = [
    "Change",
    "GateResult",
    "Proposal",
    "adapt_limits",
    "gate",
    "overrides_from_scores",
    "propose",
    "publish",
]


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
        cols = ", ".join(drift.drifted[:8]) + (" …" if len(drift.drifted) > 8 else "")
        why = (
            f"{len(drift.drifted)} of {len(drift.columns)} features drifted "
            f"({drift.share:.0%} >= {rules.drift_share:.0%}: {cols})"
        )
        if tp is not None and tp.mode == "enforce" and rules.drift_mode != "raise":
            targets[target] = tp.model_copy(update={"mode": rules.drift_mode})
            changes.append(
                Change(
                    "target_mode",
                    f"{target}: enforce -> {rules.drift_mode}",
                    f"{why}; model-based action goes to {rules.drift_mode} until a retrained "
                    "model is promoted",
                )
            )
        elif tp is not None and tp.mode == "enforce" and tp.bands and not tp.raised:
            f = rules.drift_band_factor
            bands = [
                b.model_copy(update={"min_score": round(1 - (1 - b.min_score) * f, 6)})
                for b in tp.bands
            ]
            targets[target] = tp.model_copy(update={"bands": bands, "raised": True})
            cuts = ", ".join(
                f"{b.action} {a.min_score:g} -> {b.min_score:g}"
                for a, b in zip(tp.bands, bands, strict=True)
            )
            changes.append(
                Change(
                    "target_bands",
                    f"{target}: bands raised ({cuts})",
                    f"{why}; the model keeps acting only where it is most confident until a "
                    "retrained model is promoted",
                )
            )
    if tp is not None:
        for b in bias:
            if b.feature not in EXEMPTABLE or b.fpr_ratio is None:
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
        rpm = band.throttled(tier_rpm) if band.action == "throttle" else None
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


def adapt_limits(
    current: Policy,
    telemetry: Path,
    labels: Path | None,
    *,
    before: datetime,
    floor: dict[str, int],
    flagged: set[str] | None = None,
    rules: PolicyRules | None = None,
    days: float = 1.0,
) -> Proposal:
    """Tier limits and per-consumer route limits adapted to normal traffic plus headroom.

    Normal traffic: the last ``days`` of recorded traffic before ``before`` (the most recent
    such span with data, so a replay after a quiet gap still learns from the day it follows),
    without the clients a label that has arrived calls abusive or that are ``flagged`` (in an
    acting score band, or overridden). Per tier: the ``rules.limit_quantile`` of a client's
    cost-weighted requests per minute, times ``rules.limit_headroom``, never below ``floor``
    (the configured static limit). Per route: the same over a client's calls of that route,
    for routes with ``rules.limit_min_minutes`` client-minutes. A limit changes only when it
    moves by more than 10%."""
    from gateway.policy import RouteRule, TierLimit
    from telemetry.store import TelemetryStore

    rules = rules or PolicyRules()
    store = TelemetryStore(telemetry)
    if store.is_empty():
        return Proposal(current)
    con = store.connect()
    b = f"TIMESTAMPTZ '{before.isoformat()}'"
    # the newest day (of the last 60) with enough client-minutes: a replay after a quiet gap
    # still learns from the day before the gap, not from a few stray requests
    found = con.sql(
        "SELECT max(timestamp) FROM events WHERE timestamp < "
        + b
        + " AND timestamp > "
        + b
        + " - INTERVAL 60 DAYS GROUP BY date_trunc('day', timestamp) "
        "HAVING count(DISTINCT (client_id, date_trunc('minute', timestamp))) >= "
        f"{rules.limit_min_minutes} ORDER BY 1 DESC LIMIT 1"
    ).fetchall()
    if not found:
        return Proposal(current)
    last = found[0][0]
    lo = last - timedelta(days=days)
    excluded = set(flagged or ())
    if labels is not None and Path(labels).exists():
        from labeling.store import LabelStore

        label_store = LabelStore(labels)
        lab = label_store.resolve(label_store.read(available_at=before)).to_pandas()
        if len(lab):
            # a weak label excludes a client only where the label model is confident
            unsure_weak = (lab["source"] == "weak") & (lab["probability"].fillna(1.0) < 0.8)
            lab = lab[(lab["label"] == 1) & ~unsure_weak & (_utc(lab["event_timestamp"]) >= lo)]
            excluded |= set(lab["client_id"])
    con.register("excluded", _ids_table(excluded))
    costs = {k: r.cost for k, r in current.routes.items()}
    case = " ".join(
        f"WHEN http_request_method || ' ' || http_route = '{k}' THEN {c}"
        for k, c in costs.items()
        if "'" not in k
    )
    cost = f"CASE {case} ELSE 1 END" if case else "1"
    q = rules.limit_quantile
    base = (
        f"SELECT client_id, coalesce(tier, '{current.default_tier}') AS tier, "
        f"http_request_method || ' ' || http_route AS route, date_trunc('minute', timestamp) AS m, "
        f"{cost} AS cost FROM events WHERE timestamp > TIMESTAMPTZ '{lo.isoformat()}' "
        f"AND timestamp <= TIMESTAMPTZ '{last.isoformat()}' AND auth_result = 'ok' "
        "AND client_id NOT IN (SELECT client_id FROM excluded)"
    )
    per_minute = f"SELECT client_id, tier, m, sum(cost) AS n FROM ({base}) GROUP BY ALL"
    tiers = con.sql(
        f"SELECT tier, quantile_cont(n, {q}) AS q, count(*) AS minutes FROM ({per_minute}) "
        "GROUP BY tier"
    ).fetchall()
    clients = con.sql(
        f"SELECT client_id, any_value(tier) AS tier, quantile_cont(n, {q}) AS q "
        f"FROM ({per_minute}) GROUP BY client_id"
    ).fetchall()
    routes = con.sql(
        f"SELECT route, quantile_cont(n, {q}) AS q, count(*) AS minutes FROM ("
        f"SELECT client_id, route, m, count(*) AS n FROM ({base}) GROUP BY ALL) GROUP BY route"
    ).fetchall()
    span = f"{lo:%Y-%m-%d %H:%M} → {last:%Y-%m-%d %H:%M} UTC"
    who = f"{len(excluded)} labelled or flagged clients left out"
    changes: list[Change] = []
    new_tiers = dict(current.tiers)
    for tier, qv, minutes in tiers:
        if not rules.adapt_tiers or tier not in new_tiers or minutes < rules.limit_min_minutes:
            continue
        limit = max(int(floor.get(tier, 1)), int(-(-qv * rules.limit_headroom // 1)))
        old = new_tiers[tier].requests_per_minute
        if abs(limit - old) <= 0.1 * old:
            continue
        new_tiers[tier] = TierLimit(requests_per_minute=limit)
        changes.append(
            Change(
                "tier_limit",
                f"tier {tier}: {old} -> {limit}/min",
                f"normal {tier} traffic {span} ({minutes:,} client-minutes, {who}): "
                f"q{q:g} {qv:.1f}/min x {rules.limit_headroom:g} headroom",
            )
        )
    largest = max(t.capacity for t in new_tiers.values())
    new_routes = dict(current.routes)
    for route, qv, minutes in routes:
        if minutes < rules.limit_min_minutes or "'" in route:
            continue
        limit = max(1, int(-(-qv * rules.limit_headroom // 1)))
        rule = new_routes.get(route, RouteRule())
        old_r = rule.requests_per_minute
        if old_r is not None and abs(limit - old_r) <= 0.1 * old_r:
            continue
        if old_r is None and limit >= largest:
            continue  # every tier's own limit binds first
        new_routes[route] = rule.model_copy(update={"requests_per_minute": limit})
        changes.append(
            Change(
                "route_limit",
                f"{route}: {old_r or '-'} -> {limit}/min per consumer",
                f"normal use of {route} {span} ({minutes:,} client-minutes, {who}): "
                f"q{q:g} {qv:.1f}/min x {rules.limit_headroom:g} headroom",
            )
        )
    # heavy trusted clients: an allowance of their own above their tier's limit
    from gateway.policy import Allowance

    allowances = {k: a for k, a in current.allowances.items() if a.active(before.timestamp())}
    expires = before + timedelta(days=rules.allowance_days)
    added = []
    for cid, tier, qv in clients:
        limit = int(-(-qv * rules.limit_headroom // 1))
        tier_limit = (new_tiers.get(tier) or new_tiers[current.default_tier]).requests_per_minute
        old_a = allowances.get(cid)
        if limit <= tier_limit:
            continue
        if old_a is not None and abs(limit - old_a.requests_per_minute) <= 0.1 * limit:
            continue
        allowances[cid] = Allowance(
            requests_per_minute=limit,
            reason=f"busiest normal minute {qv:.0f} ({span}) x {rules.limit_headroom:g} "
            f"headroom, above tier {tier}'s {tier_limit}/min",
            expires_at=expires,
        )
        added.append(f"{cid} {limit}/min")
    if added:
        changes.append(
            Change(
                "allowance",
                f"{len(added)} client allowance(s): {', '.join(added[:5])}"
                + (" …" if len(added) > 5 else ""),
                f"trusted clients whose normal use ({span}, {who}) plus "
                f"{rules.limit_headroom:g}x headroom exceeds their tier's limit keep their own "
                f"limit until {expires:%Y-%m-%d %H:%M} UTC, instead of being throttled as abuse",
            )
        )
    if not changes:
        return Proposal(current)
    policy = current.model_copy(
        update={
            "allowances": allowances,
            "tiers": new_tiers,
            "routes": new_routes,
            "author": "gatewise monitor",
            "reason": f"limits adapted to normal traffic ({len(changes)} change(s))",
        }
    )
    return Proposal(policy, changes)


def _utc(col: Any) -> Any:
    import pandas as pd

    return pd.to_datetime(col, utc=True)


def _ids_table(ids: set[str]) -> Any:
    import pyarrow as pa

    return pa.table({"client_id": pa.array(sorted(ids), pa.string())})


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
    clients: set[str] | None = None,
    current_outcome: dict[str, Any] | None = None,
) -> GateResult:
    """Backtest both policies on the recorded, labelled traffic; refuse more legitimate harm.

    ``current_outcome``: the current policy's outcome over everyone, when already known.
    ``clients``: the only clients whose decisions can differ between the two (every limit is
    per client): with ``current_outcome``, only their requests are replayed, under both
    policies, and the candidate's outcome is the current one plus the difference."""
    from gateway.backtest import backtest

    rules = rules or PolicyRules()
    kw: dict[str, Any] = {
        "labels": labels,
        "label_window_minutes": label_window_minutes,
        "start": start,
        "end": end,
        "target": target,
        "counterfactuals": False,  # the gate compares what each policy enforces
    }
    if current_outcome and clients is not None:
        cur = current_outcome
        if clients:
            sub = sorted(clients)
            a = backtest(current, telemetry, clients=sub, **kw).outcome
            b = backtest(candidate, telemetry, clients=sub, **kw).outcome
            cand = _shifted(cur, a, b)
        else:
            cand = _shifted(cur, {}, {})
    else:
        cur = current_outcome or backtest(current, telemetry, **kw).outcome
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


_COUNTS = ("abusive_stopped", "legitimate_harmed")


def _shifted(full: dict[str, Any], a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """``full`` with a subset's counts under policy a replaced by the same subset under b."""
    keep = (*_COUNTS, "abusive_requests", "legitimate_requests")
    out = {k: full[k] for k in keep}  # what each policy enforces (shadow extras do not shift)
    if a and b:  # else the subset had no labelled requests: nothing shifts
        for k in _COUNTS:
            out[k] = full[k] - a[k] + b[k]
    out["abusive_stopped_share"] = out["abusive_stopped"] / max(full["abusive_requests"], 1)
    out["legitimate_harmed_share"] = out["legitimate_harmed"] / max(full["legitimate_requests"], 1)
    return out


def publish(store: PolicyStore, proposal: Proposal, verdict: GateResult) -> Policy | None:
    """The candidate as the next version when it changes something and passed the gate."""
    if not proposal.changed or not verdict.accepted:
        return None
    return store.publish(
        proposal.policy,
        author="gatewise monitor",
        reason=f"{proposal.policy.reason} [{verdict.reason}]",
    )
