"""The decision core: authentication result + policy + limits + score → decision.

Pure apart from the limiter's counters, and on a clock the caller passes: the
live gateway calls it with wall time, the backtest with each recorded event's
time, so both reach the same decisions on the same traffic.

Order of judgement for an authenticated request:
1. a per-client override from the policy (block / challenge / throttle / allow);
2. the model band for the client's score, unless the client's group is
   exempted for that target; in ``shadow`` mode the band's action is only
   recorded (``shadow_block`` ...), in ``off`` mode ignored;
3. the rate limits: the tier's limit per consumer (reduced by a throttle band
   or override) and the route's per-consumer limit, each request charged the
   route's cost.

    core = DecisionCore(policy, MemoryLimiter())
    d = core.decide(principal, "GET", "/v1/orders/{id}", score=0.93, now=ts)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.auth import Principal
from gateway.policy import Band, Policy
from gateway.ratelimit import Check, Limit, MemoryLimiter, RateResult, RedisLimiter

__all__ = ["STATUS", "Decision", "DecisionCore", "band_name"]

STATUS = {"allow": 200, "throttle": 429, "challenge": 403, "block": 403}


def band_name(target: str, band: Band) -> str:
    """How a score band is named in decisions and reports: ``abuse >= 0.5 throttle``."""
    return f"{target} >= {band.min_score:g} {band.action}"


@dataclass(frozen=True)
class Decision:
    action: str  # allow | throttle | challenge | block  (what is enforced)
    label: str  # the telemetry ratelimit_decision: action, or shadow_<action> when only recorded
    reason: str
    status: int  # 200 when the request goes on to the upstream
    headers: dict[str, str] = field(default_factory=dict)
    rate: RateResult | None = None
    # the model rule in force for this request, enforced or in shadow: "<target> >= <min>
    # <action>" for a score band, "override <action>" for a per-client override; None: none
    band: str | None = None

    @property
    def allowed(self) -> bool:
        return self.action == "allow"


@dataclass
class _Plan:
    checks: list[Check]
    pre: Decision | None  # decided before the limits (block/challenge)
    label: str  # allow, or shadow_<action> for a band recorded in shadow mode
    reason: str
    band: str | None = None


class DecisionCore:
    """One policy at a time (swap ``policy`` atomically on reload); one limiter."""

    def __init__(
        self,
        policy: Policy,
        limiter: MemoryLimiter | RedisLimiter,
        target: str = "abuse",
    ) -> None:
        self.policy = policy
        self.limiter = limiter
        self.target = target

    def _plan(
        self, p: Principal, method: str, route: str, score: float | None, now: float
    ) -> _Plan:
        pol = self.policy
        tier = pol.tier(p.tier)
        rpm, burst = tier.requests_per_minute, tier.capacity
        label, reason = "allow", "within limits"
        rule_name: str | None = None
        a = pol.allowance(p.client_id, now)
        if a is not None and a.requests_per_minute > rpm:  # the client's own, higher limit
            rpm = a.requests_per_minute
            burst = max(burst, rpm)
        o = pol.override(p.client_id, now)
        if o is not None and o.mode == "shadow":
            if o.action != "allow":
                label, reason = f"shadow_{o.action}", f"shadow override: {o.reason}"
                rule_name = f"override {o.action}"
            o = None
        if o is not None:
            if o.action in ("block", "challenge"):
                name = f"override {o.action}"
                d = Decision(
                    o.action, o.action, f"override: {o.reason}", STATUS[o.action], band=name
                )
                return _Plan([], d, o.action, d.reason, name)
            if o.action == "throttle" and o.requests_per_minute:
                rpm = min(rpm, o.requests_per_minute)
                burst = min(burst, rpm)
                reason = f"override: {o.reason}"
                rule_name = "override throttle"
            if o.action == "allow":
                score = None  # an explicit allow overrides the model
        t = pol.targets.get(self.target)
        if t is not None and t.mode != "off" and score is not None:
            band = t.band(score)
            if band is not None and band.action not in ("allow", "log"):
                exempt = pol.exempt(self.target, p.attrs(), now)
                if exempt is not None:
                    reason = f"exempt from model action: {exempt.reason}"
                elif t.mode == "shadow":
                    label = f"shadow_{band.action}"
                    reason = f"shadow: score {score:.3f} >= {band.min_score} would {band.action}"
                    rule_name = band_name(self.target, band)
                elif band.action in ("block", "challenge"):
                    r = f"score {score:.3f} >= {band.min_score}"
                    name = band_name(self.target, band)
                    d = Decision(band.action, band.action, r, STATUS[band.action], band=name)
                    return _Plan([], d, band.action, r, name)
                else:  # throttle: the client keeps a share of its limit
                    rpm = band.throttled(rpm)
                    burst = max(1, min(burst, rpm))
                    reason = f"score {score:.3f} >= {band.min_score}: throttled to {rpm}/min"
                    rule_name = band_name(self.target, band)
        rule = pol.route(method, route)
        cost = min(rule.cost, burst)
        checks = [Check(f"c:{{{p.client_id}}}", Limit(rpm, 60.0, burst), cost)]
        if rule.requests_per_minute:
            checks.append(
                Check(
                    f"r:{{{p.client_id}}}:{method} {route}",
                    Limit(rule.requests_per_minute, 60.0),
                    1,
                )
            )
        return _Plan(checks, None, label, reason, rule_name)

    def _finish(self, plan: _Plan, r: RateResult) -> Decision:
        if not r.allowed:
            return Decision(
                "throttle",
                "throttle",
                f"rate limit {r.key.split(':')[0]} ({r.limit} burst): retry in {r.retry_after:.1f}s",
                429,
                r.headers(),
                r,
                plan.band,
            )
        return Decision("allow", plan.label, plan.reason, 200, r.headers(), r, plan.band)

    def decide(
        self, p: Principal, method: str, route: str, score: float | None, now: float
    ) -> Decision:
        plan = self._plan(p, method, route, score, now)
        if plan.pre is not None:
            return plan.pre
        return self._finish(plan, self.limiter.hit(plan.checks, now))

    async def adecide(
        self, p: Principal, method: str, route: str, score: float | None, now: float
    ) -> Decision:
        plan = self._plan(p, method, route, score, now)
        if plan.pre is not None:
            return plan.pre
        return self._finish(plan, await self.limiter.ahit(plan.checks, now))
