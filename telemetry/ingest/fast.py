"""The columnar fast path: a whole batch of text log lines parsed with Arrow compute.

The format's regex runs over the batch at once (``pyarrow.compute.extract_regex``,
RE2), each variable is converted column-wise by the kind ``fields.SOURCES`` gives
it, and the per-record converters run once per *distinct* value for what only
Python knows (timestamps in text form, route templates, device types from user
agents). A row is taken only when every step is sure to give what the per-record
parser gives; the rest (escapes, non-ASCII bytes, lists of upstream times,
negative numbers, odd request lines, anything that fails a check) goes back to
the per-record path, which also writes the reasons of rejects. ``tests/telemetry/
test_formats.py`` checks fast == per-record on generated lines, request ids included.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from telemetry.ingest.fields import (
    ATTRIBUTE_EXCLUDE,
    ROUTE_VAR,
    SECRET_NAME,
    SOURCES,
    Source,
    convert,
    secret_id,
)
from telemetry.ingest.formats import LogFormat
from telemetry.ingest.normalize import (
    RejectError,
    device_from_user_agent,
    method_or_other,
)
from telemetry.schema import TS

__all__ = ["FastBatch", "parse_fast"]

# rows the fast path leaves to the per-record parser: escapes and control characters
# (non-ASCII rows are left too, before any regex runs on them)
_UNSAFE = r"[\\\x00-\x1f\x7f]"
_DIGITS = r"^\d{1,15}$"
_NUMBER = r"^\d{1,15}(?:\.\d{1,9})?$"
_REQUEST_SHAPE = r"^[A-Za-z]+ \S+(?: HTTP/\d(?:\.\d)?)?$"

_TYPES: dict[str, pa.DataType] = {
    "str": pa.string(),
    "addr": pa.string(),
    "int": pa.int64(),
    "float": pa.float64(),
    "status": pa.int16(),
    "time": TS,
    "epoch": TS,
    "haproxy_time": TS,
    "secret": pa.string(),
}


@dataclass
class FastBatch:
    """Fields of the rows the fast path took (``columns``, in row order of ``taken``)
    and the row indices it left to the per-record path."""

    columns: dict[str, pa.Array]
    taken: np.ndarray
    left: np.ndarray


def _map_unique(
    col: pa.Array, fn: Callable[[Any], Any], typ: pa.DataType
) -> tuple[pa.Array, np.ndarray]:
    """fn over each distinct value; (mapped column, rows whose value fn rejected)."""
    enc = pc.dictionary_encode(col)
    outs: list[Any] = []
    bad: list[int] = []
    for i, v in enumerate(enc.dictionary.to_pylist()):
        try:
            outs.append(fn(v))
        except RejectError:
            outs.append(None)
            bad.append(i)
    mapped = pa.array(outs, typ).take(enc.indices)
    rej = (
        pc.fill_null(pc.is_in(enc.indices, pa.array(bad, enc.indices.type)), False)
        if bad
        else pa.array(np.zeros(len(col), bool))
    )
    return mapped, rej.to_numpy(zero_copy_only=False)


def _on_unique(col: pa.Array, fn: Callable[[pa.Array], Any]) -> Any:
    """A column-wise ``fn`` run over the distinct values only, its results taken back to the
    rows (timestamps and paths repeat: a busy log has a few distinct values per second)."""
    enc = pc.dictionary_encode(col)
    out = fn(enc.dictionary)
    if isinstance(out, tuple):
        return tuple(_take_back(o, enc.indices) for o in out)
    return _take_back(out, enc.indices)


def _take_back(values: Any, indices: pa.Array) -> Any:
    if isinstance(values, np.ndarray):  # a mask: rows whose index is null are False
        idx = pc.fill_null(indices, 0).to_numpy(zero_copy_only=False)
        return values[idx] & _np(indices.is_valid())
    return values.take(indices)


def _np(mask: Any) -> np.ndarray:
    return np.asarray(pc.fill_null(mask, False).to_numpy(zero_copy_only=False), dtype=bool)


def _convert_col(src: Source, col: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """A column of one variable (nulls where absent) -> (values, rows left to per-record)."""
    k = src.kind
    n = len(col)
    if k == "str":
        return col, np.zeros(n, bool)
    if k in ("int", "status", "float", "epoch"):
        pattern = _NUMBER if k in ("float", "epoch") else _DIGITS
        if k == "float" and src.neg_none:  # -1 = "no upstream": null, as convert() reads it
            pattern = r"^-?\d{1,15}(?:\.\d{1,9})?$"
        good = _np(pc.match_substring_regex(col, pattern))
        left = _np(col.is_valid()) & ~good
        safe = pc.if_else(pa.array(good), col, pa.nulls(n, pa.string()))
        if k == "int":
            return safe.cast(pa.int64()), left
        if k == "status":
            v = safe.cast(pa.int64())
            bad = _np(pc.or_(pc.less(v, 100), pc.greater(v, 599)))
            return pc.if_else(pa.array(bad), pa.nulls(n, pa.int64()), v).cast(pa.int16()), (
                left | bad
            )
        x = safe.cast(pa.float64())
        if k == "float":
            v = pc.multiply(x, src.scale)
            if src.neg_none:
                v = pc.if_else(pc.less(v, 0), pa.nulls(n, pa.float64()), v)
            return v, left
        # epoch seconds (or milliseconds) -> microseconds, rounded half to even as Python does
        xs = x.to_numpy(zero_copy_only=False)
        xs = np.where(xs > 1e11, xs / 1000.0, xs)
        us = np.round(xs * 1_000_000)
        mask = np.isnan(us)
        us = np.where(mask, 0, us).astype(np.int64)
        return pa.array(us, pa.int64(), mask=mask).cast(TS), left
    if src.var == "time_local":
        return _on_unique(col, _clf_times)
    if k == "haproxy_time":
        return _haproxy_times(col)
    if k == "time":
        return _iso_times(col, lambda c: _map_unique(c, lambda v: convert(src, v), TS))
    return _map_unique(col, lambda v: convert(src, v), _TYPES[k])


_ISO = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:Z|[+-](?:[01]\d|2[0-3]):[0-5]\d)$"


def _iso_times(
    col: pa.Array, rest: Callable[[pa.Array], tuple[pa.Array, np.ndarray]]
) -> tuple[pa.Array, np.ndarray]:
    """ISO 8601 with a zone (``$time_iso8601``, Envoy, ALB) cast by Arrow, which checks what
    ``datetime.fromisoformat`` checks; anything else (or a batch Arrow refuses) by ``rest``."""
    n = len(col)
    shape = _np(pc.match_substring_regex(col, _ISO))
    if not shape.any():
        return rest(col)
    try:
        cast = pc.if_else(pa.array(shape), col, "1970-01-01T00:00:00Z").cast(TS)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return rest(col)
    if shape.all() or not _np(col.is_valid())[~shape].any():
        return pc.if_else(pa.array(shape), cast, pa.nulls(n, TS)), np.zeros(n, bool)
    other, bad = rest(pc.if_else(pa.array(shape), pa.nulls(n, pa.string()), col))
    return pc.if_else(pa.array(shape), cast, other), bad & ~shape


def _haproxy_times(col: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """``06/Feb/2009:12:14:14.655`` (no zone: UTC) as ``fields.haproxy_time`` reads it: the
    date by ``_clf_times``, then the first three digits of the fraction as milliseconds."""
    n = len(col)
    shape = _np(pc.match_substring_regex(col, r"^.{20}\.\d+$"))
    safe = pc.if_else(pa.array(shape), col, "01/Jan/1970:00:00:00.0")
    head = pc.binary_join_element_wise(pc.utf8_slice_codeunits(safe, 0, 20), "+0000", " ")
    ts, bad = _clf_times(head)
    ms = pc.utf8_rpad(pc.utf8_slice_codeunits(safe, 21, 24), 3, "0").cast(pa.int64())
    us = pc.add(ts.cast(pa.int64()), pc.multiply(ms, 1000))
    ok = shape & ~bad
    out = pc.if_else(pa.array(ok), us.cast(TS), pa.nulls(n, TS))
    return out, _np(col.is_valid()) & ~ok


_MONTHS = pa.array(
    ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
)
_CLF = r"^\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}$"


def _clf_times(col: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """``10/Oct/2000:13:55:36 -0700`` column -> UTC timestamps, field by field in numpy, with
    every check ``normalize.parse_clf_time`` makes (a bad day, hour or zone goes back to it)."""
    shape = _np(pc.match_substring_regex(col, _CLF))
    safe = pc.if_else(pa.array(shape), col, "01/Jan/1970:00:00:00 +0000")

    def part(a: int, b: int) -> np.ndarray:
        return np.asarray(
            pc.utf8_slice_codeunits(safe, a, b).cast(pa.int64()).to_numpy(zero_copy_only=False)
        )

    month = np.asarray(
        pc.fill_null(pc.index_in(pc.utf8_slice_codeunits(safe, 3, 6), _MONTHS), -1).to_numpy(
            zero_copy_only=False
        )
    )
    day, year = part(0, 2), part(7, 11)
    hh, mm, ss = part(12, 14), part(15, 17), part(18, 20)
    sign = np.where(np.asarray(pc.utf8_slice_codeunits(safe, 21, 22).to_pylist()) == "-", -1, 1)
    off = sign * (part(22, 24) * 60 + part(24, 26))
    good = shape & (month >= 0) & (year >= 1) & (hh < 24) & (mm < 60) & (ss < 60)
    good &= np.abs(off) < 24 * 60
    ym = (np.clip(year, 1, 9999) - 1970) * 12 + np.clip(month, 0, 11)
    start = ym.astype("datetime64[M]").astype("datetime64[D]")
    days_in = (ym + 1).astype("datetime64[M]").astype("datetime64[D]") - start
    good &= (day >= 1) & (day <= days_in.astype(np.int64))
    days = (start - np.datetime64("1970-01-01", "D")).astype(np.int64) + day - 1
    secs = days * 86400 + hh * 3600 + mm * 60 + ss - off * 60
    us = np.where(good, secs * 1_000_000, 0)
    ts = pa.array(us, pa.int64(), mask=~good).cast(TS)
    present = _np(col.is_valid())
    return ts, present & ~good


def _field(vars_: dict[str, pa.Array], field: str, n: int) -> tuple[pa.Array | None, np.ndarray]:
    """The field from the first present variable of its sources, and rows left."""
    result: pa.Array | None = None
    taken = np.zeros(n, bool)
    left = np.zeros(n, bool)
    for src in SOURCES[field]:
        col = vars_.get(src.var)
        if col is None:
            continue
        present = _np(col.is_valid())
        use = present & ~taken
        if not use.any():
            continue
        vals, bad = _convert_col(src, col)
        typ = _TYPES[src.kind]
        vals = vals.cast(typ)
        result = vals if result is None else pc.if_else(pa.array(use), vals, result.cast(typ))
        left |= use & bad
        taken |= present
    return result, left


def _request(vars_: dict[str, pa.Array], n: int) -> tuple[dict[str, pa.Array], np.ndarray]:
    if "request_method" in vars_ and "request_uri" in vars_:
        method, target = vars_["request_method"], vars_["request_uri"]
        ok = _np(pc.and_(method.is_valid(), target.is_valid()))
        ok &= _np(pc.match_substring_regex(method, r"^[A-Za-z]+$"))
    elif "request_method" in vars_ and "uri" in vars_:
        method, uri = vars_["request_method"], vars_["uri"]
        args = vars_.get("args", pa.nulls(n, pa.string()))
        target = pc.if_else(args.is_valid(), pc.binary_join_element_wise(uri, args, "?"), uri)
        ok = _np(pc.and_(method.is_valid(), uri.is_valid()))
        ok &= _np(pc.match_substring_regex(method, r"^[A-Za-z]+$"))
    elif "request" in vars_:
        # validated by a capture-free match (RE2's fast DFA), then split on the spaces
        req = vars_["request"]
        ok = _np(pc.match_substring_regex(req, _REQUEST_SHAPE))
        parts = pc.split_pattern(pc.if_else(pa.array(ok), req, "_ /"), " ", max_splits=2)
        method, target = pc.list_element(parts, 0), pc.list_element(parts, 1)
    else:
        return {}, np.ones(n, bool)
    # absolute-form targets (proxies, load balancers): the path starts after the host
    absolute = pc.match_substring_regex(target, r"^https?://")
    stripped = pc.replace_substring_regex(target, r"^https?://[^/]*", "")
    stripped = pc.if_else(pc.equal(stripped, ""), "/", stripped)
    target = pc.if_else(pc.fill_null(absolute, False), stripped, target)
    ok &= _np(pc.starts_with(target, "/"))
    pq_ = pc.split_pattern(target, "?", max_splits=1)
    path = pc.list_element(pq_, 0)
    has_q = pc.equal(pc.list_value_length(pq_), 2)
    query = pc.if_else(
        has_q,
        pc.list_element(pc.if_else(has_q, pq_, pa.scalar(["", ""], pq_.type)), 1),
        pa.nulls(n, pa.string()),
    )
    out = {
        "http_request_method": _map_unique(method, method_or_other, pa.string())[0],
        "url_path": path,
        "url_query": query,
        "http_route": _on_unique(path, route_templates),
    }
    return out, ~ok


_ID_SEG = (
    r"^(?:\d+|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|[0-9a-fA-F]{16,})$"
)


def route_templates(path: pa.Array) -> pa.Array:
    """``normalize.route_template`` column-wise (ASCII paths): split on ``/``, segments that
    are numbers, UUIDs, long hex or token-like (20+ word characters, a quarter digits) become
    ``{id}``, joined again."""
    segs = pc.split_pattern(path, "/")
    flat = pc.list_flatten(segs)
    token = pc.and_(
        pc.match_substring_regex(flat, r"^[A-Za-z0-9_]{20,}$"),
        pc.greater_equal(
            pc.multiply(pc.count_substring_regex(flat, r"\d"), 4), pc.utf8_length(flat)
        ),
    )
    is_id = pc.and_(
        pc.greater(pc.utf8_length(flat), 0),
        pc.or_(pc.match_substring_regex(flat, _ID_SEG), token),
    )
    flat = pc.if_else(is_id, "{id}", flat)
    lengths = pc.fill_null(pc.list_value_length(segs), 0).to_numpy(zero_copy_only=False)
    bounds = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    lists = pa.ListArray.from_arrays(pa.array(bounds), flat, mask=pc.is_null(segs))
    joined = pc.binary_join(lists, "/")
    return pc.if_else(pc.equal(path, ""), "/", joined)


def _attributes(vars_: dict[str, pa.Array], n: int) -> pa.Array:
    names = sorted(v for v in vars_ if v not in ATTRIBUTE_EXCLUDE)
    typ = pa.map_(pa.string(), pa.string())
    if not names:
        return pa.nulls(n, typ)
    cols = [vars_[v] for v in names]
    valid = np.stack([_np(c.is_valid()) for c in cols], axis=1)
    rows, idx = np.nonzero(valid)  # row-major: each row's variables in name order
    counts = valid.sum(axis=1)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    cols = [
        _map_unique(c, secret_id, pa.string())[0] if SECRET_NAME.search(v) else c
        for v, c in zip(names, cols, strict=True)
    ]
    allv = pa.concat_arrays([c.cast(pa.string()) for c in cols])
    items = allv.take(pa.array(idx * n + rows))
    keys = pa.array(np.array(names, dtype=object)[idx], pa.string())
    return pa.MapArray.from_arrays(
        pa.array(offsets), keys, items, type=typ, mask=pa.array(counts == 0)
    )


_POOL: ThreadPoolExecutor | None = None


def start_extract(text: pa.Array, regex: str, threads: int | None = None) -> Callable[[], Any]:
    """``extract_regex`` over slices of the batch in pool threads (RE2 runs without the GIL,
    so the caller's Python work goes on meanwhile); call the result to get the struct array."""
    global _POOL
    n = len(text)
    workers = threads or max(1, min((os.cpu_count() or 1), 4))
    if n < 20_000:
        return lambda: pc.extract_regex(text, regex)
    if _POOL is None:
        _POOL = ThreadPoolExecutor(4, thread_name_prefix="ingest-regex")
    step = -(-n // max(workers, 2))
    futs = [_POOL.submit(pc.extract_regex, text.slice(a, step), regex) for a in range(0, n, step)]
    return lambda: pa.concat_arrays([f.result() for f in futs])


def ascii_only(text: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Non-ASCII lines blanked (no regex ever sees invalid UTF-8), and which were ASCII."""
    ascii_ = _np(pc.string_is_ascii(text))
    return pc.if_else(pa.array(ascii_), text, ""), ascii_


def parse_fast(
    fmt: LogFormat,
    text: pa.Array,
    extracted: Callable[[], Any] | None = None,
    ascii_: np.ndarray | None = None,
) -> FastBatch:
    """Parse a batch of lines in format ``fmt``. With ``extracted`` (from ``start_extract``,
    started by the caller), ``text`` and ``ascii_`` are what ``ascii_only`` gave."""
    n = len(text)
    assert fmt.regex is not None
    if extracted is None or ascii_ is None:
        text, ascii_ = ascii_only(text)
        extracted = start_extract(text, fmt.fast_regex)
    unsafe = _np(pc.match_substring_regex(text, _UNSAFE))
    m = extracted()
    left = ~ascii_ | ~_np(m.is_valid()) | unsafe
    vars_: dict[str, pa.Array] = {}
    for i, var in enumerate(fmt.names):
        if var not in vars_:
            vars_[var] = m.field(f"_v{i}")
    return columns_from_vars(vars_, n, left)


def _no_dash(col: pa.Array) -> pa.Array:
    """ "-" and "" are what servers write for "no value" (and what an optional group that did
    not take part gives): null, as ``none_if_dash`` reads them."""
    dash = pc.or_(pc.equal(col, "-"), pc.equal(col, ""))
    return pc.if_else(dash, pa.nulls(len(col), pa.string()), col)


def columns_from_vars(vars_: dict[str, pa.Array], n: int, left: np.ndarray) -> FastBatch:
    """Variables (string columns, one per variable) -> the contract's columns for the rows
    the column-wise conversions are sure of; ``left`` marks rows already left."""
    vars_ = {k: _no_dash(v) for k, v in vars_.items()}
    cols: dict[str, pa.Array] = {}
    for field in SOURCES:
        vals, bad = _field(vars_, field, n)
        left |= bad
        if vals is not None:
            cols[field] = vals
    for need in ("timestamp", "http_response_status_code"):
        if need not in cols:
            left[:] = True
        else:
            left |= ~_np(cols[need].is_valid())
    req, bad = _request(vars_, n)
    left |= bad
    cols.update(req)
    route = vars_.get(ROUTE_VAR)
    if route is not None and "http_route" in cols:
        cols["http_route"] = pc.if_else(route.is_valid(), route, cols["http_route"])
    cols["attributes"] = _attributes(vars_, n)
    taken = np.flatnonzero(~left)
    idx = pa.array(taken)
    return FastBatch({k: v.take(idx) for k, v in cols.items()}, taken, np.flatnonzero(left))


def _read_json(lines: list[bytes], schema: pa.Schema) -> pa.Table | None:
    import io

    import pyarrow.json as pj

    try:
        return pj.read_json(
            io.BytesIO(b"\n".join(lines)),
            read_options=pj.ReadOptions(block_size=1 << 20),  # blocks parsed in parallel
            parse_options=pj.ParseOptions(
                explicit_schema=schema, unexpected_field_behavior="infer"
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


def _json_segments(
    lines: list[bytes],
    a: int,
    b: int,
    schema: pa.Schema,
    out: list[tuple[int, pa.Table]],
    floor: int = 64,
) -> None:
    """Read lines[a:b] at once; when Arrow refuses (a broken line, a number where a string
    was), halve until the refused lines are found (segments under 64 lines are left whole
    to the per-record reader; small batches are halved down to the line): one bad line costs a few reads, not the batch."""
    tbl = _read_json(lines[a:b], schema)
    if tbl is not None and tbl.num_rows == b - a:
        out.append((a, tbl))
    elif b - a > floor:
        mid = (a + b) // 2
        _json_segments(lines, a, mid, schema, out, floor)
        _json_segments(lines, mid, b, schema, out, floor)


def parse_fast_json(fmt: LogFormat, lines: list[bytes]) -> FastBatch:
    """A batch of JSON lines whose keys are variables (``fmt.json_vars``), read by Arrow's
    JSON reader with every key as a string. Lines Arrow refuses, rows with escapes or
    non-ASCII bytes, and rows with a value that is not a string are left to the per-record
    reader (which also gives the reasons)."""
    assert fmt.json_vars is not None
    n = len(lines)
    # every key is read as a string: the keys of up to 64 lines spread over the batch (a
    # key only later lines have is inferred; a value that is not a string is left)
    keys: dict[str, None] = {}
    for raw in lines[:: max(1, n // 64)]:
        try:
            rec = json.loads(raw)
        except ValueError:
            continue
        if isinstance(rec, dict):
            keys.update(dict.fromkeys(rec))
    schema = pa.schema([(k, pa.string()) for k in keys])
    segments: list[tuple[int, pa.Table]] = []
    _json_segments(lines, 0, n, schema, segments, floor=max(1, min(64, n // 256)))
    read = np.zeros(n, bool)
    tables = []
    for a, tbl in segments:
        read[a : a + tbl.num_rows] = True
        tables.append(tbl)
    rows = np.flatnonzero(read)
    if not len(rows):
        return FastBatch({}, rows, np.arange(n))
    tbl = pa.concat_tables(tables, promote_options="permissive")
    raw = pa.array([lines[i] for i in rows.tolist()], pa.binary()).view(pa.string())
    m = len(rows)
    left = ~_np(pc.string_is_ascii(raw))
    left |= _np(pc.match_substring_regex(pc.if_else(pa.array(~left), raw, ""), r"[\\]"))
    vars_: dict[str, pa.Array] = {}
    for name, col in zip(tbl.column_names, tbl.columns, strict=True):
        arr = col.combine_chunks()
        if pa.types.is_null(arr.type):
            continue
        if not pa.types.is_string(arr.type):
            left |= _np(arr.is_valid())
            continue
        vars_[fmt.json_vars.get(name, name)] = arr
    fb = columns_from_vars(vars_, m, left)
    # back to the batch's row numbers
    return FastBatch(
        fb.columns,
        rows[fb.taken],
        np.sort(np.concatenate([np.flatnonzero(~read), rows[fb.left]])),
    )


def complete_fast(
    cols: dict[str, pa.Array],
    derived_ids: Callable[[np.ndarray], list[str]],
    consumers: dict[str, dict[str, Any]] | None,
) -> tuple[dict[str, pa.Array], np.ndarray]:
    """What ``_complete`` does per record, column-wise: ids, the client, its attributes,
    the device. Returns the columns and the rows (of ``cols``) left to the per-record path
    (no client id and no address: the per-record path rejects them with the reason)."""
    n = len(cols["timestamp"])
    rid = cols.get("request_id")
    missing = np.ones(n, bool) if rid is None else ~_np(rid.is_valid())
    if missing.any():
        derived = pa.array(derived_ids(np.flatnonzero(missing)), pa.string())
        full = pa.nulls(n, pa.string()) if rid is None else rid
        # scatter the derived ids into the missing slots
        pos = np.cumsum(missing) - 1
        filled = derived.take(pa.array(np.where(missing, pos, 0)))
        rid = pc.if_else(pa.array(missing), filled, full)
    cols["request_id"] = rid
    addr = cols.get("client_address", pa.nulls(n, pa.string()))
    cid = cols.get("client_id")
    cid = addr if cid is None else pc.coalesce(cid, addr)
    left = ~_np(cid.is_valid())
    cols["client_id"] = cid
    device = None
    if consumers:
        table = consumers
        for k in ("tier", "region", "device_type"):

            def attr(c: str, k: str = k) -> Any:
                return (table.get(c) or {}).get(k)

            col = _map_unique(cid, attr, pa.string())[0]
            if k == "device_type":
                device = pc.if_else(pc.equal(col, ""), pa.nulls(n, pa.string()), col)
            else:
                cols[k] = col
    ua = cols.get("user_agent", pa.nulls(n, pa.string()))
    from_ua = _map_unique(ua, device_from_user_agent, pa.string())[0]
    cols["device_type"] = from_ua if device is None else pc.coalesce(device, from_ua)
    return cols, left
