"""Bands that act: score bands chosen by what they do to labelled traffic.

A band is a score cut and an action; what matters is its effect: a throttle to a share of
the tier's limit stops nothing of a client already under that rate, a throttle to a few
requests a minute or a block does. ``choose_bands`` replays the labelled period through the
decision core under each candidate set of bands (a grid of cuts; throttles as absolute rates;
blocks) with the target's rules enforced, and keeps the set that stops the most abusive
requests without harming more legitimate requests than the current bands (plus
``harm_tolerance``). Only clients some band could act on are replayed (every limit is per
client), and the result is reported band by band: what each stopped and harmed.

    proposal, table = choose_bands(policy, telemetry, labels, scores, start=..., end=...)
"""

from __future__ import annotations

import itertools
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from config.monitoring import PolicyRules

__all__ = ["candidate_bands", "choose_bands"]


def candidate_bands(rules: PolicyRules) -> list[list[dict[str, Any]]]:
    """The grid: a block above a cut; a throttle to an absolute rate above a cut, alone or
    under a block band."""
    cuts = sorted(rules.band_cuts)
    rates = sorted(rules.band_throttle_rates)
    out: list[list[dict[str, Any]]] = []
    for c in cuts:
        out.append([{"min_score": c, "action": "block"}])
        for r in rates:
            out.append([{"min_score": c, "action": "throttle", "requests_per_minute": r}])
    for c1, c2 in itertools.combinations(cuts, 2):
        if c2 < 0.9:
            continue
        for r in rates:
            out.append(
                [
                    {"min_score": c1, "action": "throttle", "requests_per_minute": r},
                    {"min_score": c2, "action": "block"},
                ]
            )
    return out


def _describe(bands: list[Any]) -> str:
    parts = []
    for b in bands:
        if b.action == "throttle":
            rate = (
                f"{b.requests_per_minute}/min"
                if b.requests_per_minute is not None
                else f"x{b.limit_factor:g}"
            )
            parts.append(f">= {b.min_score:g} throttle {rate}")
        else:
            parts.append(f">= {b.min_score:g} {b.action}")
    return ", ".join(parts) or "none"


def choose_bands(
    current: Any,
    telemetry: Path,
    labels: Path,
    scores: pd.DataFrame,
    *,
    target: str = "abuse",
    rules: PolicyRules | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    label_window_minutes: int = 5,
) -> tuple[Any, pd.DataFrame]:
    """The proposal (``monitoring.policy.Proposal``) and the candidates' table."""
    from gateway.backtest import as_enforced, backtest
    from gateway.policy import Band
    from monitoring.policy import Change, Proposal

    rules = rules or PolicyRules()
    tp = current.targets.get(target)
    if tp is None or tp.mode == "off" or scores is None or not len(scores):
        return Proposal(current), pd.DataFrame()
    key = "client_id" if "client_id" in scores.columns else "entity"
    best = scores.groupby(key)["score"].max()
    grid = candidate_bands(rules)
    floor = min(
        [b["min_score"] for cand in grid for b in cand]
        + [b.min_score for b in tp.bands if b.action not in ("allow", "log")]
    )
    subset = sorted(str(c) for c in best[best >= floor].index)
    if not subset:
        return Proposal(current), pd.DataFrame()
    sc = scores.rename(columns={key: "client_id"})[["client_id", "event_timestamp", "score"]]
    kw: dict[str, Any] = {
        "labels": labels,
        "label_window_minutes": label_window_minutes,
        "start": start,
        "end": end,
        "target": target,
        "scores": sc,
        "clients": subset,
        "counterfactuals": False,
    }

    def enforced(bands: list[Any]) -> Any:
        t = tp.model_copy(update={"bands": bands, "mode": "enforce"})
        return current.model_copy(update={"targets": {**current.targets, target: t}})

    base_policy = as_enforced(current, target) or current
    base = backtest(base_policy, telemetry, **kw)
    if not base.outcome:
        return Proposal(current), pd.DataFrame()
    o0 = base.outcome
    rows = [
        {
            "bands": _describe(tp.bands) + " (current)",
            "abusive_stopped": o0["abusive_stopped"],
            "legitimate_harmed": o0["legitimate_harmed"],
            "current": True,
        }
    ]
    chosen: list[Any] | None = None
    best_row = (o0["abusive_stopped"], -o0["legitimate_harmed"])
    allowed = o0["legitimate_harmed"] + rules.harm_tolerance * max(o0["legitimate_requests"], 1)
    for cand in grid:
        bands = [Band.model_validate(b) for b in cand]
        o = backtest(enforced(bands), telemetry, **kw).outcome
        rows.append(
            {
                "bands": _describe(bands),
                "abusive_stopped": o["abusive_stopped"],
                "legitimate_harmed": o["legitimate_harmed"],
                "current": False,
            }
        )
        if (
            o["legitimate_harmed"] <= allowed
            and (
                o["abusive_stopped"],
                -o["legitimate_harmed"],
            )
            > best_row
        ):
            chosen, best_row = bands, (o["abusive_stopped"], -o["legitimate_harmed"])
    table = pd.DataFrame(rows)
    table["abusive_requests"] = o0["abusive_requests"]
    table["legitimate_requests"] = o0["legitimate_requests"]
    if chosen is None:
        return Proposal(current), table
    new_t = tp.model_copy(update={"bands": chosen, "raised": False})
    policy = current.model_copy(update={"targets": {**current.targets, target: new_t}})
    gain = best_row[0] - o0["abusive_stopped"]
    reason = (
        f"replayed on the labelled period ({len(subset)} clients a band could act on, enforced): "
        f"{_describe(chosen)} stops {best_row[0]:,} abusive requests ({gain:+,} vs "
        f"{_describe(tp.bands)}) and harms {-best_row[1]:,} legitimate ones "
        f"(current {o0['legitimate_harmed']:,})"
    )
    return Proposal(policy, [Change("bands", f"{target}: {_describe(chosen)}", reason)]), table
