"""The harm bound: its arithmetic, its reviews, and that it holds at its stated confidence."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from labeling.harm import clopper_pearson_upper, harm_bound


def _population(rng: np.random.Generator, n_acted: int, legit_share: float, total: int):
    """``n_acted`` clients the rules would act on (heavy-tailed would-be stops; a share of
    them legitimate) among ``total`` requests."""
    h = np.maximum(1, rng.pareto(1.5, n_acted) * 20).astype(int)
    legit = rng.random(n_acted) < legit_share
    acted = pd.DataFrame(
        {"client_id": [f"a{i}" for i in range(n_acted)], "requests": h * 3, "would_stop": h}
    )
    rest = total - int(acted["requests"].sum())
    others = pd.DataFrame(
        {"client_id": [f"o{i}" for i in range(200)], "requests": rest // 200, "would_stop": 0}
    )
    truth = dict(zip(acted["client_id"], (~legit).astype(int), strict=True))
    return pd.concat([acted, others], ignore_index=True), truth


def test_clopper_pearson():
    assert clopper_pearson_upper(0, 0) == 1.0
    assert clopper_pearson_upper(0, 59) == pytest.approx(1 - 0.05 ** (1 / 59), rel=1e-6)
    assert clopper_pearson_upper(3, 100) > 0.03
    assert clopper_pearson_upper(5, 5) == 1.0


def test_nothing_reviewed_counts_everything_and_asks_for_the_largest_first():
    rng = np.random.default_rng(0)
    pc, _ = _population(rng, 300, 0.1, 1_000_000)
    r = harm_bound(pc, budget=0.001)
    assert not r.cleared and r.draws_used == 0 and r.sampled_upper_share == 1.0
    assert r.take_all_harm == int(pc.nlargest(len(r.take_all), "would_stop")["would_stop"].sum())
    # the unreviewed take-all clients come first, then draws
    assert r.next_reviews[: len(r.take_all)] == r.take_all
    assert len(r.next_reviews) > len(r.take_all)
    assert any("Clopper-Pearson" in line for line in r.arithmetic)


def test_answering_the_asked_reviews_clears_an_accurate_policy():
    rng = np.random.default_rng(1)
    pc, truth = _population(rng, 400, 0.0, 5_000_000)  # every acted-on client is abusive
    reviewed: dict[str, int] = {}
    r = harm_bound(pc, reviewed=reviewed, budget=0.001)
    rounds = 0
    while not r.cleared and rounds < 20:
        for c in r.next_reviews:
            reviewed[c] = truth[c]
        r = harm_bound(pc, reviewed=reviewed, budget=0.001)
        rounds += 1
    assert r.cleared and r.bound <= 0.001
    assert len(reviewed) < 200  # far fewer than the clients it acts on
    assert "cleared" in r.reason


def test_reviewed_legitimate_harm_above_budget_is_refused():
    rng = np.random.default_rng(2)
    pc, truth = _population(rng, 100, 0.0, 200_000)
    big = pc.nlargest(1, "would_stop")["client_id"].item()
    reviewed = {c: truth[c] for c in pc["client_id"] if c.startswith("a")}
    reviewed[big] = 0  # the biggest is a legitimate heavy user
    r = harm_bound(pc, reviewed=reviewed, budget=0.001)
    assert not r.cleared and r.reason.startswith("refused")


def test_the_draws_do_not_depend_on_who_asks():
    rng = np.random.default_rng(3)
    pc, _ = _population(rng, 200, 0.2, 1_000_000)
    a = harm_bound(pc, budget=0.001, salt="abuse:4")
    b = harm_bound(pc.sample(frac=1, random_state=1), budget=0.001, salt="abuse:4")
    assert a.next_reviews == b.next_reviews or set(a.take_all) == set(b.take_all)


def test_the_bound_holds_at_its_confidence():
    """Many random populations with a true legitimate share just above what the budget
    allows: reviews answered truthfully in the order asked; the bound must be at least the
    true harmed share in at least 95 % of them (it is conservative, so it should be more)."""
    misses = 0
    trials = 200
    for t in range(trials):
        rng = np.random.default_rng(100 + t)
        pc, truth = _population(rng, 300, 0.03, 2_000_000)
        reviewed: dict[str, int] = {}
        r = harm_bound(pc, reviewed=reviewed, budget=0.001, max_take_all=10, salt=str(t))
        for c in r.next_reviews[:40]:
            reviewed[c] = truth[c]
        r = harm_bound(pc, reviewed=reviewed, budget=0.001, max_take_all=10, salt=str(t))
        acted = pc[pc["would_stop"] > 0]
        true_harm = int(acted.loc[acted["client_id"].map(truth) == 0, "would_stop"].sum())
        if r.bound * r.legitimate_lower < true_harm:
            misses += 1
    assert misses <= 0.05 * trials


def test_a_policy_that_acts_on_no_one_is_cleared():
    pc = pd.DataFrame({"client_id": ["x", "y"], "requests": [10, 20], "would_stop": [0, 0]})
    r = harm_bound(pc)
    assert r.cleared and r.bound == 0 and "nothing" in r.reason
