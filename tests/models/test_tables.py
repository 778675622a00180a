"""A data scientist's own tables: read by content, the label's task and positive class
decided and said, multiclass and regression end to end, and the budget's clock."""

from __future__ import annotations

import bz2
import gzip
import io
import time

import numpy as np
import optuna
import pandas as pd
import pytest
from rich.console import Console

from models.data import DataQualityError, load_table, read_table
from models.search import score


def _credit(n: int = 600, seed: int = 0) -> pd.DataFrame:
    """A credit-like table: a text label (good/bad, bad the rarer), a 3-class text column,
    an integer count, a continuous amount, an id column and some missing values."""
    rng = np.random.default_rng(seed)
    income = rng.lognormal(10, 0.5, n)
    debt = rng.uniform(0, 1, n)
    risk = debt * 2 - np.log(income) / 10 + rng.normal(0, 0.3, n)
    housing = np.where(risk > 0.2, "rent", np.where(risk > -0.3, "mortgage", "own"))
    housing = np.where(rng.random(n) < 0.15, rng.choice(["rent", "own", "mortgage"], n), housing)
    df = pd.DataFrame(
        {
            "customer_id": np.arange(100_000, 100_000 + n),
            "income": income,
            "debt_ratio": debt,
            "age": rng.integers(18, 80, n),
            "region": rng.choice(["north", "south", "east"], n),
            "housing": housing,
            "loans": rng.integers(0, 4, n),
            "amount": income * debt * rng.uniform(0.5, 1.5, n),
            "credit": np.where(risk > np.quantile(risk, 0.7), "bad", "good"),
        }
    )
    df.loc[rng.random(n) < 0.05, "age"] = np.nan
    return df


@pytest.mark.parametrize(
    "name, write, how",
    [
        ("table.pq", lambda df, p: df.to_parquet(p), "Parquet"),
        ("mislabelled.csv", lambda df, p: df.to_parquet(p), "Parquet"),  # the name lies
        (
            "t.csv.gz",
            lambda df, p: p.write_bytes(gzip.compress(df.to_csv(index=False).encode())),
            "gzip",
        ),
        (
            "t.txt",
            lambda df, p: p.write_bytes(bz2.compress(df.to_csv(index=False, sep=";").encode())),
            "semicolon",
        ),
        ("t.tsv", lambda df, p: df.to_csv(p, index=False, sep="\t"), "tab"),
        ("t.json", lambda df, p: df.to_json(p, orient="records", lines=True), "JSON lines"),
    ],
)
def test_tables_are_read_by_content_not_by_name(tmp_path, name, write, how):
    df = _credit(100)
    p = tmp_path / name
    write(df, p)
    got, said = read_table(p)
    assert how in said
    assert list(got.columns) == list(df.columns) and len(got) == len(df)
    assert got["credit"].tolist() == df["credit"].tolist()


def test_a_headerless_whitespace_table_gets_numbered_columns(tmp_path):
    p = tmp_path / "german.data"
    p.write_text("A11 6 A34 1169 1\nA12 48 A32 5951 2\nA14 12 A34 2096 1\n")
    df, said = read_table(p)
    assert "whitespace" in said and "without a header" in said
    assert list(df.columns) == ["0", "1", "2", "3", "4"] and df["3"].tolist() == [1169, 5951, 2096]


def test_a_binary_file_that_is_no_table_is_named(tmp_path):
    p = tmp_path / "model.pkl"
    p.write_bytes(b"PAR1" + bytes(range(256)) * 4)
    with pytest.raises(DataQualityError, match=r"model\.pkl read as parquet"):
        read_table(p)


def test_a_string_label_with_an_explicit_positive_class(tmp_path):
    p = tmp_path / "credit.pq"
    _credit().to_parquet(p)
    ds = load_table(p, "credit", positive="good")
    assert ds.task == "binary" and ds.classes == ["bad", "good"]
    assert ds.y.mean() == pytest.approx(0.7, abs=0.01)  # 1 = good, the commoner class
    default = load_table(p, "credit")  # without --positive: the rarer class, said on screen
    assert default.y.mean() == pytest.approx(0.3, abs=0.01)
    assert any("positive class 'bad'" in n and "--positive 'good'" in n for n in default.notes)
    with pytest.raises(DataQualityError, match=r"--positive 'ok' is not a class .*bad, good"):
        load_table(p, "credit", positive="ok")


def test_a_three_class_label_is_multiclass_and_ids_and_gaps_are_said(tmp_path):
    p = tmp_path / "credit.csv"
    df = _credit()
    df.loc[[3, 7], "housing"] = np.nan  # two rows without a label: left out, said
    df.to_csv(p, index=False)
    ds = load_table(p, "housing")
    assert ds.task == "multiclass" and ds.classes == ["mortgage", "own", "rent"]
    assert sorted(ds.y.unique()) == [0, 1, 2] and len(ds.y) == len(df) - 2
    assert "customer_id" not in ds.X.columns  # an identifier, not a feature
    notes = " | ".join(ds.notes)
    assert "3 text classes" in notes and "left out 2 rows without" in notes
    assert "customer_id" in notes and "age" in notes and "missing values" in notes


def test_a_regression_only_when_the_label_is_continuous_or_asked(tmp_path):
    p = tmp_path / "credit.parquet"
    _credit().to_parquet(p)
    cont = load_table(p, "amount")
    assert cont.task == "regression" and any("continuous" in n for n in cont.notes)
    few = load_table(p, "loans")  # 4 integer values: classes unless asked otherwise
    assert few.task == "multiclass" and any("--task regression" in n for n in few.notes)
    asked = load_table(p, "loans", task="regression")
    assert asked.task == "regression" and asked.y.dtype == float
    with pytest.raises(DataQualityError, match="a regression needs numbers"):
        load_table(p, "region", task="regression")


def test_multiclass_scores_are_macro_over_classes():
    y = np.array([0, 0, 1, 1, 2, 2])
    perfect = np.eye(3)[y] * 0.8 + 0.2 / 3
    assert score("roc_auc", y, perfect) == 1.0 and score("accuracy", y, perfect) == 1.0
    swapped = perfect[:, [1, 0, 2]]  # classes 0 and 1 confused, 2 right
    # 0 and 1 each rank the other class first and tie with class 2: AUC 0.25; 2 is perfect
    assert score("roc_auc", y, swapped) == pytest.approx((0.25 + 0.25 + 1) / 3)
    assert score("f1", y, swapped) == pytest.approx(1 / 3)
    assert score("log_loss", y, perfect) < score("log_loss", y, swapped)


def _study_with(trials: list[tuple[str, float]]) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    dist = {"family": optuna.distributions.CategoricalDistribution(["linear", "xgboost"])}
    for i, (fam, secs) in enumerate(trials):
        study.add_trial(
            optuna.trial.create_trial(
                params={"family": fam},
                distributions=dist,
                value=0.5 + i / 100,
                user_attrs={"fit_seconds": secs},
            )
        )
    return study


def test_the_clock_skips_a_family_that_would_overrun_and_stops_the_search():
    from models.train import _Clock

    # the best trial (the last: values rise) is a cheap linear one: its refit reserve is small
    study = _study_with([("xgboost", 40.0), ("xgboost", 50.0), ("linear", 0.2)])
    clock = _Clock(time.perf_counter() + 30, folds=1, refits=1, base=5)
    trial = study.ask()
    assert clock.skip(trial, {"family": "linear"}) is None
    why = clock.skip(trial, {"family": "xgboost"})
    assert why and "xgboost takes ~45s" in why
    # a family not tried yet: the trials so far scaled by the families' relative cost
    cheap = _study_with([("linear", 0.2), ("linear", 0.2)])  # a forest ~30x: ~6 s
    roomy = _Clock(time.perf_counter() + 30, folds=1, refits=1, base=5)
    assert roomy.skip(cheap.ask(), {"family": "random_forest"}) is None
    tight = _Clock(time.perf_counter() + 10, folds=1, refits=1, base=5)
    assert "random_forest takes ~6s" in (tight.skip(cheap.ask(), {"family": "random_forest"}) or "")
    assert tight.skip(cheap.ask(), {"family": "linear"}) is None
    ends = _Clock(time.perf_counter() + 5, folds=1, refits=1, base=5)  # the reserve is all left
    stopped = []
    study.stop = lambda: stopped.append(True)  # type: ignore[method-assign]
    ends.callback(study, study.trials[-1])
    assert stopped


def test_progress_without_a_terminal_prints_best_so_far_every_n_trials():
    from demo.steps import trial_progress

    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    progress, on_trial = trial_progress(console, 60, "roc_auc", every=3)
    study = _study_with([("linear", 0.1), ("xgboost", 0.1), ("linear", 0.1)] * 2)
    with progress:
        for t in study.trials:
            on_trial(t)
    lines = [ln for ln in out.getvalue().splitlines() if "trials" in ln]
    assert len(lines) == 2
    assert "best roc_auc 0.5500 (linear, trial 5)" in lines[-1]


def test_fit_table_multiclass_end_to_end_in_a_real_registry(mlsettings, tmp_path):
    from models.tracking import client
    from models.train import fit_table, wait_for_reports

    p = tmp_path / "credit.pq"
    _credit(900).to_parquet(p)
    r = fit_table(
        mlsettings, p, "housing", n_trials=3, budget=120, background_reports=True, name="housing"
    )
    wait_for_reports()
    assert r.task == "multiclass" and r.metric == "roc_auc" and r.threshold is None
    assert r.classes == ["mortgage", "own", "rent"] and 0.6 < r.holdout_score <= 1
    assert r.rows_refit == 900 > r.rows_holdout_model  # refit on every row after the verdict
    c = client(mlsettings)
    run = c.get_run(r.run_id)
    assert run.data.metrics["holdout_accuracy"] > 0.4 and "holdout_macro_f1" in run.data.metrics
    assert run.data.tags["classes"] == "mortgage, own, rent"
    assert run.data.tags["ensemble"]  # what the ensemble choice decided is on the run
    arts = {a.path for a in c.list_artifacts(r.run_id, "findings")} | {
        a.path for a in c.list_artifacts(r.run_id, "plots")
    }
    assert "findings/per_class.csv" in arts and "plots/confusion_matrix.png" in arts
    mv = c.get_model_version(mlsettings.registered_model("housing"), r.version)
    assert mv.tags["refit_rows"] == "900"
    import mlflow

    mlflow.set_tracking_uri(mlsettings.mlflow_uri)
    model = mlflow.sklearn.load_model(
        f"models:/{mlsettings.registered_model('housing')}/{r.version}"
    )
    X = load_table(p, "housing").X.head(5)
    assert model.predict_proba(X).shape == (5, 3)


def test_fit_table_regression_says_so_and_registers(mlsettings, tmp_path):
    from models.train import fit_table

    p = tmp_path / "credit.csv"
    _credit(400).to_csv(p, index=False)
    seen = []
    r = fit_table(
        mlsettings, p, "amount", n_trials=2, budget=120, on_loaded=lambda ds: seen.extend(ds.notes)
    )
    assert r.task == "regression" and r.metric == "rmse" and r.threshold is None
    assert any("task regression" in n for n in seen) and r.notes == seen


def test_ensemble_selection_averages_complementary_models_only_when_it_helps():
    from models.ensemble import select

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 2000)
    signal = y + rng.normal(0, 1.0, 2000)
    a = signal + rng.normal(0, 1.0, 2000)  # two views with independent errors
    b = signal + rng.normal(0, 1.0, 2000)
    noise = rng.normal(0, 1, 2000)
    counts, ens, single = select([a, b, noise], y, "roc_auc")
    assert set(counts) == {0, 1} and ens > single  # the noise model is never chosen
    alone, ens1, single1 = select([a, a.copy()], y, "roc_auc")
    assert len(alone) == 1 and ens1 == single1  # a copy adds nothing


def test_a_mean_ensemble_is_an_sklearn_classifier_of_its_members():
    from sklearn.inspection import permutation_importance
    from sklearn.linear_model import LogisticRegression
    from sklearn.tree import DecisionTreeClassifier

    from models.ensemble import MeanEnsemble

    rng = np.random.default_rng(1)
    X = pd.DataFrame({"a": rng.normal(size=300), "b": rng.normal(size=300)})
    y = (X["a"] + 0.3 * rng.normal(size=300) > 0).astype(int)
    m1, m2 = LogisticRegression().fit(X, y), DecisionTreeClassifier(max_depth=3).fit(X, y)
    ens = MeanEnsemble([m1, m2], [3, 1], "binary")
    want = 0.75 * m1.predict_proba(X) + 0.25 * m2.predict_proba(X)
    assert np.allclose(ens.predict_proba(X), want)
    assert (ens.predict(X) == want.argmax(axis=1)).all()
    imp = permutation_importance(ens, X, y, n_repeats=2, random_state=0, scoring="roc_auc")
    assert imp.importances_mean[0] > imp.importances_mean[1]  # a carries the label
