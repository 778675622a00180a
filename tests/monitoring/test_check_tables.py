"""`gatewise monitor check` on a data scientist's own tables: identifier and time columns left
out of drift (and said so), the drift-share threshold from gatewise.yaml, every group over the
FPR bound named, and the bias tables in the HTML report beside drift."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from monitoring.bias import BiasFinding, GroupRates, breaches
from monitoring.columns import leave_out_id_time, name_tokens
from tests.conftest import REPO

N = 400


def _features(seed: int, n: int = N) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "age": rng.integers(18, 70, n),  # repeats: a feature, not an identifier
            "income": rng.normal(50_000, 10_000, n),  # distinct floats: a feature
            "response_time": rng.exponential(0.3, n),  # named like time, but a duration
            "hours_per_week": rng.integers(20, 60, n),
            "school_year": rng.integers(1, 6, n),  # "year" but not years
            "workclass": rng.choice(["private", "self", "gov"], n),
        }
    )


def test_leave_out_names_identifiers_and_times_with_a_reason():
    ref, cur = _features(0), _features(1)
    rng = np.random.default_rng(2)
    for i, df in enumerate((ref, cur)):
        df["Id"] = np.arange(N) + i * N
        df["customer_id"] = rng.integers(0, 50, N)  # repeats: the name says identifier
        df["UUID"] = [f"u{i}-{k}" for k in range(N)]
        df["session"] = [f"{k:x}{i}" for k in rng.permutation(10_000)[:N]]  # no hint in name
        df["year"] = rng.integers(1994, 2021, N)
        df["created_at"] = pd.Timestamp("2024-01-01") + pd.to_timedelta(np.arange(N), "h")
        df["event_time"] = [f"2024-02-{1 + k % 28:02d} 10:{k % 60:02d}:00" for k in range(N)]
        df["signup"] = [f"{1 + k % 12}/{1 + k % 28}/2023" for k in range(N)]  # dates, no hint
        df["month"] = rng.integers(1, 13, N)
    cols = list(ref.columns)
    kept, left = leave_out_id_time(ref, cur, cols)
    assert kept == list(_features(0).columns)
    assert set(left) == {
        "Id",
        "customer_id",
        "UUID",
        "session",
        "year",
        "created_at",
        "event_time",
        "signup",
        "month",
    }
    assert left["customer_id"].startswith("identifier: named")
    assert re.match(r"identifier: \d+% of \d+ values are distinct", left["session"])
    assert "years 1994-2020" in left["year"]
    assert left["created_at"] == "time: datetime values"
    assert "parse as dates" in left["event_time"] and "parse as dates" in left["signup"]
    # kept on request (and the sensitive, label and prediction columns the CLI passes)
    kept2, left2 = leave_out_id_time(ref, cur, cols, keep=["year", "session"])
    assert "year" in kept2 and "session" in kept2 and "year" not in left2
    # a small table: every value distinct proves nothing
    small_k, small_l = leave_out_id_time(ref.head(20), cur.head(20), ["age", "workclass"])
    assert small_k == ["age", "workclass"] and small_l == {}


@pytest.mark.parametrize(
    ("name", "tokens"),
    [("customerID", ["customer", "id"]), ("event_time", ["event", "time"]), ("ID", ["id"])],
)
def test_name_tokens(name, tokens):
    assert name_tokens(name) == tokens


def _finding(rates: dict[str, float | None]) -> BiasFinding:
    groups = [GroupRates("region", g, 100, 0.1, r, 0.2, True) for g, r in rates.items()]
    return BiasFinding("region", groups, None, None, None, [], overall_fpr=0.08)


def test_breaches_name_every_group_over_the_bound_worst_first():
    f = _finding({"a": 0.02, "b": 0.10, "c": 0.15, "d": 0.024, "e": None})
    got = breaches(f, max_fpr_ratio=1.25, min_fpr_gap=0.005)
    assert [b.group for b in got] == ["c", "b"]  # d: 1.2x, within the bound
    assert got[0].sentence() == (
        "region=c: false-positive rate 0.150 vs 0.020 for a (the lowest; 0.080 overall), "
        "7.50x, above the bound 1.25x"
    )
    # a ratio over the bound on tiny rates is noise: the gap must also be there
    assert breaches(_finding({"a": 0.001, "b": 0.004}), 1.25, 0.005) == []
    assert [b.group for b in breaches(_finding({"a": 0.0, "b": 0.01}), 1.25, 0.005)] == ["b"]


def _decisions() -> pd.DataFrame:
    """Exact counts: per region and sex 100 rows, 50 legitimate; false positives per cell
    a: 1, b: 5, c: 8 (FPR 0.02, 0.10, 0.16), the same for both sexes (FPR equal)."""
    rows = []
    for region, fp in (("a", 1), ("b", 5), ("c", 8)):
        for sex in ("Female", "Male"):
            y = np.r_[np.zeros(50, int), np.ones(50, int)]
            pred = np.r_[
                np.ones(fp, int), np.zeros(50 - fp, int), np.ones(40, int), np.zeros(10, int)
            ]
            rows.append(pd.DataFrame({"region": region, "sex": sex, "label": y, "pred": pred}))
    return pd.concat(rows, ignore_index=True)


def _tables(tmp_path: Path) -> tuple[Path, Path]:
    """600 rows a side. Identifier, year and session columns that would drift; ``rate`` moves,
    ``count`` does not."""
    rng = np.random.default_rng(0)
    dec = _decisions()
    n = len(dec)
    ref = pd.DataFrame(
        {
            "id": np.arange(n),
            "year": rng.integers(1990, 2005, n),
            "session": [f"s{k:06x}" for k in rng.permutation(1_000_000)[:n]],
            "rate": rng.normal(0, 1, n),
            "count": rng.poisson(5, n).astype(float),
        }
    )
    cur = pd.DataFrame(
        {
            "id": np.arange(n) + n,
            "year": rng.integers(2006, 2021, n),
            "session": [f"t{k:06x}" for k in rng.permutation(1_000_000)[:n]],
            "rate": rng.normal(1.5, 1, n),
            "count": rng.poisson(5, n).astype(float),
        }
    )
    ref = pd.concat([ref, dec], axis=1)
    cur = pd.concat([cur, dec], axis=1)
    ref.to_parquet(tmp_path / "ref.pq")  # Parquet by content, not by suffix
    cur.to_csv(tmp_path / "cur.csv", index=False)
    return tmp_path / "ref.pq", tmp_path / "cur.csv"


class _Balance(HTMLParser):
    """Every element opened is closed in order (void elements aside); no outside resources."""

    VOID = frozenset(
        {"meta", "link", "br", "hr", "img", "input", "source", "col", "area", "base", "wbr"}
    )

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.outside: list[str] = []

    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if k in ("src", "href") and v and re.match(r"(https?:)?//", v):
                self.outside.append(v)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def _check(config: Path, ref: Path, cur: Path, out: Path, *extra: str):
    from gatewise.cli import app

    args = ["monitor", "check", "--config", str(config), "--reference", str(ref)]
    args += ["--current", str(cur), "--sensitive", "sex,region", "--label", "label"]
    args += ["--prediction", "pred", "--out", str(out), *extra]
    return CliRunner().invoke(app, args)


def test_monitor_check_on_own_tables(env, tmp_path):
    ref, cur = _tables(tmp_path)
    doc = yaml.safe_load((REPO / "gatewise.yaml").read_text())
    doc["monitoring"]["policy"]["drift_share"] = 0.45
    config = tmp_path / "mine.yaml"
    config.write_text(yaml.safe_dump(doc))

    r = _check(config, ref, cur, tmp_path / "a")
    assert r.exit_code == 0, r.output
    # identifier, time and near-unique columns: left out, each named with its reason
    assert "left out of drift: 3 identifier/time column(s)" in r.output
    assert "  id: identifier: named like one" in r.output
    assert re.search(
        r"  year: time: named like one \(year\), values are years 1990-20\d\d", r.output
    )
    assert re.search(r"  session: identifier: 100% of 600 values are distinct", r.output)
    found = json.loads((tmp_path / "a" / "findings.json").read_text())
    assert [c["column"] for c in found["drift"]["columns"]] == ["rate", "count"]
    assert found["drift"]["drifted"] == ["rate"] and set(found["left_out"]) == {
        "id",
        "year",
        "session",
    }
    # the threshold: gatewise.yaml's, and said where from (1 of 2 = 50 % >= 45 %)
    assert found["drift"]["drift_share"] == 0.45 and found["drift"]["dataset_drift"]
    assert (
        f"drift share threshold 0.45 (from monitoring.policy.drift_share in {config})" in r.output
    )
    # every group over the FPR bound named, none of those within it
    assert "bias: 2 group(s) over the bound" in r.output
    assert re.search(
        r"region=c: false-positive rate 0\.160 vs 0\.020 for a \(the lowest; 0\.093 overall\), 8\.00x, above the bound 1\.25x",
        r.output,
    )
    assert "region=b: false-positive rate 0.100 vs 0.020" in r.output
    assert "region=a:" not in r.output and "sex=" not in r.output
    assert [b["group"] for b in found["bias_breaches"]] == ["c", "b"]
    # the bias tables in the drift report, a valid self-contained HTML file
    html = (tmp_path / "a" / "drift.html").read_text()
    section = html[html.index('<section id="gatewise-check">') : html.index("</section>") + 10]
    assert (
        "<caption>bias by region: FPR worst/best 8.00 (c); overall FPR 0.093</caption>" in section
    )
    assert "<caption>bias by sex:" in section and "<td>Female</td>" in section
    assert section.count('<tr class="flag">') == 3  # drifted rate; regions b and c
    assert "<td>session</td><td>identifier: 100% of 600 values are distinct</td>" in section
    assert html.index("<body") < html.index(section) < html.index('<div id="root_metric')
    for part in (section, html):
        p = _Balance()
        p.feed(part)
        p.close()
        assert p.errors == [] and p.stack == [] and p.outside == []

    # an explicit override and kept columns: judged, and said so
    r2 = _check(config, ref, cur, tmp_path / "b", "--drift-share", "0.7", "--keep-columns", "year")
    assert r2.exit_code == 0, r2.output
    found2 = json.loads((tmp_path / "b" / "findings.json").read_text())
    assert sorted(found2["drift"]["drifted"]) == ["rate", "year"]
    assert found2["drift"]["drift_share"] == 0.7 and found2["drift"]["dataset_drift"] is False
    assert "drift share threshold 0.7 (from --drift-share): dataset drift no" in r2.output
    assert "left out of drift: 2 identifier/time column(s)" in r2.output
    bad = _check(config, ref, cur, tmp_path / "c", "--keep-columns", "nope")
    assert bad.exit_code == 2 and "--keep-columns: nope not in both tables" in bad.output


def test_threshold_default_is_said_when_the_config_does_not_set_it(env, tmp_path):
    ref, cur = _tables(tmp_path)
    doc = yaml.safe_load((REPO / "gatewise.yaml").read_text())
    del doc["monitoring"]["policy"]["drift_share"]
    config = tmp_path / "bare.yaml"
    config.write_text(yaml.safe_dump(doc))
    r = _check(config, ref, cur, tmp_path / "a", "--columns", "rate,count")
    assert r.exit_code == 0, r.output
    assert "drift share threshold 0.3 (from monitoring.policy.drift_share, its default" in r.output
    assert "left out of drift" not in r.output  # --columns are judged as given
