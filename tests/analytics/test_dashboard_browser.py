"""The dashboard in a real browser (Debian's chromium driven by Playwright) over a small
simulated consumer history: what the page shows must be what the analytics compute."""

from __future__ import annotations

import csv
import io
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from analytics.source import Filters, Source
from tests.conftest import free_port

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WAIT_MS = 180_000  # a shared two-core machine: generous, never asserted


def _write_history(root: Path) -> Path:
    """300 consumers over 12 weeks (a policy change in week 4), or, without the
    lifecycle simulator, a hand-made store."""
    try:
        from config.simulator import LifecycleSettings
        from telemetry.simulator.lifecycle import write_lifecycle
    except ImportError:
        from tests.analytics.conftest import SMALL, event, store_of

        rows = [event(*r) for r in SMALL]
        rows += [event(f"x{i}", 200 + i, "/v1/search", 200, 50.0 + i) for i in range(40)]
        return store_of(root / "telemetry", rows)
    write_lifecycle(LifecycleSettings(consumers=300, weeks=12, policy_week=4, launch_week=6), root)
    return root / "telemetry"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if not CHROMIUM.exists():
        if os.environ.get("GATEWISE_REQUIRE_BROWSER") == "1":  # set by .ci/run
            pytest.fail(f"{CHROMIUM} is missing: .ci/run should have installed Debian's chromium")
        pytest.skip(f"{CHROMIUM} is missing (CI installs Debian's chromium)")
    import uvicorn

    from analytics.dashboard import create_app
    from config.analytics import AnalyticsSettings, DashboardSettings
    from config.settings import Settings
    from tests.analytics.conftest import SMALL, event, store_of

    base = tmp_path_factory.mktemp("dashboard")
    store = _write_history(base / "history")
    # a second, small dataset that grows during a test (auto-refresh)
    live = store_of(base / "live", [event(*r) for r in SMALL[:4]])
    fast = AnalyticsSettings(dashboard=DashboardSettings(refresh_s=1))
    app = create_app(
        Settings(data_dir=base / "data", analytics=fast), {"history": [store], "live": [live]}
    )
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    src = Source([store])
    yield {"url": f"http://127.0.0.1:{port}", "src": src, "live": live}
    server.should_exit = True
    thread.join(timeout=30)
    src.close()


@pytest.fixture(scope="module")
def browser(served: dict[str, Any]) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


@pytest.fixture()
def page(browser: Any, served: dict[str, Any]) -> Iterator[Any]:
    """A page that records console errors, page errors and any request off the server."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    pg = context.new_page()
    pg.set_default_timeout(WAIT_MS)
    problems: list[str] = []
    pg.on("console", lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None)
    pg.on("pageerror", lambda e: problems.append(f"pageerror: {e}"))
    local = (served["url"], "data:", "blob:")
    pg.on(
        "request",
        lambda r: None if r.url.startswith(local) else problems.append(f"external: {r.url}"),
    )
    pg.problems = problems
    yield pg
    context.close()


def _ready(page: Any, testid: str) -> Any:
    loc = page.locator(f'[data-testid="{testid}"]')
    loc.and_(page.locator('[data-state="ready"]')).wait_for(state="visible", timeout=WAIT_MS)
    return loc


def _kpis_ready(page: Any) -> None:
    page.locator('#kpis[data-state="ready"]').wait_for(timeout=WAIT_MS)


def test_page_matches_the_analytics(page, served) -> None:
    from playwright.sync_api import expect

    from analytics.cohorts import retention
    from analytics.usage import consumer_requests, overview, top_consumers

    src = served["src"]
    page.goto(served["url"] + "/")
    _kpis_ready(page)
    ov = overview(src, Filters()).iloc[0]
    assert page.get_attribute("#kpi-requests", "data-value") == str(int(ov["requests"]))
    assert page.get_attribute("#kpi-consumers", "data-value") == str(int(ov["consumers"]))
    assert float(page.get_attribute("#kpi-5xx", "data-value")) == pytest.approx(ov["rate_5xx"])
    assert float(page.get_attribute("#kpi-p95", "data-value")) == pytest.approx(ov["p95_ms"])

    # a tier and Apply: the KPI becomes what the analytics compute for that tier
    tier = page.locator("#filter-tier option").nth(1).get_attribute("value")
    page.select_option("#filter-tier", tier)
    page.click("#apply")
    want = int(overview(src, Filters(tiers=(tier,)))["requests"].iloc[0])
    expect(page.locator("#kpi-requests")).to_have_attribute(
        "data-value", str(want), timeout=WAIT_MS
    )
    assert f"tier={tier}" in page.url  # the view is linkable

    # drill-down: a route -> its consumers -> one consumer's latest requests
    _ready(page, "panel-routes")
    link = page.locator("#table-routes a[data-route]").first
    route = link.get_attribute("data-route")
    link.click()
    _ready(page, "panel-route-consumers")
    shown = page.locator("#table-route-consumers a[data-client]").all_inner_texts()
    f = Filters(tiers=(tier,), routes=(route,))
    assert shown == top_consumers(src, f, n=50)["client_id"].tolist()
    client = shown[0]
    page.locator("#table-route-consumers a[data-client]").first.click()
    _ready(page, "panel-consumer-requests")
    ids = page.locator("#table-consumer-requests td.request_id").all_inner_texts()
    mine = consumer_requests(src, Filters(tiers=(tier,)), client)
    assert ids == mine["request_id"].tolist() and len(ids) > 0
    assert "drill_client=" in page.url
    page.go_back()  # the back button returns to the route's consumers
    _ready(page, "panel-route-consumers")
    expect(page.locator('[data-testid="panel-consumer-requests"]')).to_be_hidden()
    page.locator('#drill-breadcrumb [data-crumb="close"]').click()
    expect(page.locator("#drill")).to_be_hidden()

    # the routes panel's CSV link: the same rows as its JSON
    href = page.get_attribute('[data-testid="csv-routes"]', "href")
    assert href.startswith("/api/panel/breakdown.csv?") and f"tier={tier}" in href
    res = page.request.get(served["url"] + href)
    assert res.ok and res.headers["content-type"].startswith("text/csv")
    table = list(csv.reader(io.StringIO(res.text())))
    body = page.request.get(served["url"] + href.replace(".csv", "")).json()
    assert table[0] == body["columns"] and len(table) - 1 == len(body["rows"])
    assert [r[0] for r in table[1:]] == [r[0] for r in body["rows"]]

    # a chart's PNG button downloads an image
    _ready(page, "panel-traffic")
    with page.expect_download(timeout=WAIT_MS) as dl:
        page.click('[data-testid="png-traffic"]')
    assert dl.value.suggested_filename.endswith(".png")

    # the cohorts section draws the retention heatmap (back to every tier first)
    page.select_option("#filter-tier", "")
    page.click("#apply")
    page.click('[data-tab="cohorts"]')
    _ready(page, "panel-retention")
    kind = page.evaluate("document.getElementById('chart-retention').data[0].type")
    cohorts = page.evaluate("document.getElementById('chart-retention').data[0].y.length")
    assert kind == "heatmap"
    assert cohorts == len(retention(src, src.resolve(Filters()))["table"])
    assert page.locator("#chart-retention .heatmaplayer").count() == 1
    for testid in ("answer-slo", "answer-lost", "answer-policy"):
        page.locator(f'[data-testid="{testid}"][data-state="ready"]').wait_for(timeout=WAIT_MS)
    page.screenshot(path="/tmp/dashboard.png", full_page=True)
    assert page.problems == []


def test_every_section_renders_without_errors(page, served) -> None:
    page.goto(served["url"] + "/?period=30d")
    _kpis_ready(page)
    for tab in ("traffic", "performance", "security", "models", "cohorts"):
        page.click(f'[data-tab="{tab}"]')
        page.wait_for_function(
            """tab => [...document.querySelectorAll(`#section-${tab} .card`)]
                 .every(c => c.dataset.state === 'ready' || c.dataset.state === 'error')""",
            arg=tab,
            timeout=WAIT_MS,
        )
        errors = page.locator(f'#section-{tab} .card[data-state="error"] .error').all_inner_texts()
        assert errors == [], (tab, errors)
    assert "tab=cohorts" in page.url
    page.go_back()
    page.locator("#section-models:not(.hidden)").wait_for(timeout=WAIT_MS)
    assert page.problems == []


def test_auto_refresh_reloads_when_telemetry_lands(page, served) -> None:
    from playwright.sync_api import expect

    from tests.analytics.conftest import SMALL, event, store_of

    page.goto(served["url"] + "/?dataset=live")
    _kpis_ready(page)
    assert page.get_attribute("#kpi-requests", "data-value") == "4"
    expect(page.locator("#updated")).to_have_text(re.compile(r"^updated \d\d:\d\d:\d\d$"))
    assert page.is_checked("#auto-refresh")  # on by default
    store_of(served["live"], [event(*r) for r in SMALL[4:]])
    # the page polls /api/meta (every second here), sees a new stamp and reloads
    expect(page.locator("#kpi-requests")).to_have_attribute("data-value", "9", timeout=WAIT_MS)
    assert page.problems == []
