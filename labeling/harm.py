"""The harm bound: may a policy that was not validated on this traffic enforce?

What is bounded: the legitimate requests the policy's model rules would stop that the static
rules let through (a backtest of the policy with its shadow rules enforced, against the same
policy without model action), as a share of all legitimate requests in the period. The
sampling unit is the client; the population is the clients the rules would act on
(``A``), each weighted by the requests it would lose (``h_i``).

1. **Take-all stratum.** The largest clients of ``A``, covering ``take_all_share`` of the
   would-be stops (at most ``max_take_all``), are judged one by one: a reviewed one counts its
   stopped requests in legitimate windows exactly; an unreviewed one counts all of them (as if
   legitimate) until someone reviews it.
2. **Sampled stratum.** The rest, ``R`` with ``H_R`` would-be stops, is bounded from a sample
   drawn with probability proportional to ``h_i`` (with replacement, from a seeded sequence that
   depends only on the population). Each draw is a client; its outcome is 1 when any of its
   stopped requests is in a legitimate window (its share of harm is at most 1). The draws are
   used in order up to the first one nobody has reviewed, so which clients got reviewed cannot
   bias the sample. With ``x`` harmful draws among ``m``, Clopper-Pearson gives a one-sided
   upper bound ``f_up`` on the volume-weighted harmful share of ``R``; ``H_R * f_up`` bounds
   its harm (with no draws, ``f_up = 1``).
3. **Denominator.** Legitimate requests are at least: all requests, minus every request of a
   client the rules act on, that a reviewer called abusive, or that the label model thinks
   abusive (P >= 0.5 in any window), unless a reviewer called it legitimate.

``bound = (take-all harm + H_R * f_up) / legitimate lower bound``; the policy may enforce when
``bound <= budget``. Until then ``next_reviews`` names exactly the clients whose reviews
would settle it: the unreviewed take-all clients, then the next draws of the sequence, as
many as would clear the budget if they all came back abusive.

    report = harm_bound(per_client, budget=0.001)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["HarmReport", "clopper_pearson_upper", "harm_bound", "per_client_harm"]


def clopper_pearson_upper(x: int, n: int, confidence: float = 0.95) -> float:
    """One-sided upper confidence bound of a binomial proportion (x of n)."""
    if n == 0:
        return 1.0
    if x >= n:
        return 1.0
    from scipy.stats import beta

    return float(beta.ppf(confidence, x + 1, n - x))


@dataclass
class HarmReport:
    budget: float
    confidence: float
    cleared: bool
    bound: float  # upper bound of the harmed share of legitimate requests
    estimate: float  # point estimate of the same share
    requests: int  # in the period
    legitimate_lower: int  # the denominator
    acted_clients: int  # |A|
    would_stop: int  # sum of h_i over A
    take_all: list[str]
    take_all_harm: int  # exact (reviewed) + counted in full (unreviewed)
    take_all_unreviewed: list[str]
    sampled_stop: int  # H_R
    draws_used: int
    draws_harmful: int
    sampled_upper_share: float  # f_up
    next_reviews: list[str]
    reason: str
    arithmetic: list[str] = field(default_factory=list)
    clients: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "clients"}
        return d


def per_client_harm(decisions: pd.DataFrame) -> pd.DataFrame:
    """From a backtest's decisions (``would_action``, ``static_action``): per client, its
    requests and the requests the model rules would stop beyond the static rules."""
    stop = ("throttle", "block", "challenge")
    d = decisions
    beyond = d["would_action"].isin(stop) & ~d["static_action"].isin(stop)
    g = pd.DataFrame({"client_id": d["client_id"], "requests": 1, "would_stop": beyond.astype(int)})
    out = g.groupby("client_id").agg(requests=("requests", "sum"), would_stop=("would_stop", "sum"))
    return out.reset_index()


def _draw_sequence(clients: list[str], weights: np.ndarray, n: int, salt: str) -> list[str]:
    """``n`` PPS draws with replacement, from a generator seeded by the population itself:
    the same population always gives the same sequence, whoever asks."""
    if not clients or n <= 0:
        return []
    h = hashlib.sha256(("|".join(clients) + salt).encode()).digest()
    rng = np.random.default_rng(int.from_bytes(h[:8], "little"))
    p = weights / weights.sum()
    return [clients[i] for i in rng.choice(len(clients), size=n, p=p)]


def harm_bound(
    per_client: pd.DataFrame,
    *,
    reviewed: dict[str, int] | None = None,
    harmed_if_legit: dict[str, int] | None = None,
    suspected: set[str] | None = None,
    budget: float = 0.001,
    confidence: float = 0.95,
    take_all_share: float = 0.5,
    max_take_all: int = 40,
    max_draws: int = 1000,
    salt: str = "",
) -> HarmReport:
    """The bound (module docstring).

    ``per_client``: client_id, requests, would_stop (``per_client_harm``).
    ``reviewed``: client -> 1 abusive / 0 legitimate (a person's label for the period).
    ``harmed_if_legit``: for reviewed clients, how many of their would-be stops fall in windows
    labelled legitimate (default: all of them for a legitimate client, none for an abusive).
    ``suspected``: clients the label model thinks abusive (for the denominator only).
    """
    reviewed = reviewed or {}
    suspected = suspected or set()
    pc = per_client.copy()
    total = int(pc["requests"].sum())
    acted = pc[pc["would_stop"] > 0].sort_values("would_stop", ascending=False)
    would = int(acted["would_stop"].sum())

    def exact_harm(cid: str, h: int) -> int:
        if harmed_if_legit is not None and cid in harmed_if_legit:
            return int(harmed_if_legit[cid])
        return h if reviewed.get(cid) == 0 else 0

    # 1. take-all
    take: list[str] = []
    covered = 0
    for cid, h in zip(acted["client_id"], acted["would_stop"], strict=True):
        if len(take) >= max_take_all or covered >= take_all_share * would:
            break
        take.append(str(cid))
        covered += int(h)
    hmap = dict(zip(acted["client_id"].astype(str), acted["would_stop"].astype(int), strict=True))
    take_unrev = [c for c in take if c not in reviewed]
    take_harm = sum(hmap[c] if c not in reviewed else exact_harm(c, hmap[c]) for c in take)
    # 2. sampled
    rest = acted[~acted["client_id"].astype(str).isin(take)]
    rest_ids = rest["client_id"].astype(str).tolist()
    h_r = int(rest["would_stop"].sum())
    seq = _draw_sequence(rest_ids, rest["would_stop"].to_numpy(dtype=float), max_draws, salt)
    used, harmful = 0, 0
    for cid in seq:
        if cid not in reviewed:
            break
        used += 1
        harmful += int(exact_harm(cid, hmap[cid]) > 0)
    alpha_conf = confidence
    f_up = clopper_pearson_upper(harmful, used, alpha_conf) if h_r else 0.0
    f_hat = harmful / used if used else (1.0 if h_r else 0.0)
    # 3. denominator
    assumed_abusive = (
        set(acted["client_id"].astype(str))
        | {c for c, y in reviewed.items() if y == 1}
        | set(suspected)
    ) - {c for c, y in reviewed.items() if y == 0}
    req = dict(zip(pc["client_id"].astype(str), pc["requests"].astype(int), strict=True))
    legit_low = total - sum(req.get(c, 0) for c in assumed_abusive)
    legit_low = max(legit_low, 1)
    upper = take_harm + h_r * f_up
    # harmed legitimate requests never exceed the legitimate ones: a share above 1 says only
    # that the denominator's lower bound is loose, so the bound is capped at 1
    bound = min(upper / legit_low, 1.0)
    estimate = min((take_harm + h_r * f_hat) / legit_low, 1.0)
    cleared = bound <= budget
    # what would settle it: unreviewed take-all clients, then the next draws
    nxt: list[str] = list(take_unrev)
    if not cleared and h_r:
        # as if the unreviewed take-all clients come back abusive: the draws that would then
        # settle it
        room = budget * legit_low - (take_harm - sum(hmap[c] for c in take_unrev))
        need = 0
        if room > 0:
            while need < max_draws - used:
                if h_r * clopper_pearson_upper(harmful, used + need, alpha_conf) <= room:
                    break
                need += 1
        else:
            need = 0
        for cid in seq[used:]:
            if len(nxt) >= len(take_unrev) + max(need, 0):
                break
            if cid not in reviewed and cid not in nxt:
                nxt.append(cid)
    if not acted.shape[0]:
        reason = "the model rules would stop nothing beyond the static limits in this period"
        cleared = True
        bound = estimate = 0.0
    elif cleared:
        reason = (
            f"cleared: at {confidence:.0%} confidence at most {bound:.4%} of legitimate requests "
            f"would be harmed (budget {budget:.3%})"
        )
    elif take_unrev:
        reason = (
            f"not yet: {len(take_unrev)} of the {len(take)} largest clients it would act on are "
            f"unreviewed; until then their {sum(hmap[c] for c in take_unrev):,} would-be stops "
            f"count as harm (bound {bound:.3%} > budget {budget:.3%})"
        )
    elif take_harm > budget * legit_low:
        reason = (
            f"refused: reviewed clients it would act on already lose {take_harm:,} legitimate "
            f"requests ({take_harm / legit_low:.3%} > budget {budget:.3%})"
        )
    else:
        reason = (
            f"not yet: bound {bound:.3%} > budget {budget:.3%} "
            f"({used} sampled client(s), {harmful} harmed); "
            f"{max(len(nxt) - len(take_unrev), 0)} more review(s) could settle it"
        )
    arithmetic = [
        f"period: {total:,} requests; legitimate at least {legit_low:,} (all, minus every request "
        f"of the {len(assumed_abusive):,} clients acted on, reviewed abusive or suspected, "
        "unless reviewed legitimate)",
        f"acted on: {len(acted):,} clients, {would:,} requests stopped beyond the static limits",
        f"take-all: {len(take)} largest clients ({covered:,} stops); reviewed harm "
        f"{take_harm - sum(hmap[c] for c in take_unrev):,} + unreviewed counted in full "
        f"{sum(hmap[c] for c in take_unrev):,} = {take_harm:,}",
        f"sampled: {len(rest_ids):,} clients, H_R = {h_r:,} stops; {used} PPS draws reviewed, "
        f"{harmful} harmful; Clopper-Pearson {confidence:.0%} upper share {f_up:.4f} -> "
        f"{h_r * f_up:,.1f}",
        f"bound = ({take_harm:,} + {h_r * f_up:,.1f}) / {legit_low:,} = {bound:.5%} "
        f"{'<=' if bound <= budget else '>'} budget {budget:.3%}",
    ]
    clients = acted.assign(
        stratum=np.where(acted["client_id"].astype(str).isin(take), "take-all", "sampled"),
        reviewed=acted["client_id"].astype(str).map(lambda c: reviewed.get(c, -1)),
    )
    return HarmReport(
        budget=budget,
        confidence=confidence,
        cleared=cleared,
        bound=float(bound),
        estimate=float(estimate),
        requests=total,
        legitimate_lower=int(legit_low),
        acted_clients=len(acted),
        would_stop=would,
        take_all=take,
        take_all_harm=int(take_harm),
        take_all_unreviewed=take_unrev,
        sampled_stop=h_r,
        draws_used=used,
        draws_harmful=harmful,
        sampled_upper_share=float(f_up),
        next_reviews=nxt,
        reason=reason,
        arithmetic=arithmetic,
        clients=clients.reset_index(drop=True),
    )
