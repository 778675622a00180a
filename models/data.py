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
    "read_table",
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
    task: str  # "binary" | "multiclass" | "regression"
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
    # what loading decided (task, positive class, columns left out), said on screen
    notes: list[str] = field(default_factory=list)
    # class names: binary [negative, positive]; multiclass by code 0..k-1
    classes: list[str] = field(default_factory=list)

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
            notes=list(self.notes),
            classes=list(self.classes),
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
    if ds.task in ("binary", "multiclass") and not problems:
        counts = ds.y.value_counts()

        def named(code: object) -> object:
            i = int(code)  # type: ignore[call-overload]
            return repr(ds.classes[i]) if ds.classes and i < len(ds.classes) else code

        if len(counts) < 2:
            problems.append(
                f"label has a single class ({named(counts.index[0])}): nothing to learn"
            )
        else:
            for code, n in counts[counts < min_minority].items():
                problems.append(
                    f"label has only {int(n)} rows of class {named(code)} (need {min_minority})"
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


TASKS = ("binary", "multiclass", "regression")
MAX_CLASSES = 50  # more distinct text labels than this is not a classification we can judge
MAX_INTEGER_CLASSES = 20  # an integer label with at most this many values is a class label
NA_VALUES = ["?", "NA", "N/A", "n/a", "NaN", "nan", "null", "NULL", "None", "-", ""]
_TRUE = {"1", "1.0", "true", "yes", "y", "t", "positive", "pos"}


_MAGIC = (
    (b"PAR1", "parquet"),
    (b"ARROW1", "arrow"),
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bz2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"PK\x03\x04", "zip"),
)


def sniff_format(head: bytes) -> str:
    """What a file is, from its first bytes (not its name): parquet, arrow (Feather v2),
    gzip, bz2, xz, zip, json or text (a delimited table)."""
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text[:1] in (b"[", b"{"):
        return "json"
    return "text"


def _read_text_table(data: bytes, where: str) -> tuple[pd.DataFrame, str]:
    """A delimited table: delimiter (comma, semicolon, tab, pipe or runs of spaces) and
    header row sniffed from the first 64 KB."""
    import csv
    import io

    sample = data[:65536].decode("utf-8", errors="replace")
    lines = [ln for ln in sample.splitlines() if ln.strip()][:50]
    if not lines:
        raise DataQualityError(f"{where} is empty")
    try:
        sep = csv.Sniffer().sniff("\n".join(lines), delimiters=",;\t|").delimiter
    except csv.Error:
        sep = r"\s+" if len({len(ln.split()) for ln in lines}) == 1 else ","
    if sep == r"\s+" or (sep == "," and "," not in lines[0]):
        sep = r"\s+" if len(lines[0].split()) > 1 else ","
    kw: dict = {"sep": sep, "na_values": NA_VALUES, "keep_default_na": True}
    if sep != r"\s+":
        kw["skipinitialspace"] = True
    header = _has_header(lines, sep)
    df = pd.read_csv(io.BytesIO(data), header=0 if header else None, **kw)
    if not header:
        df.columns = [str(c) for c in df.columns]
    name = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}.get(sep, "whitespace")
    return (
        df,
        f"{name}-separated text{'' if header else ' without a header row (columns 0, 1, ...)'}",
    )


def _has_header(lines: list[str], sep: str) -> bool:
    """A first row is a header when none of its fields is a number while a later row has
    numbers in those columns, or when its fields never recur below it."""
    import re

    split = (lambda ln: ln.split()) if sep == r"\s+" else (lambda ln: ln.split(sep))
    first = [f.strip().strip('"') for f in split(lines[0])]
    rest = [[f.strip().strip('"') for f in split(ln)] for ln in lines[1:]]
    if not rest:
        return True
    num = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
    if any(num.match(f) for f in first):
        return False
    for i in range(len(first)):
        below = [r[i] for r in rest if len(r) > i]
        if below and any(num.match(v) for v in below):
            return True
    seen = {v for r in rest for v in r}
    return not any(f in seen for f in first if f)


def read_table(path: Path) -> tuple[pd.DataFrame, str]:
    """A table read by its content, whatever its name says: Parquet, Arrow/Feather, JSON
    (records or lines), delimited text, each maybe gzip/bz2/xz-compressed or the single
    member of a zip. Returns the frame and what it was read as."""
    import bz2
    import gzip
    import io
    import lzma
    import zipfile

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"table {path} does not exist")
    data = path.read_bytes()
    how: list[str] = []
    for _ in range(3):  # a compressed member of a compressed file, at most
        kind = sniff_format(data[:16])
        if kind in ("gzip", "bz2", "xz"):
            data = {"gzip": gzip.decompress, "bz2": bz2.decompress, "xz": lzma.decompress}[kind](
                data
            )
            how.append(kind)
        elif kind == "zip":
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                members = [n for n in z.namelist() if not n.endswith("/")]
                if len(members) != 1:
                    raise DataQualityError(
                        f"{path.name}: a zip of {len(members)} files; give one table"
                    )
                data = z.read(members[0])
            how.append(f"zip member {members[0]}")
        else:
            break
    via = f" ({', '.join(how)})" if how else ""
    try:
        if kind == "parquet":
            return pd.read_parquet(io.BytesIO(data)), f"Parquet{via}"
        if kind == "arrow":
            return pd.read_feather(io.BytesIO(data)), f"Arrow/Feather{via}"
        if kind == "json":
            lines = data.lstrip()[:1] == b"{" and b"\n{" in data
            return pd.read_json(
                io.BytesIO(data), lines=lines
            ), f"JSON{' lines' if lines else ''}{via}"
        df, what = _read_text_table(data, path.name)
        return df, what + via
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        if isinstance(exc, DataQualityError):
            raise
        raise DataQualityError(
            f"{path.name} read as {kind}{via} but is not a readable table: {exc}"[:500]
        ) from None


def _label(
    y_raw: pd.Series, label: str, task: str | None, positive: str | None
) -> tuple[pd.Series, str, list[str], list[str]]:
    """The label as the search takes it: (y, task, class names, notes). Binary: 1 = the
    positive class (``positive``, else the truthy one of 0/1, yes/no, true/false, else the
    rarer class, said); multiclass: codes 0..k-1 of the sorted class names; regression:
    numbers. Without ``task``: two values are binary, text or few integers are multiclass,
    other numbers a regression, each said."""
    notes: list[str] = []
    values = y_raw.dropna()
    k = values.nunique()
    numeric = pd.api.types.is_numeric_dtype(y_raw) and not pd.api.types.is_bool_dtype(y_raw)
    integral = numeric and bool(np.all(np.mod(values.to_numpy(dtype=float), 1) == 0))
    if task is not None and task not in TASKS:
        raise DataQualityError(f"--task: {task!r} is not one of {', '.join(TASKS)}")
    if positive is not None and task is None:
        task = "binary"
    if task is None:
        if k == 2:
            task = "binary"
        elif not numeric:
            if k > MAX_CLASSES:
                raise DataQualityError(
                    f"--label {label!r} has {k} distinct text values: too many classes"
                    f" (at most {MAX_CLASSES}); is it the right column?"
                )
            task = "multiclass"
            notes.append(f"task multiclass: label {label!r} has {k} text classes")
        elif integral and k <= MAX_INTEGER_CLASSES:
            task = "multiclass"
            notes.append(
                f"task multiclass: label {label!r} has {k} integer values; --task regression"
                " predicts it as a number instead"
            )
        else:
            task = "regression"
            notes.append(
                f"task regression: label {label!r} is continuous ({k:,} distinct numbers),"
                " scored by RMSE; --task multiclass treats its values as classes"
            )
    if task == "regression":
        if not numeric:
            y = pd.to_numeric(y_raw, errors="coerce")
            bad = int(y.isna().sum() - y_raw.isna().sum())
            if bad:
                raise DataQualityError(
                    f"--label {label!r}: a regression needs numbers; {bad} value(s) are not"
                    f" (e.g. {y_raw[y.isna() & y_raw.notna()].iloc[0]!r})"
                )
            return y.astype(float), task, [], notes
        return y_raw.astype(float), task, [], notes
    names = sorted(values.astype(str).unique(), key=_class_key)
    as_str = y_raw.astype(str).where(y_raw.notna())
    if task == "binary":
        if len(names) != 2:
            raise DataQualityError(
                f"--label {label!r} has {len(names)} classes ({', '.join(names[:10])});"
                " binary tasks need 2 (--task multiclass for more)"
            )
        if positive is not None:
            if str(positive) not in names:
                raise DataQualityError(
                    f"--positive {positive!r} is not a class of {label!r} ({', '.join(names)})"
                )
            pos = str(positive)
        else:
            truthy = [n for n in names if n.strip().lower() in _TRUE]
            counts = as_str.value_counts()
            if len(truthy) == 1:
                pos = truthy[0]
                why = "the true/yes/1 value"
            else:
                pos = min(names, key=lambda n: (counts.get(n, 0), -names.index(n)))
                why = f"the rarer class, {counts.get(pos, 0):,} of {int(counts.sum()):,} rows"
            other = names[0] if pos == names[1] else names[1]
            notes.append(
                f"positive class {pos!r} ({why}); the score is the probability of {pos!r},"
                f" --positive {other!r} to choose the other"
            )
        y = (as_str == pos).astype(int)
        neg = names[0] if pos == names[1] else names[1]
        return y, task, [neg, pos], notes
    codes = {n: i for i, n in enumerate(names)}
    return as_str.map(codes).astype(int), "multiclass", names, notes


def _class_key(v: str) -> tuple[int, float, str]:
    try:
        return (0, float(v), v)
    except ValueError:
        return (1, 0.0, v)


def _identifier_columns(X: pd.DataFrame) -> dict[str, str]:
    """Feature columns that identify a row rather than describe it: text unique on
    (nearly) every row, or integers named like an id and unique on every row."""
    import re

    out: dict[str, str] = {}
    n = len(X)
    if n < 20:
        return out
    idlike = re.compile(r"(^|_)(id|uuid|guid|key)$|^(id|index|row|row_?num(ber)?)$", re.I)
    for c in X.columns:
        col = X[c]
        distinct = col.nunique(dropna=True)
        if not pd.api.types.is_numeric_dtype(col) and distinct >= 0.95 * col.notna().sum() > 0:
            out[str(c)] = f"text unique on {distinct:,} of {n:,} rows (an identifier)"
        elif (
            pd.api.types.is_integer_dtype(col)
            and idlike.search(str(c))
            and distinct == col.notna().sum()
        ):
            out[str(c)] = "an id column, unique on every row"
    return out


def load_table(
    path: Path,
    label: str,
    *,
    time_col: str | None = None,
    group_col: str | None = None,
    sensitive: list[str] | None = None,
    task: str | None = None,
    positive: str | None = None,
) -> Dataset:
    """A table a data scientist brings (read by content, ``read_table``). Non-numeric
    columns are one-hot encoded by the search; the sensitive columns are kept for fairness
    checks and are not model inputs. What was decided (task, positive class, rows without a
    label, identifier columns left out, missing values) is in ``Dataset.notes``."""
    path = Path(path)
    df, how = read_table(path)
    notes = [f"read {path.name} as {how}: {len(df):,} rows, {df.shape[1]} columns"]
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
    unlabelled = df[label].isna()
    if unlabelled.any():
        notes.append(f"left out {int(unlabelled.sum()):,} rows without a {label!r} value")
        df = df[~unlabelled].reset_index(drop=True)
    y, task, classes, label_notes = _label(df[label], label, task, positive)
    notes += label_notes
    drop = [label, *(c for c in (time_col, group_col) if c)]
    X = df.drop(columns=drop)
    sens = df[sensitive].astype(str) if sensitive else pd.DataFrame(index=df.index)
    X = X.drop(columns=[c for c in (sensitive or []) if c in X.columns])
    ids = _identifier_columns(X)
    if ids:
        X = X.drop(columns=list(ids))
        notes += [f"left out column {c!r}: {why}" for c, why in ids.items()]
    missing = X.isna().mean()
    missing = missing[missing > 0].sort_values(ascending=False)
    if len(missing):
        shown = ", ".join(f"{c} {v:.1%}" for c, v in missing.head(8).items())
        more = f" and {len(missing) - 8} more" if len(missing) > 8 else ""
        notes.append(
            f"missing values in {len(missing)} column(s) ({shown}{more}): filled with the"
            " median (numbers) or the most frequent value (categories) inside the model"
        )
    return Dataset(
        X=X,
        y=y,
        task=task,
        time=pd.to_datetime(df[time_col], utc=True) if time_col else None,
        groups=df[group_col].astype(str) if group_col else None,
        sensitive=sens.reset_index(drop=True),
        name=path.name.split(".")[0] or path.stem,
        notes=notes,
        classes=classes,
    )
