"""The dashboard end to end in headless Chromium (Debian's package, driven by Playwright)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from tests.serve.conftest import READ, Server

CHROMIUM = os.environ.get("FRESHREC_CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def test_dashboard_shows_live_charts_and_a_user_page(server: Server, tmp_path: Path) -> None:
    if not shutil.which(CHROMIUM):
        pytest.fail(f"Chromium not found at {CHROMIUM}: apt-get install chromium (or set FRESHREC_CHROMIUM)")
    with server.api() as c:  # some live traffic for the charts and the hit rate
        user = c.recommend("u00002", k=5)["items"]
        c.send_events({"user_id": "u00002", "item_id": user[0]["item_id"], "type": "click"})
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        failed: list[str] = []
        page.on("requestfailed", lambda r: failed.append(r.url))
        page.goto(f"{server.url}/?user=u00002")
        # the server asks for a key; the dashboard shows its key form
        expect(page.locator("#key-form")).to_be_visible()
        page.fill("#key", READ)
        page.click("#key-form button")
        expect(page.locator("#model-version")).to_have_text(server_version_pattern())
        expect(page.locator("#chart-events path").first).to_be_attached()
        expect(page.locator("#hit-rate")).to_contain_text("%")
        expect(page.locator("#quarantined")).to_contain_text("events")
        page.fill("#user-id", "u00002")
        page.click("#user-form button")
        expect(page.locator("#recs li")).to_have_count(10)
        reasons = "because you|often chosen right after|often goes with|reads like|liked by those|popular|new"
        expect(page.locator("#recs li .why").first).to_have_text(re.compile(reasons + "|favourite|matches your"))
        expect(page.locator("#history tbody tr").first).to_be_visible()
        page.locator("#recs li a").first.click()
        expect(page.locator("#similar li")).to_have_count(10)
        shot = Path(os.environ.get("FRESHREC_SCREENSHOTS", tmp_path)) / "dashboard.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert shot.stat().st_size > 10_000
    assert not [u for u in failed if not u.startswith(server.url)], "the page fetched something from elsewhere"


def server_version_pattern() -> object:
    import re

    return re.compile(r"^\d+\.\d+$")
