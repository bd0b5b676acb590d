"""The console in a real browser (headless Chromium through Selenium): log in through the form, see
the flow picture, and watch the live part change as server-sent events arrive. Skipped where
Debian's `chromium` and `chromium-driver` are not installed."""

from __future__ import annotations

import asyncio
import itertools
import shutil
import threading
from collections.abc import Iterator

import pytest
from aiohttp import web

from app.console.auth import Logins
from app.console.server import make_app
from app.console.snapshot import Flow, Snapshot, load_charter
from app.status import Status
from backbone.embedded import free_port
from backbone.settings import load_settings

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="needs Debian's chromium and chromium-driver")
PASSWORD = "operator-secret-1"


@pytest.fixture(scope="module")
def console_url() -> Iterator[str]:
    charter = load_charter(load_settings())
    taken = itertools.count(1)

    def snapshot() -> Snapshot:  # a new subject each time: the stream's updates are visible
        return Snapshot(Status(subjects=[f"subject-{next(taken)}"]), charter, [Flow("tax", "fraud", "permit", 300)])

    loop = asyncio.new_event_loop()
    port = free_port()
    runner = web.AppRunner(make_app(Logins({"operator": PASSWORD}), snapshot, lambda _: ("", []), refresh_s=0.3))
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


@pytest.fixture(scope="module")
def browser():  # noqa: ANN201 - selenium WebDriver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # type: ignore[assignment]
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_a_browser_logs_in_sees_the_flows_and_gets_live_updates(console_url: str, browser) -> None:  # noqa: ANN001
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(console_url + "/")
    assert browser.current_url.endswith("/login")
    browser.find_element(By.NAME, "user").send_keys("operator")
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.TAG_NAME, "form").submit()
    WebDriverWait(browser, 10).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#live svg"))
    agencies = {e.text for e in browser.find_elements(By.CSS_SELECTOR, "svg text.agency")}
    assert {"tax", "fraud", "welfare", "research"} <= agencies

    first = browser.find_element(By.ID, "live").text
    # the page's script replaces the live part with each `status` event of /events
    WebDriverWait(browser, 10).until(lambda b: b.find_element(By.ID, "live").text != first)
    assert "subject-" in browser.find_element(By.ID, "live").text
