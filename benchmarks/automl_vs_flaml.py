"""gatewise AutoML against FLAML: same data, same splits, same wall-clock budget, same n_jobs.

Datasets: the simulated abuse task (features through Feast) and the four real
tabular sets in ../shared/data/tabular. For each dataset and seed, 20 % of the rows
are a test set neither system sees; both get the other 80 %, the same budget and one
core. gatewise runs its ``automl fit`` path (``models.train.run_automl`` with
``refit_on_holdout``: search, its own holdout verdict, the refit on every row it was
given, MLflow logging and registration, all inside its wall time; plots and importance
follow registration and are not counted) and FLAML runs ``AutoML.fit`` with its
defaults (LightGBM installed; it retrains the winner on every row too). Both are
scored by ROC AUC on the test set.

Usage: .venv/bin/python benchmarks/automl_vs_flaml.py [--budget 60] [--seeds 0 1 2] [--datasets adult german] [--parallel]
``--parallel`` runs the two side by side, one core each (n_jobs 1 for both, as
always), which halves the wall time of a long run on a 2-core machine.
Results are appended as JSON lines to benchmarks/results/automl_vs_flaml.jsonl.
"""

from __future__ import annotations

import argparse
import bz2
import json
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import machine
from config.settings import load_settings
from config.targets import TargetSettings
from models.data import Dataset
from models.search import make_splits, score

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "tabular"
ADULT_COLS = [
    "age",
    "workclass",
    "fnlwgt",
    "education",
    "education_num",
    "marital_status",
    "occupation",
    "relationship",
    "race",
    "sex",
    "capital_gain",
    "capital_loss",
    "hours_per_week",
    "native_country",
    "income",
]


def adult() -> Dataset:
    df = pd.read_csv(SHARED / "adult.data", names=ADULT_COLS, skipinitialspace=True).dropna()
    return Dataset(
        X=df.drop(columns=["income", "sex", "race"]),
        y=(df["income"] == ">50K").astype(int),
        task="binary",
        sensitive=df[["sex", "race"]].reset_index(drop=True),
        name="adult",
    )


def german() -> Dataset:
    df = pd.read_csv(SHARED / "german.data", sep=r"\s+", header=None)
    y = (df[20] == 2).astype(int)  # 2 = bad credit
    X = df.drop(columns=[20, 8]).rename(columns=str)
    return Dataset(
        X=X,
        y=y,
        task="binary",
        sensitive=df[[8]].rename(columns={8: "personal_status_sex"}).astype(str),
        name="german",
    )


def loanapp() -> Dataset:
    with bz2.open(SHARED / "loanapp.csv.bz2", "rt") as fh:
        df = pd.read_csv(fh)
    y = df["approve"].astype(int)
    leak = ["approve", "reject", "action"]  # the decision itself, in other words
    sens = ["white", "black", "hispan", "male"]
    return Dataset(
        X=df.drop(columns=leak + sens),
        y=y,
        task="binary",
        sensitive=df[["white", "male"]].astype(str),
        name="loanapp",
    )


def arrests() -> Dataset:
    with zipfile.ZipFile(SHARED / "arrests.zip") as z, z.open(z.namelist()[0]) as fh:
        df = pd.read_csv(fh)
    y = (df["released"] == "Yes").astype(int)
    return Dataset(
        X=df.drop(columns=["released", "colour", "sex"]),
        y=y,
        task="binary",
        sensitive=df[["colour", "sex"]].reset_index(drop=True),
        name="arrests",
    )


def abuse(tmp: Path) -> Dataset:
    """Simulated traffic → window features → Feast point-in-time training set."""
    from features.build import build_windows
    from features.store import apply_definitions, feature_store
    from labeling.simulated import simulate_labelled
    from models.data import target_dataset

    s = load_settings(REPO / "gatewise.yaml", data_dir=tmp / "abuse")
    s = s.model_copy(
        update={
            "simulator": s.simulator.model_copy(update={"clients": 800, "days": 1.0, "seed": 3})
        }
    )
    simulate_labelled(s)
    build_windows(s)
    apply_definitions(feature_store(s), s)
    t = s.target("abuse").model_copy(update={"max_rows": 60_000})
    return target_dataset(s, "abuse", t)


LOADERS = {"abuse": abuse, "adult": adult, "german": german, "loanapp": loanapp, "arrests": arrests}


def run_flaml(
    ds: Dataset, fit: np.ndarray, hold: np.ndarray, budget: float, seed: int
) -> tuple[float, float, str]:
    from flaml import AutoML

    X = ds.X.copy()
    for c in X.columns:
        if not pd.api.types.is_numeric_dtype(X[c]):
            X[c] = X[c].astype("category")
    a = AutoML()
    t = time.perf_counter()
    a.fit(
        X.iloc[fit],
        ds.y.iloc[fit],
        task="classification",
        metric="roc_auc",
        time_budget=budget,
        n_jobs=1,
        seed=seed,
        verbose=0,
    )
    wall = time.perf_counter() - t
    p = a.predict_proba(X.iloc[hold])[:, 1]
    return score("roc_auc", ds.y.iloc[hold].to_numpy(), p), wall, str(a.best_estimator)


TRIALS: dict[tuple[str, int], tuple[int, int, float]] = {}  # (trials, skipped, to registration)


def outer_split(ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """The test set neither system sees: the most recent 20 % when rows carry time (gatewise
    splits the rest by client and time itself), else a stratified 20 %."""
    if ds.time is not None:
        t = pd.to_datetime(ds.time, utc=True)
        cut = t.quantile(0.8)
        idx = np.arange(len(t))
        return idx[(t < cut).to_numpy()], idx[(t >= cut).to_numpy()]
    s = make_splits(ds)
    return s.fit, s.holdout


def run_ours(
    ds: Dataset,
    fit: np.ndarray,
    hold: np.ndarray,
    budget: float,
    seed: int,
    tmp: Path,
    ensemble: int = 5,
) -> tuple[float, float, str]:
    """gatewise on the ``fit`` rows only; scored on ``hold`` by the registered model."""
    from models.search import predict
    from models.train import run_automl, wait_for_reports

    s = load_settings(REPO / "gatewise.yaml", data_dir=tmp / f"ours-{ds.name}-{seed}")
    target = TargetSettings(
        task="binary",
        entity="client",
        feature_service="",
        metric="roc_auc",
        sensitive_features=list(ds.sensitive.columns),
        refit_on_holdout=True,
        ensemble=ensemble,
    )
    t = time.perf_counter()
    r = run_automl(
        s,
        ds.take(fit),
        ds.name,
        target,
        budget=budget,
        seed=seed,
        started=t,
        background_reports=True,
    )
    wall = time.perf_counter() - t
    wait_for_reports()
    import mlflow

    mlflow.set_tracking_uri(s.mlflow_uri)
    model = mlflow.sklearn.load_model(f"models:/{r.model_name}/{r.version}")
    p = predict(model, "binary", ds.X.iloc[hold])
    best = str(r.best_params.get("family"))
    if type(model).__name__ == "MeanEnsemble":
        best = (
            "ensemble("
            + "+".join(
                type(m.steps[-1][1]).__name__.replace("Classifier", "") for m in model.members
            )
            + ")"
        )
    TRIALS[ds.name, seed] = (r.trials, r.skipped_for_budget, r.seconds)
    return score("roc_auc", ds.y.iloc[hold].to_numpy(), p), wall, best


def table(path: Path, budget: float, datasets: list[str], label: str | None = None) -> str:
    """Markdown of the latest recorded row per dataset and seed at ``budget``."""
    rows: dict[tuple[str, int], dict] = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        if (
            r["budget_s"] == budget
            and r["dataset"] in datasets
            and r.get("protocol") == "test-set"
            and (label is None or r.get("label") == label)
        ):
            rows[(r["dataset"], r["seed"])] = r
    head = (
        "| dataset | rows | seed | gatewise ROC AUC | FLAML ROC AUC | ratio | gatewise wall s "
        "| FLAML wall s | best (gatewise / FLAML) |\n|---|---|---|---|---|---|---|---|---|"
    )
    lines, by_ds = [head], {}
    for (ds, seed), r in sorted(rows.items(), key=lambda kv: (datasets.index(kv[0][0]), kv[0][1])):
        by_ds.setdefault(ds, []).append(r["ratio"])
        lines.append(
            f"| {ds} | {r['rows']:,} | {seed} | {r['gatewise_roc_auc']:.4f} | {r['flaml_roc_auc']:.4f} "
            f"| {r['ratio']:.3f} | {r['gatewise_wall_s']:.0f} | {r['flaml_wall_s']:.0f} "
            f"| {r['gatewise_best']} / {r['flaml_best']} |"
        )
    allr = [x for v in by_ds.values() for x in v]
    means = ", ".join(f"{k} {np.mean(v):.3f}" for k, v in by_ds.items())
    wins = sum(x > 1 for x in allr)
    walls = [r["gatewise_wall_s"] / budget for r in rows.values()]
    fwalls = [r["flaml_wall_s"] / budget for r in rows.values()]
    lines.append(
        f"\nMean ratio gatewise/FLAML: {means}; **overall {np.mean(allr):.3f} "
        f"(gatewise ahead in {wins} of {len(allr)})**. Wall clock / budget: gatewise max "
        f"{max(walls):.2f} (mean {np.mean(walls):.2f}), FLAML max {max(fwalls):.2f}."
    )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=60)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--datasets", nargs="+", default=list(LOADERS))
    ap.add_argument("--parallel", action="store_true", help="gatewise and FLAML side by side")
    ap.add_argument("--label", default="", help="a name for this run's rows (e.g. the change)")
    ap.add_argument(
        "--ensemble", type=int, default=5, help="gatewise's ensemble size (automl fit: 5)"
    )
    ap.add_argument(
        "--table", action="store_true", help="print the markdown table of recorded rows and exit"
    )
    args = ap.parse_args()
    out = REPO / "benchmarks" / "results" / "automl_vs_flaml.jsonl"
    if args.table:
        print(table(out, args.budget, args.datasets, args.label or None))
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp())
    mode = "side by side, one core each" if args.parallel else "one after the other"
    print(f"machine: {machine()}; budget {args.budget:g}s; n_jobs 1 for both; {mode}", flush=True)
    print(
        f"{'dataset':9s} {'seed':>4s} {'gatewise':>9s} {'flaml':>7s} {'ratio':>6s}  {'ours wall':>9s} {'flaml wall':>10s}  best (ours / flaml)",
        flush=True,
    )
    try:
        for name in args.datasets:
            ds = LOADERS[name](tmp) if name == "abuse" else LOADERS[name]()  # type: ignore[operator]
            fit_rows, test_rows = outer_split(ds)
            for seed in args.seeds:
                if args.parallel:
                    import concurrent.futures as cf
                    import multiprocessing as mp

                    with cf.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as ex:
                        fut = ex.submit(run_flaml, ds, fit_rows, test_rows, args.budget, seed)
                        ours, w_ours, fam = run_ours(
                            ds, fit_rows, test_rows, args.budget, seed, tmp, args.ensemble
                        )
                        theirs, w_flaml, est = fut.result()
                else:
                    ours, w_ours, fam = run_ours(
                        ds, fit_rows, test_rows, args.budget, seed, tmp, args.ensemble
                    )
                    theirs, w_flaml, est = run_flaml(ds, fit_rows, test_rows, args.budget, seed)
                rec = {
                    "dataset": name,
                    "seed": seed,
                    "budget_s": args.budget,
                    "parallel": args.parallel,
                    "gatewise_roc_auc": ours,
                    "flaml_roc_auc": theirs,
                    "ratio": ours / theirs,
                    "gatewise_wall_s": w_ours,
                    "flaml_wall_s": w_flaml,
                    "gatewise_best": fam,
                    "flaml_best": est,
                    "rows": len(ds.y),
                    "holdout_rows": len(test_rows),
                    "ensemble": args.ensemble,
                    "gatewise_trials": TRIALS.get((ds.name, seed), (0, 0, 0.0))[0],
                    "gatewise_skipped_for_budget": TRIALS.get((ds.name, seed), (0, 0, 0.0))[1],
                    "protocol": "test-set",  # both train on the 80 %, the test 20 % unseen
                    "label": args.label,
                }
                with open(out, "a") as fh:
                    fh.write(json.dumps(rec) + "\n")
                print(
                    f"{name:9s} {seed:>4d} {ours:9.4f} {theirs:7.4f} {ours / theirs:6.3f}  {w_ours:9.1f} {w_flaml:10.1f}  {fam} / {est}",
                    flush=True,
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
