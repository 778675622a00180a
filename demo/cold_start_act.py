"""The cold-start act of ``gatewise demo``: a gateway with no labels at all.

A second, small data dir (``<data_dir>/cold-start``) gets a day of traffic as a real gateway
would give it (telemetry and consumers; the simulator's truth is kept outside it, in
``<data_dir>/cold-start-truth``, for the stand-in reviewer alone). Then, as a new user would:
the day-one anomaly model (no labels), weak labels from the labelling functions, a review
queue answered by the stand-in reviewer (it knows the truth), a model trained on weak and
reviewed labels, and the harm bound that decides whether it may enforce: it stays in shadow
until the bound clears, and the act says which reviews would settle it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console

from config.settings import Settings
from demo.steps import table, train, weak_labels

__all__ = ["cold_start_demo"]


def _oracle(items: list[Any], truth: pd.DataFrame, path: Path) -> None:
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


def cold_start_demo(console: Console, s0: Settings, config: Path | None, reviews: int = 30) -> None:
    from features.build import build_windows
    from features.store import apply_definitions, feature_store
    from labeling.io import import_labels
    from labeling.review import build_queue, queue_csv
    from labeling.store import LabelStore
    from models.registry import promote
    from monitoring.validation import validate
    from telemetry.simulator.output import run_simulation

    s = s0.model_copy(
        update={
            "data_dir": s0.data_dir / "cold-start",
            "simulator": s0.simulator.model_copy(
                update={"clients": min(s0.simulator.clients, 500), "days": 1.0, "seed": 101}
            ),
        }
    )
    truth_dir = s0.data_dir / "cold-start-truth"
    with console.status("a day of a new gateway's traffic (telemetry and consumers, no labels)..."):
        run = run_simulation(s, truth_dir=truth_dir)
        build_windows(s)
        apply_definitions(feature_store(s), s)
    truth = run.result.labels.to_pandas()
    truth["event_timestamp"] = pd.to_datetime(truth["event_timestamp"], utc=True)
    console.print(
        f"{run.result.events.num_rows:,} requests of {s.simulator.clients} clients in {s.data_dir}; "
        f"labels there: {LabelStore(s.labels_dir).read().num_rows} (the truth is in {truth_dir}, "
        "for the stand-in reviewer only)"
    )
    console.print("[bold]day one[/]: the anomaly target, learnt without labels")
    a = train(console, s, config, "anomaly", None, None, 1, 0)
    promote(s, "anomaly", a.version)
    weak_labels(console, s, config)
    items = build_queue(s, n=reviews)
    q = queue_csv(items)
    console.print(
        table(
            f"review queue: the {len(items)} clients whose answer would change the most",
            [
                {str(k): v for k, v in r.items()}
                for r in q[["rank", "client_id", "reason", "requests", "p_abusive", "functions"]]
                .head(8)
                .to_dict("records")
            ],
        )
    )
    answers = s.data_dir / "review-answers.csv"
    _oracle(items, truth, answers)
    r = import_labels(s, answers, source="review", level="client", labelled_by="demo reviewer")
    console.print(
        f"the stand-in reviewer answered {r.imported_rows} clients ({r.abusive_windows:,} abusive "
        f"windows); in a team: the dashboard's /review page or `gatewise review export`"
    )
    weak_labels(console, s, config)
    m = train(console, s, config, "abuse", min(45.0, s.target("abuse").time_budget_s), None, 1, 0)
    if m.eligible:
        promote(s, "abuse", m.version)
        console.print(f"v{m.version} is champion; whether it may act is the harm bound's call:")
    else:
        console.print(
            f"v{m.version} stays a challenger (its gate refused it); the harm bound still says "
            "what it would do:"
        )
    from gateway.policy import initial_policy

    base = initial_policy(s)
    policy = base.model_copy(
        update={
            "targets": {
                **base.targets,
                "abuse": base.targets["abuse"].model_copy(update={"model_version": m.version}),
            }
        }
    )
    try:
        v = validate(s, target="abuse", policy=policy)
    except LookupError as exc:
        console.print(f"harm bound not judged: {exc}")
        return
    h = v.harm
    for line in h.arithmetic:
        console.print(f"  {line}")
    console.print(("[green]" if h.cleared else "[yellow]") + h.reason + "[/]")
    if not h.cleared:
        console.print(
            f"the model stays in shadow; {len(h.next_reviews)} review(s) would settle it "
            f"(first: {', '.join(h.next_reviews[:5])}); `gatewise harm check --publish` enforces it "
            "once the bound clears"
        )
