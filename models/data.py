"""Training data: a frame of features, a label, groups, time and sensitive columns.

Targets read their features through Feast (``features.training``), never raw
telemetry. Any other table a data scientist brings goes through the same
``Dataset`` and checks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

log = logging.getLogger("gatewise.data")

if TYPE_CHECKING:
    from config.settings import Settings
    from config.targets import TargetSettings

__all__ = [
    "DataQualityError",
    "Dataset",
    "check_quality",
    "check_ready",
    "labelled_windows",
    "load_table",
    "target_dataset",
]

ID_COLUMNS = {
    "client_id",
    "route_id",
    "event_timestamp",
    "label",
    "source",
    "scenario",
    "created_timestamp",
    "labelled_at",
    "labelled_by",
    "probability",
}


class DataQualityError(ValueError):
    """The training data cannot give an honest model; the message says why."""


@dataclass
class Dataset:
    X: pd.DataFrame
    y: pd.Series
    task: str  # "binary" | "regression"
    time: pd.Series | None = None
    groups: pd.Series | None = None
    sensitive: pd.DataFrame = field(default_factory=pd.DataFrame)
    name: str = "table"
    # a finer label for reporting (payloads: the attack class); never a feature
    detail: pd.Series | None = None
    # where each row came from (payloads: the list, generator or log), for reporting
    source: pd.Series | None = None
    # rows only ever evaluated on: whole sources kept out of training (make_splits)
    holdout_only: pd.Series | None = None

    def fingerprint(self) -> str:
        """Content hash of the training data (features, label, time), for lineage."""
        import hashlib

        h = hashlib.sha256()
        h.update(pd.util.hash_pandas_object(self.X, index=False).to_numpy().tobytes())
        h.update(pd.util.hash_pandas_object(self.y, index=False).to_numpy().tobytes())
        if self.time is not None:
            h.update(pd.util.hash_pandas_object(self.time, index=False).to_numpy().tobytes())
        return h.hexdigest()[:16]

    def take(self, idx: np.ndarray) -> Dataset:
        return Dataset(
            X=self.X.iloc[idx].reset_index(drop=True),
            y=self.y.iloc[idx].reset_index(drop=True),
            task=self.task,
            time=None if self.time is None else self.time.iloc[idx].reset_index(drop=True),
            groups=None if self.groups is None else self.groups.iloc[idx].reset_index(drop=True),
            sensitive=self.sensitive.iloc[idx].reset_index(drop=True)
            if len(self.sensitive.columns)
            else self.sensitive,
            name=self.name,
            detail=None if self.detail is None else self.detail.iloc[idx].reset_index(drop=True),
            source=None if self.source is None else self.source.iloc[idx].reset_index(drop=True),
            holdout_only=None
            if self.holdout_only is None
            else self.holdout_only.iloc[idx].reset_index(drop=True),
        )


def check_quality(ds: Dataset, *, min_rows: int = 50, min_minority: int = 10) -> list[str]:
    """Raise ``DataQualityError`` naming every problem that makes training pointless;
    return warnings (dropped columns) otherwise. Constant and all-missing
    feature columns are dropped from ``ds.X`` in place."""
    problems: list[str] = []
    if len(ds.X) < min_rows:
        problems.append(f"only {len(ds.X)} rows (need at least {min_rows})")
    if ds.y.isna().any():
        problems.append(f"label has {int(ds.y.isna().sum())} missing values")
    warnings: list[str] = []
    all_missing = [c for c in ds.X.columns if ds.X[c].isna().all()]
    constant = [
        c for c in ds.X.columns if c not in all_missing and ds.X[c].nunique(dropna=True) <= 1
    ]
    if all_missing:
        warnings.append(f"dropped all-missing columns: {', '.join(all_missing)}")
    if constant:
        warnings.append(f"dropped constant columns: {', '.join(constant)}")
    if all_missing or constant:
        ds.X = ds.X.drop(columns=all_missing + constant)
    if ds.X.shape[1] == 0:
        problems.append("no usable feature column (all empty or constant)")
    if ds.task == "binary" and not problems:
        counts = ds.y.value_counts()
        if len(counts) < 2:
            problems.append(f"label has a single class ({counts.index[0]}): nothing to learn")
        elif counts.min() < min_minority:
            problems.append(
                f"label has only {int(counts.min())} rows of class {counts.idxmin()} (need {min_minority})"
            )
    elif ds.task == "regression" and not problems and ds.y.nunique() <= 1:
        problems.append("label is constant: nothing to learn")
    if problems:
        raise DataQualityError(f"training data {ds.name!r} is not usable: " + "; ".join(problems))
    return warnings


def _attach_sensitive(df: pd.DataFrame, settings: Settings, cols: list[str]) -> pd.DataFrame:
    """Client attributes for fairness checks come from the consumers table, not from features."""
    if not cols:
        return pd.DataFrame(index=df.index)
    path = settings.consumers_path
    if not path.exists():
        raise DataQualityError(f"sensitive features {cols} need the consumers table {path}")
    consumers = pd.read_parquet(path)
    missing = [c for c in cols if c not in consumers.columns]
    if missing:
        raise DataQualityError(
            f"sensitive feature(s) {missing} are not columns of the consumers table {path}"
        )
    return (
        df[["client_id"]]
        .merge(consumers[["client_id", *cols]], on="client_id", how="left")[cols]
        .fillna("(unknown)")
    )


LABEL_SETS = ("all", "weak", "reviewed")


def labelled_windows(
    settings: Settings, as_of: datetime | None = None, labels: str = "all"
) -> pd.DataFrame:
    """The labels table as training entity rows, one per client window (``resolve``).

    ``labels``: ``reviewed`` = labels people gave (review, import) and the simulator's truth;
    ``weak`` = the label model's only; ``all`` = both, a person's label winning. Weak labels
    train only where the label model is confident (``labeling.confident``). With ``as_of``,
    only labels already known then: their window started at least
    ``features.label_delay_minutes`` before it (labels arrive late)."""
    from labeling.store import LabelStore

    if labels not in LABEL_SETS:
        raise ValueError(f"--labels: {labels!r} is not one of {', '.join(LABEL_SETS)}")
    store = LabelStore(settings.labels_dir)
    delay = timedelta(minutes=settings.features.label_delay_minutes)
    table = store.read(available_at=as_of, delay=delay) if as_of else store.read()
    df = table.to_pandas()
    if labels == "weak":
        df = df[df["source"] == "weak"]
    elif labels == "reviewed":
        df = df[df["source"] != "weak"]
    if df.empty:
        which = {"all": "", "weak": "weak ", "reviewed": "reviewed "}[labels]
        fix = (
            "`gatewise labels weak`"
            if labels == "weak"
            else "`gatewise labels import FILE` (or review clients: `gatewise review export`)"
        )
        raise ValueError(f"no {which}labels in {settings.labels_dir}: {fix}")
    import pyarrow as pa

    df = store.resolve(pa.Table.from_pandas(df, preserve_index=False)).to_pandas()
    conf = settings.labeling.confident
    weak = df["source"] == "weak"
    p = df["probability"].astype(float)
    unsure = weak & p.between(1 - conf, conf, inclusive="neither")
    return df[~unsure].reset_index(drop=True)


def check_ready(settings: Settings, name: str, labels: str = "all") -> None:
    """What training ``name`` needs before it starts, each missing piece named with the
    command that makes it: labels, the consumers table (for the fairness groups), features.
    Raises ``DataQualityError`` with one line per problem."""
    target = settings.target(name)
    if target.label_source == "payloads":
        return
    problems = []
    if target.label_source == "labels":
        from labeling.store import LabelStore

        sources = LabelStore(settings.labels_dir).read().column("source").to_pylist()
        if not sources:
            problems.append(
                f"no labels in {settings.labels_dir}: import yours with "
                "`gatewise labels import FILE` (see docs/labels.md), or start from none: "
                "`gatewise labels weak` and `gatewise review export`"
            )
        elif labels == "weak" and "weak" not in sources:
            problems.append(f"no weak labels in {settings.labels_dir}: `gatewise labels weak`")
        elif labels == "reviewed" and set(sources) <= {"weak"}:
            problems.append(
                f"no reviewed labels in {settings.labels_dir}: `gatewise review export`, then "
                "`gatewise labels import --source review FILE`"
            )
        if target.sensitive_features and not settings.consumers_path.exists():
            problems.append(
                f"no consumers table {settings.consumers_path}: the fairness gate compares "
                f"{', '.join(target.sensitive_features)} groups; bring them with "
                "`gatewise ingest --consumers consumers.csv ...`"
            )
    view = "client_windows" if target.entity == "client" else "route_windows"
    if not any((settings.features_dir / view).glob("*/*.parquet")):
        problems.append(
            f"no features in {settings.features_dir / view}: build them with "
            "`gatewise features build`"
        )
    if problems:
        raise DataQualityError("; ".join(problems))


def target_dataset(
    settings: Settings, name: str, target: TargetSettings, labels: str = "all"
) -> Dataset:
    """The training set of a configured target, through Feast (payloads: from their table)."""
    from features.training import training_frame

    if target.label_source == "payloads":
        return payload_dataset(target.data, name)
    label: pd.Series
    if target.label_source == "labels":
        entity = labelled_windows(settings, labels=labels)
        service = target.feature_service
        if target.training_feature_service and target.entity == "client":
            from features.asof import asof_days, asof_entity_rows

            if asof_days(settings):
                service = target.training_feature_service
                entity = asof_entity_rows(
                    settings, entity, settings.simulator.label_window_minutes
                ).drop(columns=["as_of"])
            else:
                log.warning(
                    "no as-of snapshots in %s (features.asof.enabled, then `gatewise features "
                    "build --force`): training %s on closed windows only",
                    settings.features_dir,
                    name,
                )
        df = training_frame(settings, service, entity)
        label = df["label"].astype(int)
        group_col = "client_id" if target.entity == "client" else "route_id"
    else:
        df = _next_window_frame(settings, target)
        label = df["label"].astype(float)
        group_col = "route_id"
    feature_cols = [c for c in df.columns if c not in ID_COLUMNS]
    # rows with no feature at all (entity silent before the label) carry nothing to learn from
    has_any = df[feature_cols].notna().any(axis=1)
    df, label = df[has_any].reset_index(drop=True), label[has_any].reset_index(drop=True)
    if len(df) > target.max_rows:
        df, label = _sample_by_group(df, label, group_col, target.max_rows)
    sensitive = (
        _attach_sensitive(df, settings, target.sensitive_features)
        if target.entity == "client"
        else pd.DataFrame(index=df.index)
    )
    return Dataset(
        X=df[feature_cols].astype(float),
        y=label,
        task=target.task,
        time=pd.to_datetime(df["event_timestamp"], utc=True),
        groups=df[group_col].astype(str),
        sensitive=sensitive.reset_index(drop=True),
        name=name,
    )


BUNDLED_PAYLOADS = Path(__file__).parent / "payloads" / "http_params_payloads.csv.gz"
BENIGN = "norm"


def read_payloads(path: Path | None = None) -> pd.DataFrame:
    """A labelled payload table: ``payload`` and ``attack_type`` (``norm`` = benign), read
    as text (a value like ``007`` stays ``007``); the bundled real sample by default."""
    path = Path(path) if path is not None else BUNDLED_PAYLOADS
    if not path.exists():
        raise DataQualityError(f"payload table {path} does not exist")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in ("payload", "attack_type") if c not in df.columns]
    if missing:
        raise DataQualityError(
            f"payload table {path} lacks column(s) {missing} (has {list(df.columns)})"
        )
    return df[["payload", "attack_type"]]


# sources whose rows are only evaluated on (a by-source holdout): a public list the model
# never trains on, and benign families it never sees
HELD_OUT_SOURCES = ("seclists", "eval-benign", "access-log-eval")
# attack copies moved into other parts of the request (header, cookie, path), per class
_CONTEXT_SHARE = 0.12


def payload_dataset(
    path: Path | None = None,
    name: str = "payload",
    synthetic_benign: int = 3000,
    api_benign: int = 8000,
    corpora: bool = True,
    access_log: bool = True,
    max_attacks_per_source: int | None = 4000,
    scored_only: bool = True,
) -> Dataset:
    """Attack (1) vs benign (0) over context-tagged values (``features.payload.in_context``),
    deduplicated on (context, normal form), grouped by template so near-duplicates never
    straddle a split.

    Rows: the labelled table (``path``, default the bundled CSIC-based sample); the public
    attack lists and generated attack families (``models/payloads/corpus.py``, nine classes);
    benign values with quotes and brackets (``models/payloads/benign.py``), API value shapes,
    header and cookie values, and a real access log's values
    (``models/payloads/api_values.py``). A source's attacks of one class are sampled down to
    ``max_attacks_per_source`` (the labelled sample's 12,000 SQL injections would otherwise
    teach one list's style). A share of every class's attacks is copied into
    headers, cookies and paths (the same group as the original). ``source`` names each row's
    origin; rows of ``HELD_OUT_SOURCES`` are holdout-only (``Dataset.holdout_only``). Values
    whose normal forms agree but whose labels disagree are dropped."""
    import random

    from features.payload import TEXT_COLUMN, cookie_pairs, in_context, normalise, shape
    from features.request_parts import scored
    from models.payloads.benign import synthetic_benign as benign_values

    frames = []
    df = read_payloads(path)
    df = df.assign(context="param", source="csic" if path is None else "table", group=None)
    frames.append(df)
    if synthetic_benign:
        frames.append(
            pd.DataFrame(
                {"payload": benign_values(synthetic_benign), "attack_type": BENIGN}
            ).assign(context="param", source="synthetic-benign", group=None)
        )
    if corpora:
        from models.payloads.corpus import corpus_attacks, generated_attacks

        rows = list(corpus_attacks())
        frames.append(
            pd.DataFrame(rows, columns=["payload", "attack_type", "source"]).assign(
                context="param", group=None
            )
        )
        gen = list(generated_attacks())
        frames.append(
            pd.DataFrame(gen, columns=["payload", "attack_type", "group"]).assign(
                context="param", source="generated"
            )
        )
    if api_benign:
        from models.payloads.api_values import api_benign as api_values
        from models.payloads.api_values import eval_benign

        cols = ["payload", "context", "family", "field"]
        api = pd.DataFrame(api_values(api_benign), columns=cols)
        frames.append(api.assign(attack_type=BENIGN, source="api-benign", group=None))
        ev = pd.DataFrame(eval_benign(), columns=cols)
        frames.append(ev.assign(attack_type=BENIGN, source="eval-benign", group=None))
    if access_log:
        from models.payloads.api_values import log_values

        logs = pd.DataFrame(list(log_values()), columns=["payload", "context", "source", "field"])
        frames.append(logs.assign(attack_type=BENIGN, group=None))
    df = pd.concat(frames, ignore_index=True)
    if max_attacks_per_source:  # one list's style must not drown the others
        parts = []
        for (_, cls), part in df.groupby(["source", "attack_type"], sort=False):
            if cls != BENIGN and len(part) > max_attacks_per_source:
                part = part.sample(max_attacks_per_source, random_state=5)
            parts.append(part)
        df = pd.concat(parts).sort_index()
    # a Cookie header is read pair by pair, as the gateway reads it
    cookie = (df["context"] == "cookie") & (df["attack_type"] == BENIGN)
    values = pd.Series(
        [[v for _, v in cookie_pairs(h)] for h in df["payload"][cookie]],
        index=df.index[cookie],
        dtype=object,
    )
    pairs = df[cookie].assign(payload=values)
    df = pd.concat([df[~cookie], pairs.explode("payload")], ignore_index=True)
    df = df[df["payload"].notna() & (df["payload"].str.len() > 0)]
    df["group"] = df["group"].where(df["group"].notna(), df["payload"].map(shape))
    if corpora:  # attacks arrive in headers, cookies and paths too
        r = random.Random(11)
        attacks = df[df["attack_type"] != BENIGN]
        moved = attacks.sample(frac=_CONTEXT_SHARE, random_state=3)
        ctx = [
            r.choice(["header", "user-agent", "referer", "cookie", "path"])
            if c != "path-traversal"
            else r.choice(["path", "path", "header", "cookie"])
            for c in moved["attack_type"]
        ]
        moved = moved.assign(context=ctx)
        moved.loc[moved["context"] == "path", "payload"] = (
            "/api/v1/files/" + moved.loc[moved["context"] == "path", "payload"]
        )
        df = pd.concat([df, moved], ignore_index=True)
    # only what the gateway scores (features/request_parts.py): a plain number, an opaque
    # token or an Accept-Language that fits its grammar is never shown to the model
    if "field" not in df:
        df["field"] = None
    fields = df["field"].where(df["field"].notna(), None)
    if scored_only:
        read = [
            scored(c, v, f) for c, v, f in zip(df["context"], df["payload"], fields, strict=True)
        ]
        df = df[read]
    df["tagged"] = [in_context(c, v) for c, v in zip(df["context"], df["payload"], strict=True)]
    key = df["context"] + "\x1e" + df["payload"].map(normalise)
    labels_per_form = df.groupby(key)["attack_type"].nunique()
    conflicting = set(labels_per_form[labels_per_form > 1].index)
    keep = ~key.isin(conflicting) & ~key.duplicated()
    df = df[keep.to_numpy()].reset_index(drop=True)
    return Dataset(
        X=pd.DataFrame({TEXT_COLUMN: df["tagged"]}),
        y=(df["attack_type"] != BENIGN).astype(int),
        task="binary",
        groups=df["group"].astype(str),
        name=name,
        detail=df["attack_type"],
        source=df["source"],
        holdout_only=df["source"].isin(HELD_OUT_SOURCES),
    )


def _sample_by_group(
    df: pd.DataFrame, y: pd.Series, group_col: str, max_rows: int
) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(0)
    groups = df[group_col].unique()
    keep = set(rng.permutation(groups)[: max(1, int(len(groups) * max_rows / len(df)))])
    m = df[group_col].isin(keep).to_numpy()
    return df[m].reset_index(drop=True), y[m].reset_index(drop=True)


def _next_window_frame(settings: Settings, target: TargetSettings) -> pd.DataFrame:
    """Per route and window end T: features as of T, label = requests in (T, T + 5 min]."""
    from features.training import training_frame

    routes = pd.read_parquet(
        settings.features_dir / "route_windows",
        columns=["route_id", "event_timestamp", "route_request_count_5m"],
    )
    routes["event_timestamp"] = pd.to_datetime(routes["event_timestamp"], utc=True)
    nxt = routes.rename(columns={"route_request_count_5m": "label"})
    nxt["event_timestamp"] = nxt["event_timestamp"] - pd.Timedelta(minutes=5)
    entity = nxt[["route_id", "event_timestamp", "label"]]
    return training_frame(settings, target.feature_service, entity)


def load_table(
    path: Path,
    label: str,
    *,
    time_col: str | None = None,
    group_col: str | None = None,
    sensitive: list[str] | None = None,
    task: str | None = None,
) -> Dataset:
    """A CSV or Parquet table a data scientist brings. Non-numeric columns are
    one-hot encoded by the search; the sensitive columns are kept for fairness
    checks and are not model inputs."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"table {path} does not exist")
    df = (
        pd.read_parquet(path)
        if path.suffix == ".parquet"
        else pd.read_csv(path, skipinitialspace=True)
    )
    for col, what in (
        (label, "--label"),
        (time_col, "--time-col"),
        (group_col, "--group-col"),
        *((c, "--sensitive") for c in (sensitive or [])),
    ):
        if col and col not in df.columns:
            raise DataQualityError(
                f"{what}: column {col!r} is not in {path.name} (columns: {', '.join(map(str, df.columns[:30]))})"
            )
    y_raw = df[label]
    if task is None:
        task = "binary" if y_raw.nunique() == 2 else "regression"
    if task == "binary":
        classes = sorted(y_raw.dropna().unique(), key=str)
        if len(classes) != 2:
            raise DataQualityError(
                f"--label {label!r} has {len(classes)} classes; binary tasks need 2"
            )
        positive = classes[1]
        y = (y_raw == positive).astype(int)
    else:
        y = pd.to_numeric(y_raw, errors="coerce")
    drop = [label, *(c for c in (time_col, group_col) if c)]
    X = df.drop(columns=drop)
    sens = df[sensitive].astype(str) if sensitive else pd.DataFrame(index=df.index)
    X = X.drop(columns=[c for c in (sensitive or []) if c in X.columns])
    return Dataset(
        X=X,
        y=y,
        task=task,
        time=pd.to_datetime(df[time_col], utc=True) if time_col else None,
        groups=df[group_col].astype(str) if group_col else None,
        sensitive=sens.reset_index(drop=True),
        name=path.stem,
    )
