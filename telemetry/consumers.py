"""The consumers table: attributes logs don't carry (``client_id, tier, region, device_type``).

One table per data dir, ``<data_dir>/consumers.parquet`` (and a CSV copy beside it). A file a
user brings (``gatewise ingest --consumers FILE``) is read by content (Parquet, JSON lines or
CSV), validated (a missing ``client_id``, an unknown column or a client listed twice with
different attributes is an error naming it) and merged into the stored table: new clients are
added, and where a client's attributes changed the file wins (it is the newer word); every
change is reported.

    report = merge_consumers(settings.consumers_path, read_consumers(Path("consumers.csv")))
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from telemetry.schema import CONSUMERS_SCHEMA, conform

__all__ = ["ConsumersMerge", "load_consumers", "merge_consumers", "read_consumers"]

_ATTRS = ("tier", "region", "device_type")


@dataclass
class ConsumersMerge:
    path: Path
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    total: int = 0
    # (client_id, column, stored value, new value) for every attribute the file changed
    changes: list[tuple[str, str, Any, Any]] = field(default_factory=list)


def read_consumers(path: Path) -> pa.Table:
    """A consumers file as ``CONSUMERS_SCHEMA``; ``ValueError`` names what is wrong."""
    if not path.exists():
        raise FileNotFoundError(f"consumers table {path} does not exist")
    raw = path.read_bytes()
    try:
        if raw[:4] == b"PAR1":
            table = pq.read_table(io.BytesIO(raw))
        elif raw.lstrip()[:1] in (b"{", b"["):
            text = raw.decode("utf-8-sig")
            rows = (
                json.loads(text)
                if text.lstrip().startswith("[")
                else [json.loads(x) for x in text.splitlines() if x.strip()]
            )
            table = pa.Table.from_pylist(rows)
        else:
            import pyarrow.csv as pacsv

            table = pacsv.read_csv(
                io.BytesIO(raw),
                convert_options=pacsv.ConvertOptions(
                    column_types={c: pa.string() for c in CONSUMERS_SCHEMA.names}
                ),
            )
    except (pa.ArrowInvalid, ValueError) as exc:
        raise ValueError(
            f"consumers table {path}: not readable CSV, JSON or Parquet ({exc})"
        ) from None
    if "client_id" not in table.column_names:
        raise ValueError(
            f"consumers table {path}: column 'client_id' is missing (has {table.column_names})"
        )
    unknown = set(table.column_names) - set(CONSUMERS_SCHEMA.names)
    if unknown:
        raise ValueError(
            f"consumers table {path}: unknown column(s) {sorted(unknown)}; expected {CONSUMERS_SCHEMA.names}"
        )
    table = table.select([c for c in CONSUMERS_SCHEMA.names if c in table.column_names])
    table = table.cast(pa.schema([pa.field(c, pa.string()) for c in table.column_names]))
    try:
        table = conform(table, CONSUMERS_SCHEMA)
    except ValueError as exc:
        raise ValueError(f"consumers table {path}: {exc}") from None
    seen: dict[str, tuple[Any, ...]] = {}
    clashes: list[str] = []
    for i, row in enumerate(table.to_pylist(), start=1):
        cid = row["client_id"]
        if not cid:
            raise ValueError(f"consumers table {path}: row {i}: empty client_id")
        attrs = tuple(row[a] for a in _ATTRS)
        if cid in seen and seen[cid] != attrs:
            clashes.append(f"{cid} (row {i})")
        seen[cid] = attrs
    if clashes:
        raise ValueError(
            f"consumers table {path}: client(s) listed twice with different attributes: "
            + ", ".join(clashes[:10])
        )
    return _dedup(table)


def _dedup(table: pa.Table) -> pa.Table:
    rows = {r["client_id"]: r for r in table.to_pylist()}
    return pa.Table.from_pylist(list(rows.values()), schema=CONSUMERS_SCHEMA)


def load_consumers(path: Path) -> dict[str, dict[str, Any]]:
    """``client_id -> {tier, region, device_type}`` of a consumers file (for ingest)."""
    return {row.pop("client_id"): row for row in read_consumers(path).to_pylist()}


def merge_consumers(stored_path: Path, new: pa.Table) -> ConsumersMerge:
    """Merge ``new`` into the table at ``stored_path`` (Parquet, plus a CSV beside it),
    atomically; where an attribute differs, ``new`` wins. A null in ``new`` keeps the
    stored value (a file that leaves a column empty says nothing about it)."""
    stored = (
        {r["client_id"]: r for r in pq.read_table(stored_path).to_pylist()}
        if stored_path.exists()
        else {}
    )
    rep = ConsumersMerge(stored_path)
    for row in new.to_pylist():
        cid = row["client_id"]
        old = stored.get(cid)
        if old is None:
            stored[cid] = row
            rep.added += 1
            continue
        changed = False
        for a in _ATTRS:
            if row[a] is not None and row[a] != old.get(a):
                rep.changes.append((cid, a, old.get(a), row[a]))
                old[a] = row[a]
                changed = True
        rep.updated += int(changed)
        rep.unchanged += int(not changed)
    table = pa.Table.from_pylist(
        [{k: r.get(k) for k in CONSUMERS_SCHEMA.names} for r in stored.values()],
        schema=CONSUMERS_SCHEMA,
    ).sort_by("client_id")
    rep.total = table.num_rows
    stored_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = stored_path.with_name(f".{stored_path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, stored_path)
    import pyarrow.csv as pacsv

    csv_path = stored_path.with_suffix(".csv")
    tmp_csv = csv_path.with_name(f".{csv_path.name}.tmp")
    pacsv.write_csv(table, tmp_csv)
    os.replace(tmp_csv, csv_path)
    return rep
