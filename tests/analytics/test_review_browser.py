"""The review queue in a real browser (Debian's chromium driven by Playwright): keyboard
answers land in the labels table with the reviewer's name."""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.analytics.test_dashboard_browser import ARGS, CHROMIUM, WAIT_MS
from tests.conftest import free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def review_server(unlabelled_day, tmp_path_factory) -> Iterator[dict[str, Any]]:
    if not CHROMIUM.exists():
        if os.environ.get("GATEWISE_REQUIRE_BROWSER") == "1":  # set by .ci/run
            pytest.fail(f"{CHROMIUM} is missing: .ci/run should have installed Debian's chromium")
        pytest.skip(f"{CHROMIUM} is missing (CI installs Debian's chromium)")
    import uvicorn

    from analytics.dashboard import create_app
    from labeling.review import build_queue, save_queue
    from labeling.weak import weak_labels

    s0, _, _ = unlabelled_day
    s = s0.model_copy(update={"data_dir": tmp_path_factory.mktemp("review") / "data"})
    shutil.copytree(s0.data_dir, s.data_dir)
    weak_labels(s)
    items = build_queue(s, n=8)
    assert len(items) == 8
    save_queue(s, items, {"since": items[0].since, "until": items[0].until, "harm": None})
    app = create_app(s, {"gateway": [s.telemetry_dir]})
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
    yield {"url": f"http://127.0.0.1:{port}", "settings": s, "items": items}
    server.should_exit = True
    thread.join(timeout=30)


def test_answers_from_the_keyboard_land_in_the_labels_table(review_server) -> None:
    from playwright.sync_api import expect, sync_playwright

    from labeling.store import LabelStore

    s: Any = review_server["settings"]
    items = review_server["items"]
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = b.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(WAIT_MS)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(review_server["url"] + "/review")
        queue = page.locator('[data-testid="item"]')
        expect(queue).to_have_count(8)
        expect(page.locator('[data-testid="evidence-client"]')).to_contain_text(items[0].client_id)
        expect(page.locator('[data-testid="functions-table"]')).to_contain_text("quiet_clean")
        # no name yet: the answer is refused and nothing is written
        page.keyboard.press("a")
        expect(page.locator('[data-testid="status"]')).to_contain_text("enter your name")
        page.fill('[data-testid="reviewer"]', "alice")
        page.keyboard.press("Escape")  # leaves the field: keys go to the queue again
        page.keyboard.press("a")
        expect(queue.nth(0)).to_have_class(re.compile("answered-abusive"), timeout=WAIT_MS)
        page.keyboard.press("s")  # skip the second
        page.keyboard.press("l")  # the third is legitimate
        expect(queue.nth(2)).to_have_class(re.compile("answered-legitimate"), timeout=WAIT_MS)
        page.keyboard.press("k")
        page.keyboard.press("k")
        expect(page.locator('[data-testid="evidence-client"]')).to_contain_text(items[1].client_id)
        # a reload keeps the answers (they are in the labels table, not in the page)
        page.reload()
        expect(queue.nth(0)).to_have_class(re.compile("answered-abusive"), timeout=WAIT_MS)
        assert page.input_value('[data-testid="reviewer"]') == "alice"
        b.close()
    assert not errors, errors
    lab = LabelStore(Path(s.labels_dir)).read().to_pandas()
    rev = lab[lab["source"] == "review"]
    assert set(rev["client_id"]) == {items[0].client_id, items[2].client_id}
    assert set(rev["labelled_by"]) == {"alice"}
    got = rev.groupby("client_id")["label"].max().to_dict()
    assert got == {items[0].client_id: 1, items[2].client_id: 0}


def test_the_answer_api_refuses_bad_input(review_server) -> None:
    import httpx

    url = review_server["url"] + "/api/review/answer"
    r = httpx.post(url, json={"client_id": "nobody", "label": "abusive", "reviewer": "x"})
    assert r.status_code == 404 and "not in the queue" in r.json()["error"]
    cid = review_server["items"][3].client_id
    r = httpx.post(url, json={"client_id": cid, "label": "maybe", "reviewer": "x"})
    assert r.status_code == 422 and "abusive or legitimate" in r.json()["error"]
    r = httpx.post(url, json={"client_id": cid, "label": "abusive"})
    assert r.status_code == 422 and "reviewer" in r.json()["error"]
