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

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from telemetry.ingest.fields import (
    ATTRIBUTE_EXCLUDE,
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
    route_template,
)
from telemetry.schema import TS

__all__ = ["FastBatch", "parse_fast"]

# rows the fast path leaves to the per-record parser: escapes and control characters
# (non-ASCII rows are left too, before any regex runs on them)
_UNSAFE = r"[\\\x00-\x1f\x7f]"
_DIGITS = r"^\d{1,15}$"
_NUMBER = r"^\d{1,15}(?:\.\d{1,9})?$"
_REQUEST = r"^(?P<m>[A-Za-z]+) (?P<t>\S+)(?: HTTP/\d(?:\.\d)?)?$"
_TARGET = r"^(?P<p>[^?]*)(?P<q>\?.*)?$"

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
            return pc.multiply(x, src.scale), left
        # epoch seconds (or milliseconds) -> microseconds, rounded half to even as Python does
        xs = x.to_numpy(zero_copy_only=False)
        xs = np.where(xs > 1e11, xs / 1000.0, xs)
        us = np.round(xs * 1_000_000)
        mask = np.isnan(us)
        us = np.where(mask, 0, us).astype(np.int64)
        return pa.array(us, pa.int64(), mask=mask).cast(TS), left
    return _map_unique(col, lambda v: convert(src, v), _TYPES[k])


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
        m = pc.extract_regex(vars_["request"], _REQUEST)
        ok = _np(m.is_valid())
        method, target = m.field("m"), m.field("t")
    else:
        return {}, np.ones(n, bool)
    # absolute-form targets (proxies, load balancers): the path starts after the host
    absolute = pc.match_substring_regex(target, r"^https?://")
    stripped = pc.replace_substring_regex(target, r"^https?://[^/]*", "")
    stripped = pc.if_else(pc.equal(stripped, ""), "/", stripped)
    target = pc.if_else(pc.fill_null(absolute, False), stripped, target)
    ok &= _np(pc.starts_with(target, "/"))
    parts = pc.extract_regex(target, _TARGET)
    path = parts.field("p")
    q = parts.field("q")
    query = pc.if_else(pc.equal(q, ""), pa.nulls(n, pa.string()), pc.utf8_slice_codeunits(q, 1))
    out = {
        "http_request_method": _map_unique(method, method_or_other, pa.string())[0],
        "url_path": path,
        "url_query": query,
        "http_route": _map_unique(path, route_template, pa.string())[0],
    }
    return out, ~ok


def _attributes(vars_: dict[str, pa.Array], n: int) -> pa.Array:
    names = [v for v in vars_ if v not in ATTRIBUTE_EXCLUDE]
    typ = pa.map_(pa.string(), pa.string())
    if not names:
        return pa.nulls(n, typ)
    cols = [vars_[v] for v in names]
    valid = np.stack([_np(c.is_valid()) for c in cols], axis=1)
    rows, idx = np.nonzero(valid)  # row-major: each row's variables in definition order
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


def parse_fast(fmt: LogFormat, text: pa.Array) -> FastBatch:
    """Parse a batch of lines (a string array, raw as written) in format ``fmt``."""
    n = len(text)
    assert fmt.regex is not None
    ascii_ = _np(pc.string_is_ascii(text))
    text = pc.if_else(pa.array(ascii_), text, "")
    m = pc.extract_regex(text, fmt.regex)
    left = ~ascii_ | ~_np(m.is_valid()) | _np(pc.match_substring_regex(text, _UNSAFE))
    vars_: dict[str, pa.Array] = {}
    for i, var in enumerate(fmt.names):
        if var in vars_:
            continue
        col = m.field(f"_v{i}")
        # "-" and "" are what servers write for "no value"; an optional group that did not take part gives ""
        vars_[var] = pc.if_else(pc.is_in(col, pa.array(["-", ""])), pa.nulls(n, pa.string()), col)
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
    cols["attributes"] = _attributes(vars_, n)
    taken = np.flatnonzero(~left)
    idx = pa.array(taken)
    return FastBatch({k: v.take(idx) for k, v in cols.items()}, taken, np.flatnonzero(left))


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
