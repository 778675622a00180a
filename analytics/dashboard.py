"""``gatewise dashboard``: a local web page over the gateway's telemetry.

Starlette serves one static page (plain HTML + Plotly, no build step, nothing fetched
from the internet: plotly.min.js comes from the installed plotly package) and a JSON
API the page draws from:

- ``GET /api/meta``: datasets, the selected dataset's span and filter values, and a
  ``stamp`` that changes when telemetry (or a policy, check or model) lands;
- ``GET /api/panel/{name}`` -> ``{"name", "columns", "rows", "meta"}``;
  ``GET /api/panel/{name}.csv``: the same rows as a CSV attachment;
- ``/review``: the review queue, worked from the keyboard (``analytics/review.py``).

Every number is computed by the analytics functions (DuckDB pushdown); the panels are
in ``analytics.dashboard_panels``. Answers are cached per (dataset, panel, query,
stamp), so the page's auto-refresh costs nothing until new data arrives.

``serve(load_settings())`` blocks; ``create_app(settings)`` is the ASGI app.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from analytics.cohorts import consumers
from analytics.dashboard_panels import PANELS, BadParam, PanelContext, csv_text, jsonable, rows
from analytics.source import GRANULARITIES, Filters, Source, parse_period

if TYPE_CHECKING:
    from config.settings import Settings

__all__ = ["create_app", "default_datasets", "serve"]

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
# request parameters that shape the Filters (the rest are panel options)
FILTER_PARAMS = frozenset(
    {"start", "end", "period", "tier", "region", "route", "client", "service", "device",
     "granularity"}
)  # fmt: skip
_LIST_PARAMS = {
    "tier": "tiers",
    "region": "regions",
    "route": "routes",
    "client": "clients",
    "service": "services",
    "device": "devices",
}
_STAMP_TTL_S = 1.0  # a page load fires a dozen requests: list the files once for them


def plotly_js_path() -> Path:
    import plotly

    return Path(os.path.dirname(plotly.__file__)) / "package_data" / "plotly.min.js"


def default_datasets(settings: Settings) -> dict[str, list[Path]]:
    """The live gateway store, and the long history first when it holds data."""
    history = settings.history_dir / "telemetry"
    out: dict[str, list[Path]] = {}
    if any(history.glob("hour=*/*.parquet")):
        out["history"] = [history]
    out["gateway"] = [settings.telemetry_dir]
    return out


class _LRU:
    """A small thread-safe least-recently-used cache."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            if key not in self._data:
                return None
            self._data.move_to_end(key)
            return self._data[key]

    def put(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)


@dataclass
class _Dataset:
    name: str
    roots: list[Path]
    source: Source
    _stamp: tuple[float, str] = field(default=(0.0, ""))

    def stamp(self) -> str:
        """Files, bytes and newest mtime of the stores: changes when telemetry lands."""
        at, value = self._stamp
        if time.monotonic() - at < _STAMP_TTL_S and value:
            return value
        n = size = newest = 0
        for root in self.roots:
            for p in Path(root).glob("hour=*/*.parquet"):
                st = p.stat()
                n, size, newest = n + 1, size + st.st_size, max(newest, st.st_mtime_ns)
        value = f"{n}-{size}-{newest}"
        refresh = getattr(self.source, "refresh", None)
        if value != self._stamp[1] and callable(refresh):
            # a caching Source must hold what the new stamp promises before answers are
            # cached under it (its own re-check is throttled)
            refresh(force=True)
        self._stamp = (time.monotonic(), value)
        return value


def _external_stamp(settings: Settings) -> str:
    """Newest change to the policy store, monitoring history and model registry."""
    paths = [
        settings.policy_dir / "history",
        settings.policy_dir / "active.json",
        settings.data_dir / "mlflow.db",
        *sorted((settings.data_dir / "monitoring" / "history").glob("date=*")),
    ]
    return str(max((p.stat().st_mtime_ns for p in paths if p.exists()), default=0))


def _utc(v: Any) -> pd.Timestamp:
    ts = pd.Timestamp(v)
    return ts.tz_localize(UTC) if ts.tzinfo is None else ts.tz_convert(UTC)


def _parse_time(param: str, text: str) -> datetime:
    # an unencoded "+00:00" in a query string arrives as " 00:00"
    text = re.sub(r"(\d\d:\d\d(?::\d\d(?:\.\d+)?)?) (\d\d:?\d\d)$", r"\1+\2", text.strip())
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise BadParam(
            param, f"{text!r} is not an ISO date or time, like 2026-01-05 or 2026-01-05T10:00Z"
        ) from None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


class Dashboard:
    """The app's state: one Source per dataset for the app's life, and the caches."""

    def __init__(self, settings: Settings, datasets: dict[str, list[Path]]) -> None:
        if not datasets:
            raise ValueError("datasets: at least one dataset is needed")
        self.settings = settings
        self.datasets = {
            name: _Dataset(name, [Path(r) for r in roots], Source([Path(r) for r in roots]))
            for name, roots in datasets.items()
        }
        self.default = next(iter(self.datasets))
        self.panels = _LRU(256)
        self.people_cache = _LRU(16)
        self.meta_cache = _LRU(16)

    def close(self) -> None:
        for ds in self.datasets.values():
            ds.source.close()

    # request parsing
    def dataset(self, request: Request) -> _Dataset:
        name = request.query_params.get("dataset") or self.default
        if name not in self.datasets:
            raise BadParam(
                "dataset", f"unknown dataset {name!r}; expected one of {list(self.datasets)}"
            )
        return self.datasets[name]

    def stamp(self, ds: _Dataset) -> str:
        return f"{ds.stamp()}/{_external_stamp(self.settings)}"

    def filters(self, request: Request, ds: _Dataset) -> tuple[Filters, str]:
        q = request.query_params
        values = {
            key: tuple(v.strip() for raw in q.getlist(param) for v in raw.split(",") if v.strip())
            for param, key in _LIST_PARAMS.items()
        }
        start = _parse_time("start", q["start"]) if q.get("start") else None
        end = _parse_time("end", q["end"]) if q.get("end") else None
        period = (q.get("period") or "").strip()
        if period and period != "all":
            try:
                delta = parse_period(period)
            except ValueError as exc:
                raise BadParam("period", str(exc)) from None
            # "7d" is the last 7 days of the data (or after ``start`` / before ``end``)
            if end is None:
                last = self.meta_info(ds)["last"]
                end = (
                    start + delta if start else (last + timedelta(microseconds=1) if last else None)
                )
            if start is None and end is not None:
                start = end - delta
        gran = q.get("granularity") or "auto"
        if gran != "auto" and gran not in GRANULARITIES:
            raise BadParam("granularity", f"{gran!r} is not one of {['auto', *GRANULARITIES]}")
        if start is None and end is None and not any(values.values()):
            # what Source.resolve would find, from the cached span: saves a scan per panel
            info = self.meta_info(ds)
            if info["first"] is not None:
                start, end = info["first"], info["last"] + timedelta(microseconds=1)
        try:
            return Filters(start=start, end=end, **values), gran
        except ValueError as exc:
            raise BadParam("end", str(exc)) from None

    def meta_info(self, ds: _Dataset) -> dict[str, Any]:
        """Span, size and filter values of a dataset (one scan, cached per stamp)."""
        key = (ds.name, ds.stamp())
        hit = self.meta_cache.get(key)
        if hit is not None:
            return dict(hit)
        cols = ("tier", "region", "http_route", "CAST(policy_version AS VARCHAR)")
        lists = ", ".join(f"list(DISTINCT {c}) FILTER (WHERE {c} IS NOT NULL)" for c in cols)
        row = ds.source.rows(
            f"SELECT count(*), min(timestamp), max(timestamp), {lists} FROM all_ev",
            Filters(),
            time=False,
        )[0]
        first, last = (None if v is None else _utc(v) for v in row[1:3])
        info = {
            "events": int(row[0]),
            "first": first,
            "last": last,
            **{
                k: sorted(v or [])
                for k, v in zip(
                    ("tiers", "regions", "routes", "policy_versions"), row[3:], strict=True
                )
            },
        }
        self.meta_cache.put(key, info)
        return dict(info)

    def people(self, ds: _Dataset, f: Filters, stamp: str) -> pd.DataFrame:
        days = self.settings.analytics.churn_after_days
        key = (ds.name, f, days, stamp)
        hit = self.people_cache.get(key)
        if hit is None:
            hit = consumers(ds.source, f, days)
            self.people_cache.put(key, hit)
        return hit

    # endpoints (sync: Starlette runs them in its thread pool, DuckDB calls block)
    def index(self, request: Request) -> Response:
        return FileResponse(STATIC_DIR / "dashboard.html", headers={"Cache-Control": "no-cache"})

    def plotly_js(self, request: Request) -> Response:
        return FileResponse(plotly_js_path(), media_type="text/javascript")

    def meta(self, request: Request) -> Response:
        try:
            ds = self.dataset(request)
            info = self.meta_info(ds)
        except BadParam as exc:
            return _error(400, str(exc), exc.param)
        body = {
            "datasets": [
                {"name": d.name, "roots": [str(r) for r in d.roots]} for d in self.datasets.values()
            ],
            "dataset": ds.name,
            "default_dataset": self.default,
            **info,
            "refresh_s": self.settings.analytics.dashboard.refresh_s,
            "stamp": self.stamp(ds),
            "granularities": ["auto", *GRANULARITIES],
            "panels": list(PANELS),
        }
        return _json(body)

    def panel(self, request: Request) -> Response:
        name = request.path_params["name"]
        as_csv = name.endswith(".csv")
        name = name.removesuffix(".csv")
        spec = PANELS.get(name)
        if spec is None:
            return _error(404, f"panel {name!r}: unknown; expected one of {list(PANELS)}", "name")
        try:
            ds = self.dataset(request)
            stamp = self.stamp(ds) if spec.external else ds.stamp()
            items = request.query_params.multi_items()
            own = [(k, v) for k, v in items if k not in ("dataset", "_")]
            if not spec.filtered:
                own = [(k, v) for k, v in own if k not in FILTER_PARAMS]
            key = (ds.name, name, tuple(sorted(own)), stamp)
            f, gran = self.filters(request, ds)  # validated even when the answer is cached
            body = self.panels.get(key)
            if body is None:
                ctx = PanelContext(
                    settings=self.settings,
                    src=ds.source,
                    filters=f,
                    granularity=gran,
                    params=request.query_params.getlist,
                    people=lambda: self.people(ds, f, stamp),
                )
                frame, meta = spec.fn(ctx)
                body = {
                    "name": name,
                    "dataset": ds.name,
                    "columns": [str(c) for c in frame.columns],
                    "rows": rows(frame),
                    "meta": jsonable(meta),
                }
                self.panels.put(key, body)
        except BadParam as exc:
            return _error(400, str(exc), exc.param)
        except ValueError as exc:  # the analytics name the bad input in their messages
            return _error(400, str(exc))
        except Exception as exc:
            log.exception("panel %s failed", name)
            return _error(500, f"panel {name!r} failed: {type(exc).__name__}: {exc}")
        return _csv(body) if as_csv else _json(body)


def _json(body: Any, status: int = 200) -> Response:
    text = json.dumps(jsonable(body), allow_nan=False, separators=(",", ":"))
    return Response(text, status_code=status, media_type="application/json")


def _error(status: int, message: str, param: str | None = None) -> Response:
    return _json({"error": message, "param": param}, status)


def _csv(body: dict[str, Any]) -> Response:
    filename = f"gatewise-{body['dataset']}-{body['name']}.csv"
    return Response(
        csv_text(body["columns"], body["rows"]),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def create_app(
    settings: Settings, datasets: dict[str, list[Path]] | None = None, *, warm: bool = False
) -> Starlette:
    """The dashboard as an ASGI app; ``datasets`` (name -> store roots, the first is the
    default) defaults to ``default_datasets(settings)``. ``warm`` loads every data set
    into its in-memory table at startup, so the first page does not wait for it."""
    dash = Dashboard(settings, datasets or default_datasets(settings))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if warm:
            for d in dash.datasets.values():
                refresh = getattr(d.source, "refresh", None)
                if callable(refresh):
                    refresh(force=True)
        yield
        dash.close()

    from analytics.review import ReviewApi

    review = ReviewApi(settings, STATIC_DIR)
    app = Starlette(
        routes=[
            Route("/", dash.index),
            Route("/review", review.page),
            Route("/api/review/queue", review.queue),
            Route("/api/review/answer", review.answer, methods=["POST"]),
            Route("/api/meta", dash.meta),
            Route("/api/panel/{name}", dash.panel),
            # before the mount: the Plotly bundle ships inside the plotly package
            Route("/static/plotly.min.js", dash.plotly_js),
            Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        ],
        lifespan=lifespan,
    )
    app.state.dashboard = dash
    return app


def serve(
    settings: Settings,
    host: str | None = None,
    port: int | None = None,
    datasets: dict[str, list[Path]] | None = None,
) -> None:
    """Run the dashboard until interrupted (uvicorn, blocking)."""
    import uvicorn

    # an unreachable remote registry must fail fast, not stall the models panel
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    cfg = settings.analytics.dashboard
    uvicorn.run(
        create_app(settings, datasets, warm=True),
        host=host or cfg.host,
        port=port or cfg.port,
        log_level="info",
        access_log=False,
    )
