"""Direct online reads: a feature service's vectors through Feast's provider, no SDK per call.

``FeatureStore.get_online_features`` resolves the service's feature references against the
registry, validates the entity rows, builds a response proto and converts it again, on
every call: about 1.6 ms for one id on SQLite (docs/benchmarks.md, issue 6), against well
under 0.2 ms for the read itself. The scoring service asks for the same service's features
thousands of times a second, so ``OnlineReader`` resolves the references once (per loaded
model version) and then reads the online store in Feast's own key layout and value
encoding, built with Feast's own key functions:

- SQLite: one ``SELECT ... UNION ALL ...`` over the service's view tables on a connection of
  its own per thread (Feast's provider read parses every row's timestamp through a
  converter and runs one query per view: 3.6 ms per view for 64 ids here);
- Redis: one pipelined ``HMGET`` per entity for every view at once (all of an entity's views
  share one hash in Feast's layout; the provider sends one pipeline per view);
- any other online store: the provider's ``online_read`` per view.

Feast stays the owner of the definitions and of materialization; this reads what it wrote
(parity tests against ``get_online_features`` on SQLite and on the real Redis:
``tests/features/test_feast.py``).

Values come back as a float64 matrix in the order asked for (``NaN`` where the store has
nothing), so the request path never builds a DataFrame. A non-numeric feature is refused
at construction (the caller keeps the SDK path for such a service).

    r = OnlineReader(store, "abuse_v1")
    X, newest = r.read(["c1", "c2"], columns=model_features)   # (2, k) float64, epoch s
"""

from __future__ import annotations

import sqlite3
import struct
import threading
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np
from feast.protos.feast.types.Value_pb2 import Value as _Value

__all__ = ["OnlineReader", "UnsupportedFeature"]

_NUMERIC = {"double_val", "float_val", "int64_val", "int32_val", "bool_val", "unix_timestamp_val"}


class UnsupportedFeature(ValueError):
    """A feature the direct path cannot return as a number (the SDK path serves it)."""


class OnlineReader:
    def __init__(self, store: Any, service: str) -> None:
        from feast.types import PrimitiveFeastType

        self.store = store
        self.service = service
        fs = store.get_feature_service(service)
        self.views: list[tuple[Any, list[str]]] = []
        self.join_key = ""
        key_type = None
        for proj in fs.feature_view_projections:
            view = store.get_feature_view(proj.name)
            names = [f.name for f in proj.features]
            for f in proj.features:
                t = f.dtype
                if not isinstance(t, PrimitiveFeastType) or t.name not in (
                    "FLOAT64",
                    "FLOAT32",
                    "INT64",
                    "INT32",
                    "BOOL",
                ):
                    raise UnsupportedFeature(f"{proj.name}:{f.name} is {t}, not a number")
            cols = view.entity_columns
            if len(cols) != 1:
                raise UnsupportedFeature(f"{proj.name}: {len(cols)} join keys (one supported)")
            if self.join_key and cols[0].name != self.join_key:
                raise UnsupportedFeature(
                    f"{proj.name}: join key {cols[0].name!r}, others {self.join_key!r}"
                )
            self.join_key = cols[0].name
            key_type = getattr(cols[0].dtype, "name", "STRING")
            self.views.append((view, names))
        self.columns = [n for _, names in self.views for n in names]
        if len(set(self.columns)) != len(self.columns):
            raise UnsupportedFeature(f"{service}: a feature name appears in two views")
        self._key_field = "int64_val" if key_type in ("INT64", "INT32") else "string_val"
        self._provider = store._get_provider()
        self._config = store.config
        self._local = threading.local()
        kind = str(self._config.online_store.type)
        if kind == "sqlite" or kind.endswith("SqliteOnlineStore"):
            from feast.infra.online_stores.helpers import compute_table_id
            from feast.infra.online_stores.sqlite import SqliteOnlineStore

            self.path = "sqlite"
            self._db = SqliteOnlineStore._get_db_path(self._config)
            versioning = self._config.registry.enable_online_feature_view_versioning
            self._tables = [
                '"' + compute_table_id(self._config.project, v, versioning).replace('"', '""') + '"'
                for v, _ in self.views
            ]
        elif kind == "redis" or kind.endswith("RedisOnlineStore"):
            from feast.infra.online_stores.helpers import _mmh3
            from feast.infra.online_stores.redis import _versioned_fv_name

            self.path = "redis"
            # every view's fields in one HMGET: (field, column name or None for a view's ts)
            self._fields: list[bytes | str] = []
            self._field_cols: list[str | None] = []
            for v, names in self.views:
                fv = _versioned_fv_name(v, self._config)
                for n in names:
                    self._fields.append(_mmh3(f"{fv}:{n}"))
                    self._field_cols.append(n)
                self._fields.append(f"_ts:{fv}")
                self._field_cols.append(None)
        else:
            self.path = "provider"

    def _entity_keys(self, ids: list[str]) -> list[Any]:
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        if self._key_field == "int64_val":
            vals = [Value(int64_val=int(i)) for i in ids]
        else:
            vals = [Value(string_val=str(i)) for i in ids]
        return [EntityKey(join_keys=[self.join_key], entity_values=[v]) for v in vals]

    def read(
        self, ids: list[str], columns: list[str] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(values, newest)``: a (len(ids), len(columns)) float64 matrix (NaN: no value)
        and each id's newest event time in epoch seconds (0: the store has nothing)."""
        columns = self.columns if columns is None else columns
        where = {c: j for j, c in enumerate(columns)}
        missing = [c for c in columns if c not in set(self.columns)]
        if missing:
            raise KeyError(f"{missing[0]!r} is not in feature service {self.service!r}")
        out = np.full((len(ids), len(columns)), np.nan)
        newest = np.zeros(len(ids))
        if not ids:
            return out, newest
        uniq = list(dict.fromkeys(ids))
        if len(uniq) != len(ids):  # read each id once, then spread the rows back
            U, tu = self.read(uniq, columns)
            at = {e: i for i, e in enumerate(uniq)}
            idx = [at[e] for e in ids]
            return U[idx], tu[idx]
        keys = self._entity_keys(ids)
        if self.path == "sqlite":
            self._read_sqlite(keys, where, out, newest)
        elif self.path == "redis":
            self._read_redis(keys, where, out, newest)
        else:
            self._read_provider(keys, where, out, newest)
        return out, newest

    def _serialized(self, keys: list[Any]) -> list[bytes]:
        from feast.infra.key_encoding_utils import serialize_entity_key

        v = self._config.entity_key_serialization_version
        return [serialize_entity_key(k, entity_key_serialization_version=v) for k in keys]

    def _conn(self) -> Any:
        c = getattr(self._local, "conn", None)
        if c is None:  # no type converters: values stay bytes, event_ts stays an int
            from pathlib import Path

            uri = Path(self._db).resolve().as_uri() + "?mode=ro"
            try:
                c = self._local.conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
            except sqlite3.OperationalError:
                return None  # nothing materialized yet: the file does not exist
        return c

    def _existing(self, c: Any) -> list[str]:
        """The service's view tables that exist: a view never materialized has none, and
        its features read as missing (looked up again every 10 s until they all exist)."""
        hit = getattr(self._local, "tables", None)
        if hit is not None and (len(hit[1]) == len(self._tables) or time.monotonic() < hit[0]):
            return list(hit[1])
        have = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        tables = [t for t in self._tables if t[1:-1].replace('""', '"') in have]
        self._local.tables = (time.monotonic() + 10.0, tables)
        return tables

    def _read_sqlite(
        self, keys: list[Any], where: dict[str, int], out: np.ndarray, newest: np.ndarray
    ) -> None:
        ser = self._serialized(keys)
        at = {e: i for i, e in enumerate(ser)}
        c = self._conn()
        if c is None:
            return
        tables = self._existing(c)
        if not tables:
            return
        step = max(1, 30000 // len(tables))  # SQLite's bound-parameter limit
        for lo in range(0, len(ser), step):
            chunk = ser[lo : lo + step]
            marks = ",".join("?" * len(chunk))
            q = " UNION ALL ".join(
                f"SELECT entity_key, feature_name, value, event_ts FROM {t} "
                f"WHERE entity_key IN ({marks})"
                for t in tables
            )
            rows = c.execute(q, chunk * len(tables)).fetchall()
            for ek, name, val, ts in rows:
                j = where.get(name)
                i = at[ek]
                t = ts if type(ts) is int else _epoch(ts)
                if t > newest[i]:
                    newest[i] = t
                if j is not None:
                    if len(val) == 9 and val[0] == 0x29:  # double_val: tag 5, fixed64
                        out[i, j] = _DOUBLE(val, 1)[0]
                    else:
                        out[i, j] = _number(val)

    def _read_redis(
        self, keys: list[Any], where: dict[str, int], out: np.ndarray, newest: np.ndarray
    ) -> None:
        from google.protobuf.timestamp_pb2 import Timestamp

        st = self._provider.online_store
        client = st._get_client(self._config.online_store)
        rkeys = st._generate_redis_keys_for_entities(self._config, keys)
        with client.pipeline(transaction=False) as pipe:
            for k in rkeys:
                pipe.hmget(k, self._fields)
            res = pipe.execute()
        cols = [None if n is None else where.get(n) for n in self._field_cols]
        for i, vals in enumerate(res):
            for j, raw, name in zip(cols, vals, self._field_cols, strict=True):
                if not raw:
                    continue
                if name is None:  # a view's _ts field
                    ts = Timestamp.FromString(raw)
                    t = ts.seconds + ts.nanos / 1e9
                    if t > newest[i]:
                        newest[i] = t
                elif j is not None:
                    if len(raw) == 9 and raw[0] == 0x29:
                        out[i, j] = _DOUBLE(raw, 1)[0]
                    else:
                        out[i, j] = _number(raw)

    def _read_provider(
        self, keys: list[Any], where: dict[str, int], out: np.ndarray, newest: np.ndarray
    ) -> None:
        for view, names in self.views:
            wanted = [n for n in names if n in where]
            if not wanted:
                continue
            rows = self._provider.online_read(self._config, view, keys, wanted)
            for i, (ts, vals) in enumerate(rows):
                if not vals:
                    continue
                if ts is not None:
                    t = ts.timestamp()
                    if t > newest[i]:
                        newest[i] = t
                for n in wanted:
                    v = vals.get(n)
                    if v is None:
                        continue
                    kind = v.WhichOneof("val")
                    if kind in _NUMERIC:
                        out[i, where[n]] = float(getattr(v, kind))


_DOUBLE = struct.Struct("<d").unpack_from  # Feast's Float64: Value{double_val} = 0x29 + 8 bytes


def _number(raw: bytes) -> float:
    """A serialized ``feast.types.Value`` as a float (NaN: empty or not a number)."""
    v = _Value.FromString(raw)
    kind = v.WhichOneof("val")
    return float(getattr(v, kind)) if kind in _NUMERIC else np.nan


def _epoch(ts: Any) -> float:
    """Feast's SQLite ``event_ts``: epoch seconds (its adapter), or an ISO string (older)."""
    if isinstance(ts, int | float):
        return float(ts)
    if isinstance(ts, bytes):
        ts = ts.decode()
    try:
        return float(ts)
    except (TypeError, ValueError):
        d = datetime.fromisoformat(str(ts))
        return (d if d.tzinfo else d.replace(tzinfo=UTC)).timestamp()
