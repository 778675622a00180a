"""Cold start: from a gateway's unlabelled traffic to enforcement, with a reviewer's answers.

For each seed:

1. **A data dir like a real gateway's.** ``--hist-days`` of simulated traffic of ``--clients``
   clients (the five abuse styles the labelling functions were written against) go in as
   telemetry and consumers only; the simulator's truth is written outside the data dir and
   read by two parties alone: the oracle reviewer (answering the exported queue, client by
   client, over the queue's period) and the scorer. Before any training the labels table
   holds review and weak rows only (checked).
2. **A later day** of the same clients with two abuse styles added to the simulator after the
   labelling functions were fixed (``carding`` and ``scalping``, ``--new-share`` each) is
   the period every round is judged on; its features are built, its truth stays outside.
3. **Day one**: the anomaly target is trained (no labels) and the label model runs; then
   review rounds (``--reviews``, cumulative): the queue of ``gatewise review export`` (the
   harm bound's clients first, then doubt and disagreement) is answered by the oracle and
   imported as ``source=review``; weak labels are redone (anchored by the reviews); the abuse
   model is retrained on all labels (``--budget`` s, ``--trials``) and made champion; the harm
   bound of the policy (static limits + the default score bands) is computed on the last day
   of history. The policy enforces the model only when the bound cleared; else the model stays
   in shadow.
4. **Judged on the later day**, per request, with the truth: abusive requests stopped and
   legitimate requests harmed as deployed (enforced or shadow), next to the static per-tier
   limits alone, and what the model would have done had it enforced without the bound.
5. **Transfer**: a champion trained with labels on another seed and style mix (no carding, no
   scalping, other shares) is judged the same way after each round: it must stay in shadow
   until its own bound clears, and it must never clear when its true harm on the later day is
   above the budget.

Usage: .venv/bin/python benchmarks/cold_start.py [--seeds 1 2 3] [--clients 1000]
           [--hist-days 2] [--reviews 0 25 50 100 150 200] [--budget 40] [--trials 5]
           [--no-transfer] [--no-save]
Results: one JSON line per seed in benchmarks/results/cold_start.jsonl, and a table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import time
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import machine, save_result

REPO = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 11, 2, tzinfo=UTC)
STOP = ("throttle", "block", "challenge")


def settings_for(root: Path, clients: int, days: float, seed: int, **sim: Any) -> Any:
    from config.settings import load_settings

    s = load_settings(REPO / "gatewise.yaml", data_dir=root / "data")
    scen = s.simulator.scenarios.model_copy(update=sim.pop("scenarios", {}))
    return s.model_copy(
        update={
            "simulator": s.simulator.model_copy(
                update={"clients": clients, "days": days, "seed": seed, "scenarios": scen, **sim}
            ),
            "targets": {
                **s.targets,
                "abuse": s.targets["abuse"].model_copy(update={"max_rows": 120_000}),
            },
        }
    )


def prepare(root: Path, a: argparse.Namespace, seed: int) -> dict[str, Any]:
    """History (telemetry + consumers; truth outside), the later day with the new styles,
    features for both, the Feast repo applied."""
    from features.build import build_windows
    from features.store import apply_definitions, feature_store
    from telemetry.simulator.output import run_simulation

    s = settings_for(root, a.clients, a.hist_days, seed, start=T0)
    hist = run_simulation(s, truth_dir=root / "truth" / "history")
    later_start = T0 + timedelta(days=a.hist_days)
    s_later = settings_for(
        root,
        a.clients,
        1.0,
        seed,
        start=later_start,
        traffic_seed=seed + 1000,
        scenarios={"carding": a.new_share, "scalping": a.new_share},
    )
    later = run_simulation(s_later, truth_dir=root / "truth" / "later")
    build_windows(s)
    apply_definitions(feature_store(s), s)
    truth_hist = hist.result.labels.to_pandas()
    truth_later = later.result.labels.to_pandas()
    for t in (truth_hist, truth_later):
        t["event_timestamp"] = pd.to_datetime(t["event_timestamp"], utc=True)
    later_file = root / "truth" / "later-labels.parquet"
    truth_later.to_parquet(later_file)
    return {
        "s": s,
        "truth_hist": truth_hist,
        "truth_later": truth_later,
        "later_file": later_file,
        "hist_end": later_start,
        "later_end": later_start + timedelta(days=1),
        "roles_later": later.result.clients.to_pandas().set_index("client_id")["role"],
    }


def oracle_answers(items: list[Any], truth: pd.DataFrame, path: Path) -> int:
    """The reviewer who knows: abusive when any of the client's windows in the queue's
    period was."""
    rows = []
    for it in items:
        t = truth[
            (truth["client_id"] == it.client_id)
            & (truth["event_timestamp"] >= pd.Timestamp(it.since))
            & (truth["event_timestamp"] < pd.Timestamp(it.until))
        ]
        lab = "abusive" if (t["label"] == 1).any() else "legitimate"
        rows.append({"client_id": it.client_id, "label": lab, "since": it.since, "until": it.until})
    pd.DataFrame(rows).to_csv(path, index=False)
    return len(rows)


def judge(s: Any, policy: Any, d: dict[str, Any], scores: pd.DataFrame | None) -> dict[str, Any]:
    """The policy on the later day, per request, against its truth."""
    from gateway.backtest import backtest

    r = backtest(
        policy,
        s.telemetry_dir,
        labels=d["later_file"],
        label_window_minutes=s.simulator.label_window_minutes,
        start=d["hist_end"],
        end=d["later_end"],
        scores=scores,
        counterfactuals=True,
    )
    o = r.outcome
    dec = r.decisions
    role = dec["client_id"].map(d["roles_later"])
    new = role.isin(["carding", "scalping"])
    ab = dec["abusive"] == 1
    stopped = dec["action"].isin(STOP)
    harmed_by_role = (
        dec[stopped & ~ab].groupby(role[stopped & ~ab]).size().sort_values(ascending=False)
    )
    missed_by_role = dec[~stopped & ab].groupby(role[~stopped & ab]).size()
    return {
        "harmed_by_role": {str(k): int(v) for k, v in harmed_by_role.head(5).items()},
        "missed_by_role": {str(k): int(v) for k, v in missed_by_role.items()},
        "stopped": o["abusive_stopped_share"],
        "harmed": o["legitimate_harmed_share"],
        "if_enforced_stopped": o.get("if_enforced", o)["abusive_stopped_share"],
        "if_enforced_harmed": o.get("if_enforced", o)["legitimate_harmed_share"],
        "new_styles_stopped": float(
            (dec["action"].isin(STOP) & ab & new).sum() / max((ab & new).sum(), 1)
        ),
    }


def policies(s: Any) -> tuple[Any, Any]:
    from gateway.policy import initial_policy

    base = initial_policy(s)
    static = base.model_copy(
        update={
            "targets": {
                **base.targets,
                "abuse": base.targets["abuse"].model_copy(update={"mode": "off"}),
            }
        }
    )
    return base, static


def adapted_policy(s: Any, base: Any, before: datetime) -> Any:
    """The limits monitoring would set from the history: per-tier limits and allowances for
    heavy clients, learnt from the traffic of clients nobody (reviewer or label model) calls
    abusive (``monitoring.policy.adapt_limits``)."""
    from monitoring.policy import adapt_limits

    rules = s.monitoring.policy.model_copy(update={"adapt_limits": True})
    prop = adapt_limits(
        base,
        s.telemetry_dir,
        s.labels_dir,
        before=before,
        floor=s.static_limits_per_minute,
        rules=rules,
    )
    return prop.policy


def with_mode(policy: Any, mode: str) -> Any:
    t = policy.targets["abuse"].model_copy(update={"mode": mode})
    return policy.model_copy(update={"targets": {**policy.targets, "abuse": t}})


def train_elsewhere(root: Path, a: argparse.Namespace, seed: int) -> Any:
    """A champion trained with labels on another seed and style mix (the transfer case)."""
    from features.build import build_windows
    from features.store import apply_definitions, feature_store
    from labeling.simulated import simulate_labelled
    from models.registry import load_alias, promote
    from models.train import train_target

    other = settings_for(
        root / "elsewhere",
        a.clients,
        a.hist_days,
        seed + 500,
        start=T0,
        scenarios={
            "credential_stuffing": 0.03,
            "scraping": 0.03,
            "flood": 0.02,
            "key_sharing": 0.0,
            "low_and_slow": 0.0,
        },
    )
    simulate_labelled(other)
    build_windows(other)
    apply_definitions(feature_store(other), other)
    r = train_target(other, "abuse", budget=a.budget, n_trials=a.trials)
    promote(other, "abuse", r.version, force=True)
    model, _ = load_alias(other, "abuse", "champion")
    return model


def register_transfer(s: Any, model: Any) -> str:
    """The elsewhere-trained model as a version of this data dir's abuse model."""
    import mlflow

    from models.tracking import client, ensure_experiment

    ensure_experiment(s, "abuse")
    name = s.registered_model("abuse")
    with mlflow.start_run(run_name="transfer: trained elsewhere"):
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            registered_model_name=name,
            serialization_format="cloudpickle",
            metadata={"target": "abuse", "task": "binary", "feature_service": "abuse_v1",
                      "features": list(getattr(model, "feature_names_in_", []))},
        )  # fmt: skip
    v = str(info.registered_model_version)
    client(s).set_model_version_tag(name, v, "feature_service", "abuse_v1")
    client(s).set_model_version_tag(name, v, "trained_elsewhere", "true")
    return v


def run_seed(a: argparse.Namespace, seed: int, transfer_model: Any) -> dict[str, Any]:
    from flows.weak import anomaly_scorer
    from labeling.io import import_labels
    from labeling.review import build_queue
    from labeling.store import LabelStore
    from labeling.weak import weak_labels
    from models.registry import promote
    from models.train import train_target
    from monitoring.validation import validate
    from serving.batch import score_windows

    root = Path(tempfile.mkdtemp(prefix=f"cold-start-{seed}-"))
    t0 = time.perf_counter()
    d = prepare(root, a, seed)
    s = d["s"]
    base, static = policies(s)
    static_out = judge(s, static, d, None)
    hist_last = (d["hist_end"] - timedelta(days=1), d["hist_end"])
    # day one: the anomaly target (no labels)
    train_target(s, "anomaly")
    promote(s, "anomaly", None, force=True)
    scorer, _ = anomaly_scorer(s)
    rounds = []
    reviewed = 0
    transfer_v = register_transfer(s, transfer_model) if transfer_model is not None else None
    for target_reviews in a.reviews:
        r0 = time.perf_counter()
        if target_reviews > reviewed:
            harm_first: list[str] = []
            with contextlib.suppress(LookupError):  # the current champion's bound asks first
                harm_first = validate(
                    s, target="abuse", since=hist_last[0], until=hist_last[1]
                ).harm.next_reviews
            items = build_queue(s, *hist_last, n=target_reviews - reviewed, harm_reviews=harm_first)
            items = items[: target_reviews - reviewed]
            f = root / f"answers-{target_reviews}.csv"
            reviewed += oracle_answers(items, d["truth_hist"], f)
            import_labels(s, f, source="review", level="client", labelled_by="oracle")
        sources = set(LabelStore(s.labels_dir).read().column("source").to_pylist())
        assert sources <= {"review", "weak"}, f"truth leaked into the labels table: {sources}"
        weak = weak_labels(s, anomaly=scorer)
        tr = train_target(s, "abuse", labels="all", budget=a.budget, n_trials=a.trials)
        promote(s, "abuse", tr.version, force=True)
        adapted = adapted_policy(s, base, d["hist_end"])
        v = validate(
            s, target="abuse", policy=adapted, since=hist_last[0], until=hist_last[1], scores=None
        )
        later_scores, _ = score_windows(
            s, "abuse", "champion", since=d["hist_end"], until=d["later_end"]
        )
        deployed = with_mode(adapted, "enforce" if v.harm.cleared else "shadow")
        out = judge(s, deployed, d, later_scores)
        limits_only = judge(s, with_mode(adapted, "off"), d, None)
        row = {
            "reviews": reviewed,
            "bound": v.harm.bound,
            "cleared": v.harm.cleared,
            "acted_clients": v.harm.acted_clients,
            "weak_prior": weak.prior,
            "model_version": tr.version,
            **{f"deployed_{k}": x for k, x in out.items() if not k.startswith("if_")},
            "static_harmed_by_role": static_out["harmed_by_role"],
            "unbounded_stopped": out["if_enforced_stopped"],
            "unbounded_harmed": out["if_enforced_harmed"],
            "limits_only_stopped": limits_only["stopped"],
            "limits_only_harmed": limits_only["harmed"],
            "allowances": len(adapted.allowances),
            "seconds": round(time.perf_counter() - r0, 1),
        }
        if transfer_v is not None:
            tv = validate(
                s,
                target="abuse",
                policy=adapted.model_copy(
                    update={
                        "targets": {
                            **adapted.targets,
                            "abuse": adapted.targets["abuse"].model_copy(
                                update={"model_version": transfer_v}
                            ),
                        }
                    }
                ),
                since=hist_last[0],
                until=hist_last[1],
            )
            t_scores, _ = score_windows(
                s, "abuse", transfer_v, since=d["hist_end"], until=d["later_end"]
            )
            t_out = judge(s, with_mode(adapted, "enforce"), d, t_scores)
            row |= {
                "transfer_bound": tv.harm.bound,
                "transfer_cleared": tv.harm.cleared,
                "transfer_true_harm": t_out["if_enforced_harmed"],
                "transfer_true_stopped": t_out["if_enforced_stopped"],
            }
        rounds.append(row)
        print(json.dumps({"seed": seed, **row}), flush=True)
    shutil.rmtree(root, ignore_errors=True)
    return {
        "seed": seed,
        "static": static_out,
        "rounds": rounds,
        "first_cleared_at": next((r["reviews"] for r in rounds if r["cleared"]), None),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def table(results: list[dict[str, Any]], budget: float) -> str:
    lines = [
        "| seed | reviews | bound | enforced | stopped | harmed | new styles stopped | "
        "without the bound: stopped / harmed | static: stopped / harmed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        st = res["static"]
        for r in res["rounds"]:
            lines.append(
                f"| {res['seed']} | {r['reviews']} | {r['bound']:.3%} | "
                f"{'yes' if r['cleared'] else 'no (shadow)'} | {r['deployed_stopped']:.1%} | "
                f"{r['deployed_harmed']:.3%} | {r['deployed_new_styles_stopped']:.1%} | "
                f"{r['unbounded_stopped']:.1%} / {r['unbounded_harmed']:.3%} | "
                f"{st['stopped']:.1%} / {st['harmed']:.3%} |"
            )
    lines.append(f"\nbudget {budget:.1%} of legitimate requests at 95 % confidence")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--hist-days", type=float, default=2.0)
    ap.add_argument("--new-share", type=float, default=0.01)
    ap.add_argument("--reviews", type=int, nargs="+", default=[0, 25, 50, 100, 150, 200])
    ap.add_argument("--budget", type=float, default=40.0)
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--no-transfer", action="store_true")
    ap.add_argument("--no-save", action="store_true")
    a = ap.parse_args()
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    results = []
    for seed in a.seeds:
        transfer = None
        if not a.no_transfer:
            tmp = Path(tempfile.mkdtemp(prefix=f"cold-start-elsewhere-{seed}-"))
            transfer = train_elsewhere(tmp, a, seed)
            shutil.rmtree(tmp, ignore_errors=True)
        results.append(run_seed(a, seed, transfer))
    from config.settings import load_settings

    budget = load_settings(REPO / "gatewise.yaml").labeling.harm.share
    print(table(results, budget))
    if not a.no_save:
        for res in results:
            save_result("cold_start", {"at": datetime.now(UTC).isoformat(), "machine": machine(),
                                       "args": vars(a), **res})  # fmt: skip


if __name__ == "__main__":
    main()
