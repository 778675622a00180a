"""Labels in and out: ``gatewise labels import|list|show|export``.

A labels file says which clients were abusive, when. It is read by content, not by suffix:
Parquet (``PAR1``), JSON lines or a JSON array (``{`` / ``[``), else CSV; gzip is unwrapped
first. Columns (names are matched case-insensitively; the first of each list that is
present is used):

- ``client_id`` (``client``, ``consumer``): the consumer as the telemetry names it;
- ``label`` (``abusive``, ``is_abusive``, ``class``): ``1``/``0``, ``true``/``false``,
  ``yes``/``no``, ``abusive``/``legitimate`` (also ``abuse``, ``malicious``, ``bad`` and
  ``benign``, ``legit``, ``normal``, ``good``);
- window level: ``event_timestamp`` (``window_start``, ``timestamp``, ``time``), an ISO 8601
  time (no zone = UTC) or epoch seconds / milliseconds; a time inside a window is moved to
  the window's start (the label window is ``simulator.label_window_minutes``, 5 by default);
- client level (``--level client``): no time column needed; the label applies to every
  window in which the client sent traffic, optionally only within ``since`` / ``until``;
- optional: ``scenario`` (``note``, ``reason``), ``labelled_by`` (``reviewer``),
  ``labelled_at`` (default: the import time).

Every bad value is named by its row (1 = the first data row) and column: an unreadable time,
a label that is not one of the words above, a client the telemetry and the consumers table
have never seen. By default one bad row refuses the file (nothing is written); with
``skip_invalid`` the good rows are imported and the bad ones go to
``<data_dir>/rejects/labels-<time>.jsonl`` with their reasons. The batch is named after the
file's content, so importing the same file again (or a renamed copy) replaces it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa

from config.settings import Settings
from labeling.store import SOURCES, LabelStore

__all__ = [
    "ImportReport",
    "LabelImportError",
    "client_labels",
    "export_labels",
    "import_labels",
    "list_batches",
    "read_any",
]

Level = Literal["window", "client", "auto"]

_ALIASES: dict[str, tuple[str, ...]] = {
    "client_id": ("client_id", "client", "consumer", "consumer_id"),
    "label": ("label", "abusive", "is_abusive", "class"),
    "event_timestamp": ("event_timestamp", "window_start", "timestamp", "time", "window"),
    "since": ("since", "from", "start"),
    "until": ("until", "to", "end"),
    "scenario": ("scenario", "note", "reason"),
    "labelled_by": ("labelled_by", "labeled_by", "reviewer"),
    "labelled_at": ("labelled_at", "labeled_at", "reviewed_at"),
}
_TRUE = {"1", "1.0", "true", "t", "yes", "y", "abusive", "abuse", "malicious", "bad"}
_FALSE = {"0", "0.0", "false", "f", "no", "n", "legitimate", "legit", "benign", "normal", "good"}
_MAX_LISTED = 20


class LabelImportError(ValueError):
    """A labels file that cannot be imported; ``problems`` lists each bad value."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = problems or []
        shown = self.problems[:_MAX_LISTED]
        more = len(self.problems) - len(shown)
        lines = [message, *(f"  {p}" for p in shown)]
        if more > 0:
            lines.append(f"  … and {more} more")
        super().__init__("\n".join(lines))


@dataclass
class ImportReport:
    path: Path
    source: str
    level: Level
    rows: int  # data rows read from the file
    imported_rows: int  # rows that passed validation
    windows: int  # label rows written (client level: after expansion)
    clients: int
    abusive_windows: int
    batch: str
    batch_path: Path | None
    replaced: bool  # the same file was imported before: its batch was replaced
    floored: int = 0  # window level: times moved to their window's start
    no_traffic: int = 0  # window level: labelled windows with no telemetry
    expanded: dict[str, int] = field(default_factory=dict)  # client level: client -> windows
    clients_without_traffic: list[str] = field(default_factory=list)
    rejected: int = 0
    rejects_path: Path | None = None
    notes: list[str] = field(default_factory=list)
    unanswered: int = 0  # review files: rows whose label is still empty


# -- reading any file ---------------------------------------------------------------------


def read_any(path: Path) -> pd.DataFrame:
    """A table from CSV, JSON lines / array or Parquet, plain or gzip, chosen by content.
    Every column comes back as text (``None`` where empty), so validation sees what the
    file said."""
    if not path.is_file():
        raise LabelImportError(f"{path}: no such file")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except OSError as exc:
            raise LabelImportError(f"{path}: a broken gzip file ({exc})") from None
    if not raw.strip():
        raise LabelImportError(f"{path}: the file is empty")
    try:
        if raw[:4] == b"PAR1":
            import pyarrow.parquet as pq

            df = pq.read_table(io.BytesIO(raw)).to_pandas()
        elif raw.lstrip()[:1] in (b"{", b"["):
            df = _read_json(raw)
        else:
            df = pd.read_csv(io.BytesIO(raw), dtype=str, keep_default_na=False, na_values=[""])
    except LabelImportError:
        raise
    except Exception as exc:
        raise LabelImportError(
            f"{path}: not a readable CSV, JSON or Parquet file ({exc})"
        ) from None
    df.columns = [str(c).strip() for c in df.columns]
    out = pd.DataFrame(index=df.index)
    for c in df.columns:
        col = df[c]
        out[c] = [None if _missing(v) else _text(v) for v in col]
    return out.reset_index(drop=True)


def _read_json(raw: bytes) -> pd.DataFrame:
    text = raw.decode("utf-8-sig")
    if text.lstrip().startswith("["):
        rows = json.loads(text)
        if not isinstance(rows, list):
            raise LabelImportError("a JSON file must hold an array of objects")
    else:
        rows = []
        for i, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except ValueError as exc:
                raise LabelImportError(f"line {i}: not valid JSON ({exc})") from None
    bad = [i for i, r in enumerate(rows, start=1) if not isinstance(r, dict)]
    if bad:
        raise LabelImportError(f"rows {bad[:10]}: each JSON row must be an object")
    return pd.DataFrame(rows)


def _missing(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and np.isnan(v):
        return True
    return bool(isinstance(v, str) and not v.strip())


def _text(v: Any) -> str:
    if isinstance(v, datetime | pd.Timestamp):
        ts = pd.Timestamp(v)
        return (ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")).isoformat()
    if isinstance(v, bool | np.bool_):
        return "true" if v else "false"
    return str(v).strip()


def _pick(df: pd.DataFrame, name: str) -> str | None:
    lower = {c.lower(): c for c in df.columns}
    for alias in _ALIASES[name]:
        if alias in lower:
            return lower[alias]
    return None


# -- parsing values -------------------------------------------------------------------------


def _parse_time(v: str) -> pd.Timestamp | None:
    if re.fullmatch(r"\d{9,13}(\.\d+)?", v):  # epoch seconds or milliseconds
        x = float(v)
        return pd.Timestamp(x / 1000 if x > 1e11 else x, unit="s", tz="UTC")
    try:
        ts = pd.Timestamp(v.replace("Z", "+00:00") if v.endswith("Z") else v)
    except (ValueError, TypeError):
        return None
    if ts is pd.NaT:
        return None
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _parse_label(v: str) -> int | None:
    s = v.strip().lower()
    if s in _TRUE:
        return 1
    if s in _FALSE:
        return 0
    return None


# -- what the data knows ----------------------------------------------------------------------


def _known_clients(settings: Settings) -> set[str]:
    from telemetry.store import TelemetryStore

    known: set[str] = set()
    store = TelemetryStore(settings.telemetry_dir)
    if not store.is_empty():
        con = store.connect()
        known |= {r[0] for r in con.execute("SELECT DISTINCT client_id FROM events").fetchall()}
    if settings.consumers_path.exists():
        import pyarrow.parquet as pq

        known |= {
            str(c)
            for c in pq.read_table(settings.consumers_path, columns=["client_id"])
            .column("client_id")
            .to_pylist()
        }
    return known


def _traffic_windows(settings: Settings, clients: list[str]) -> pd.DataFrame:
    """(client_id, event_timestamp) of every window with traffic of these clients."""
    from telemetry.store import TelemetryStore

    store = TelemetryStore(settings.telemetry_dir)
    if store.is_empty() or not clients:
        return pd.DataFrame({"client_id": [], "event_timestamp": []})
    con = store.connect()
    con.register("wanted", pa.table({"client_id": pa.array(sorted(set(clients)), pa.string())}))
    step = settings.simulator.label_window_minutes * 60_000_000
    df = con.execute(
        f"""SELECT client_id,
                   make_timestamptz((epoch_us(timestamp) // {step}) * {step}) AS event_timestamp
            FROM events WHERE client_id IN (SELECT client_id FROM wanted)
            GROUP BY 1, 2 ORDER BY 1, 2"""
    ).df()
    df["event_timestamp"] = pd.to_datetime(df["event_timestamp"], utc=True)
    return df


# -- import ---------------------------------------------------------------------------------


def import_labels(
    settings: Settings,
    path: Path,
    *,
    source: str = "import",
    level: Level = "window",
    labelled_by: str | None = None,
    skip_invalid: bool = False,
    now: datetime | None = None,
) -> ImportReport:
    """Validate a labels file and write it as one batch of the labels table (see the module
    docstring). Raises ``LabelImportError`` naming every bad value (unless ``skip_invalid``).
    ``level`` ``auto``: window when the file has a time column, else client. With source
    ``review``, a row whose label is empty is a question not answered yet: skipped."""
    if source not in SOURCES or source == "weak":
        raise LabelImportError(
            f"--source: {source!r} is not one of import, review, simulator (weak labels come "
            "from `gatewise labels weak`)"
        )
    if level not in ("window", "client", "auto"):
        raise LabelImportError(f"--level: {level!r} is not window, client or auto")
    now = now or datetime.now(UTC)
    raw = path.read_bytes() if path.is_file() else b""
    df = read_any(path)
    cols = {k: _pick(df, k) for k in _ALIASES}
    if level == "auto":
        level = "window" if cols["event_timestamp"] is not None else "client"
    unanswered = 0
    if source == "review" and cols["label"] is not None:
        empty = df[cols["label"]].isna()
        unanswered = int(empty.sum())
        df = df[~empty].reset_index(drop=True)
        if df.empty:
            raise LabelImportError(f"{path}: no answered rows (the label column is empty)")
    missing = [k for k in ("client_id", "label") if cols[k] is None]
    if level == "window" and cols["event_timestamp"] is None:
        missing.append("event_timestamp")
    if missing:
        hint = (
            " (a file without times labels whole clients: --level client)"
            if missing == ["event_timestamp"]
            else ""
        )
        raise LabelImportError(
            f"{path}: missing column(s) {', '.join(missing)}{hint}; the file has "
            f"{', '.join(df.columns) or 'no columns'}"
        )
    known = _known_clients(settings)
    if not known:
        raise LabelImportError(
            f"no telemetry in {settings.telemetry_dir} and no consumers table: labels name "
            "clients of your traffic, so ingest it first (`gatewise ingest --format ... FILE`)"
        )
    problems: list[str] = []
    bad_rows: dict[int, list[str]] = {}
    good: list[dict[str, Any]] = []
    win = pd.Timedelta(minutes=settings.simulator.label_window_minutes)
    floored = 0

    def bad(i: int, col: str | None, msg: str) -> None:
        text = f"row {i + 1}, column {col!r}: {msg}" if col else f"row {i + 1}: {msg}"
        problems.append(text)
        bad_rows.setdefault(i, []).append(text)

    for i, row in enumerate(df.to_dict("records")):
        cid = row[cols["client_id"]] if cols["client_id"] else None
        rec: dict[str, Any] = {}
        if cid is None:
            bad(i, cols["client_id"], "empty")
        elif cid not in known:
            bad(
                i,
                cols["client_id"],
                f"unknown client {cid!r} (not in the telemetry or the consumers table)",
            )
        rec["client_id"] = cid
        lab = row[cols["label"]] if cols["label"] else None
        parsed = None if lab is None else _parse_label(lab)
        if parsed is None:
            bad(i, cols["label"], f"{lab!r} is not a label (1/0, true/false, abusive/legitimate)")
        rec["label"] = parsed
        for name in ("event_timestamp", "since", "until", "labelled_at"):
            c = cols[name]
            if c is None or (level == "client" and name == "event_timestamp"):
                continue
            v = row[c]
            if v is None:
                if name == "event_timestamp":
                    bad(i, c, "empty")
                continue
            ts = _parse_time(v)
            if ts is None:
                bad(i, c, f"{v!r} is not a time (ISO 8601 or epoch seconds)")
                continue
            if name == "event_timestamp":
                start = ts.floor(win)
                floored += int(start != ts)
                ts = start
            rec[name] = ts
        for name in ("scenario", "labelled_by"):
            rec[name] = row[cols[name]] if cols[name] else None
        if i not in bad_rows:
            good.append(rec)
    if problems and not skip_invalid:
        raise LabelImportError(
            f"{path}: {len(bad_rows)} of {len(df)} row(s) have bad values; nothing was imported "
            "(--skip-invalid imports the rest and keeps the bad rows in the rejects folder)",
            problems,
        )
    rejects_path = _write_rejects(settings, path, df, bad_rows, now) if bad_rows else None
    if not good:
        raise LabelImportError(f"{path}: no valid rows to import")
    table, rep_extra = _label_rows(settings, good, level, source, labelled_by, now)
    digest = hashlib.sha256(raw + f"|{level}".encode()).hexdigest()[:16]
    batch = f"{source}-{digest}"
    store = LabelStore(settings.labels_dir)
    replaced = (store.root / f"{batch}.parquet").exists()
    out = store.write(table, batch) if table.num_rows else None
    labels = table.column("label").to_numpy()
    return ImportReport(
        path=path,
        source=source,
        level=level,
        unanswered=unanswered,
        rows=len(df),
        imported_rows=len(good),
        windows=table.num_rows,
        clients=len(set(table.column("client_id").to_pylist())),
        abusive_windows=int((labels == 1).sum()),
        batch=batch,
        batch_path=out,
        replaced=replaced,
        floored=floored,
        rejected=len(bad_rows),
        rejects_path=rejects_path,
        **rep_extra,
    )


def _label_rows(
    settings: Settings,
    good: list[dict[str, Any]],
    level: Level,
    source: str,
    labelled_by: str | None,
    now: datetime,
) -> tuple[pa.Table, dict[str, Any]]:
    rows = pd.DataFrame(good)
    rows["labelled_at"] = (
        rows["labelled_at"].fillna(pd.Timestamp(now))
        if "labelled_at" in rows
        else pd.Timestamp(now)
    )
    if labelled_by:
        rows["labelled_by"] = rows["labelled_by"].fillna(labelled_by)
    extra: dict[str, Any] = {}
    traffic = _traffic_windows(settings, rows["client_id"].unique().tolist())
    if level == "client":
        merged = rows.merge(traffic, on="client_id", how="left")
        keep = merged["event_timestamp"].notna()
        if "since" in merged:
            keep &= merged["since"].isna() | (merged["event_timestamp"] >= merged["since"])
        if "until" in merged:
            keep &= merged["until"].isna() | (merged["event_timestamp"] < merged["until"])
        counts = merged[keep].groupby("client_id").size()
        extra["expanded"] = {str(k): int(v) for k, v in counts.items()}
        extra["clients_without_traffic"] = sorted(set(rows["client_id"]) - set(counts.index))
        out = merged[keep]
    else:
        have = set(zip(traffic["client_id"], traffic["event_timestamp"], strict=True))
        extra["no_traffic"] = int(
            sum(
                (c, t) not in have
                for c, t in zip(rows["client_id"], rows["event_timestamp"], strict=True)
            )
        )
        out = rows
    # one row per window: a file that labels a window twice keeps its abusive verdict
    out = (
        out.sort_values("label", ascending=False)
        .drop_duplicates(["client_id", "event_timestamp"])
        .sort_values(["event_timestamp", "client_id"])
    )
    table = pa.table(
        {
            "client_id": pa.array(out["client_id"].astype(str).tolist(), pa.string()),
            "event_timestamp": pa.array(pd.to_datetime(out["event_timestamp"], utc=True)),
            "label": pa.array(out["label"].astype(int).tolist(), pa.int8()),
            "source": pa.array([source] * len(out), pa.string()),
            "scenario": pa.array(out["scenario"].tolist() if len(out) else [], pa.string()),
            "labelled_at": pa.array(pd.to_datetime(out["labelled_at"], utc=True)),
            "labelled_by": pa.array(out["labelled_by"].tolist() if len(out) else [], pa.string()),
        }
    )
    return table, extra


def _write_rejects(
    settings: Settings, path: Path, df: pd.DataFrame, bad_rows: dict[int, list[str]], now: datetime
) -> Path:
    out = settings.rejects_dir / f"labels-{now:%Y%m%dT%H%M%S}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as fh:
        for i, reasons in sorted(bad_rows.items()):
            fh.write(
                json.dumps(
                    {
                        "file": str(path),
                        "row": i + 1,
                        "reasons": reasons,
                        "raw": df.iloc[i].to_dict(),
                    }
                )
                + "\n"
            )
    return out


# -- out ------------------------------------------------------------------------------------


def list_batches(settings: Settings) -> list[dict[str, Any]]:
    """One row per stored batch: name, source, rows, clients, abusive share, window range."""
    out = []
    for name, t in LabelStore(settings.labels_dir).batches():
        df = t.to_pandas()
        out.append(
            {
                "batch": name,
                "source": ", ".join(sorted(set(df["source"]))) if len(df) else "-",
                "windows": len(df),
                "clients": int(df["client_id"].nunique()),
                "abusive": int((df["label"] == 1).sum()),
                "first": df["event_timestamp"].min() if len(df) else None,
                "last": df["event_timestamp"].max() if len(df) else None,
                "labelled_at": df["labelled_at"].max() if len(df) else None,
            }
        )
    return out


def client_labels(settings: Settings, client_id: str) -> pd.DataFrame:
    """Every stored label of one client (all sources); ``counts`` marks the one that is used
    for each window (``LabelStore.resolve``'s rule)."""
    df = LabelStore(settings.labels_dir).read().to_pandas()
    df = df[df["client_id"] == client_id].copy()
    if df.empty:
        return df
    rank = {s: i for i, s in enumerate(SOURCES)}
    df["_rank"] = df["source"].map(rank).fillna(-1)
    df["_at"] = df["labelled_at"].fillna(pd.Timestamp(0, tz="UTC"))
    df = df.sort_values(["event_timestamp", "_rank", "_at"], ascending=[True, False, False])
    df["counts"] = ~df.duplicated("event_timestamp")
    return df.drop(columns=["_rank", "_at"]).reset_index(drop=True)


def export_labels(
    settings: Settings,
    out: Path | None,
    fmt: Literal["csv", "parquet", "jsonl"] = "csv",
    source: str | None = None,
) -> tuple[pd.DataFrame, bytes]:
    """The labels that count (one per window, ``LabelStore.resolve``), optionally of one
    source, as ``fmt``; written to ``out`` when given. Returns the frame and the bytes."""
    store = LabelStore(settings.labels_dir)
    table = store.resolve(store.read())
    df = table.to_pandas()
    if source is not None:
        df = df[df["source"] == source]
    df = df.reset_index(drop=True)
    if fmt == "parquet":
        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        data = buf.getvalue()
    elif fmt == "jsonl":
        data = df.to_json(orient="records", lines=True, date_format="iso").encode()
    else:
        data = df.to_csv(index=False, date_format="%Y-%m-%dT%H:%M:%S%z").encode()
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
    return df, data
