"""The console in a real browser (headless Chromium through Selenium, installed by the test set-up
when missing: `tests/browser.py`).

First against a fake snapshot (fast): log in through the form, see the flow picture, watch the live
part change as server-sent events arrive. Then against the real embedded stack as a user meets it:
`backbone demo --keep-running` with demo data, the CLI beside it, and the browser on the console it
prints: the operator sees every agency of the charter, suspends tax -> fraud and sees the denials
(agreement_inactive) appear on that edge, is refused the oversight page; oversight looks up a demo
subject's disclosures; each metrics endpoint the demo prints serves non-zero backbone metrics (scraped
and parsed as Prometheus does); Ctrl-C stops the demo and everything it started.

Screenshots of each step go to `tests/artifacts/console/` (or `$BACKBONE_TEST_ARTIFACTS/console/`).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from app.console.auth import Logins
from app.console.server import make_app
from app.console.snapshot import Flow, Snapshot, load_charter
from app.status import Status
from backbone.settings import load_settings
from backbone.stack.embedded import free_port
from tests.browser import BrowserUnavailable, artifacts_dir, chrome
from tests.cli import CLI, clean_env, run_backbone
from tests.processes import as_at_a_terminal, descendants, pid_alive

PASSWORD = "operator-secret-1"
ROOT = Path(__file__).resolve().parent.parent
DEMO_EVENTS = 800  # every agency and recipient gets events; the demo itself takes ~35 s here
TAX_EVENTS = 50  # income declarations produced while tax -> fraud is suspended
SUSPENDED = "tax-to-fraud"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the module (Selenium WebDriver)."""
    try:
        driver = chrome()
    except BrowserUnavailable as exc:
        pytest.skip(f"no headless Chromium: {exc}")
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def screenshots() -> Path:
    return artifacts_dir("console")


def log_in(browser: Any, url: str, user: str, password: str) -> None:
    """Through the login form, as a person would (any earlier session forgotten first)."""
    from selenium.webdriver.common.by import By

    browser.delete_all_cookies()
    browser.get(url + "/")
    assert browser.current_url.endswith("/login")
    browser.find_element(By.NAME, "user").send_keys(user)
    browser.find_element(By.NAME, "password").send_keys(password)
    browser.find_element(By.TAG_NAME, "form").submit()


def wait_for(browser: Any, condition: Any, seconds: float, what: str) -> Any:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(browser, seconds, poll_frequency=0.25).until(condition)
    except TimeoutException:
        raise AssertionError(f"{what} did not happen within {seconds:g} s; the page said:\n{browser.find_element('tag name', 'body').text[:3000]}") from None


# -- against a fake snapshot -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fake_console_url() -> Iterator[str]:
    charter = load_charter(load_settings())
    taken = itertools.count(1)

    def snapshot() -> Snapshot:  # a new subject each time: the stream's updates are visible
        return Snapshot(Status(subjects=[f"subject-{next(taken)}"]), charter, [Flow("tax", "fraud", "permit", 300)])

    loop = asyncio.new_event_loop()
    port = free_port()
    runner = web.AppRunner(make_app(Logins({"operator": PASSWORD}), snapshot, lambda _: ("", [], (None, "no audit records to verify")), refresh_s=0.3))
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def test_a_browser_logs_in_sees_the_flows_and_gets_live_updates(fake_console_url: str, browser: Any, screenshots: Path) -> None:
    from selenium.webdriver.common.by import By

    log_in(browser, fake_console_url, "operator", PASSWORD)
    wait_for(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#live svg"), 10, "the overview")
    # read in one script call: the live part is replaced every 0.3 s, so elements found go stale
    agencies = set(browser.execute_script("return [...document.querySelectorAll('svg text.agency')].map(e => e.textContent)"))
    assert {"tax", "fraud", "welfare", "research"} <= agencies

    live = "return document.getElementById('live').innerText"
    first = browser.execute_script(live)
    # the page's script replaces the live part with each `status` event of /events
    wait_for(browser, lambda b: b.execute_script(live) != first, 10, "a live update")
    assert "subject-" in browser.execute_script(live)
    browser.save_screenshot(str(screenshots / "00-fake-snapshot-overview.png"))


# -- against the embedded stack with demo data ---------------------------------------------------------

@dataclass
class RunningDemo:
    """`backbone demo --keep-running` as a child process, and what it printed."""

    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    started: list[int] = field(default_factory=list)  # PIDs of the processes the demo started
    reader: threading.Thread | None = None

    @property
    def output(self) -> str:
        return "".join(self.lines)

    @property
    def url(self) -> str:
        return re.search(r"console: (http://\S+?)/?\s", self.output).group(1)  # type: ignore[union-attr]

    @property
    def passwords(self) -> dict[str, str]:
        return dict(re.findall(r"user (\w+), password (\S+)", self.output))

    @property
    def exports(self) -> dict[str, str]:
        """The `export BACKBONE_...=...` lines it printed for other terminals."""
        return dict(re.findall(r"^\s*export (BACKBONE_\w+)=(.*?)\s*$", self.output, re.MULTILINE))

    @property
    def data_dir(self) -> Path:
        return Path(self.exports["BACKBONE_DATA_DIR"])

    def backbone(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """A `backbone` command from another terminal, with the exports the demo printed."""
        done = run_backbone(*args, env={**self.exports, "BACKBONE_IDENTITY": "browser-test"}, timeout=timeout, cwd=ROOT)
        assert done.returncode == 0, f"backbone {' '.join(args)}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
        return done


def stop(demo: RunningDemo, seconds: float = 90) -> int | None:
    """Ctrl-C, as at the terminal; the exit code, or None if it did not stop in time."""
    if demo.process.poll() is None:
        demo.process.send_signal(signal.SIGINT)
    try:
        code = demo.process.wait(seconds)
    except subprocess.TimeoutExpired:
        return None
    if demo.reader is not None:
        demo.reader.join(10)
    return code


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDemo]:
    """The demo's stack with demo data, left running; stopped by the last test (or here, by PID, if
    a test failed first)."""
    env = clean_env({"BACKBONE_DATA_DIR": str(tmp_path_factory.mktemp("demo")), "COLUMNS": "250", "PYTHONUNBUFFERED": "1",
                     "BACKBONE_BROKER_PORT": "0", "BACKBONE_SCHEMA_REGISTRY_PORT": "0", "BACKBONE_CONSOLE_PORT": "0"})
    process = subprocess.Popen(
        [*CLI, "demo", "--events", str(DEMO_EVENTS), "--timeout", "180", "--keep-running"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT, preexec_fn=as_at_a_terminal,
    )
    running = RunningDemo(process)
    ready = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            running.lines.append(line)
            if "user oversight, password" in line or "console not started" in line:
                ready.set()
        ready.set()

    running.reader = threading.Thread(target=read, daemon=True)
    running.reader.start()
    try:
        ready.wait(240)
        assert process.poll() is None and "user oversight, password" in running.output, \
            f"the demo did not come up with its console:\n{running.output[-4000:]}"
        running.started = descendants(process.pid)
        yield running
    finally:
        if stop(running, 60) is None:  # still running: by PID, it and what it started
            for pid in [process.pid, *running.started, *descendants(process.pid)]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            process.wait(10)


def flow_titles(browser: Any) -> dict[str, str]:
    """Each edge of the flow picture: `provider → recipient` -> its tooltip (rate, denials by reason)."""
    titles = browser.execute_script("return Array.from(document.querySelectorAll('#live svg g.edge > title'), t => t.textContent)")
    return dict(title.split(": ", 1) for title in titles)


def denied(title: str, reason: str) -> int:
    found = re.search(rf"{reason} ([\d,]+)", title)
    return int(found.group(1).replace(",", "")) if found else 0


@pytest.mark.integration
@pytest.mark.slow
def test_the_operator_sees_every_agency_of_the_demo_in_the_flow_picture(demo: RunningDemo, browser: Any, screenshots: Path) -> None:
    from selenium.webdriver.common.by import By

    browser.get(demo.url + "/")
    assert browser.current_url.endswith("/login")
    browser.save_screenshot(str(screenshots / "01-login.png"))
    log_in(browser, demo.url, "operator", demo.passwords["operator"])
    wait_for(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#live svg text.agency"), 15, "the flow picture")

    charter = load_charter(load_settings(agreements_dir=ROOT / "agreements", schemas_dir=ROOT / "schemas"))
    providers = {a.provider for a in charter.agreements}
    recipients = {a.recipient for a in charter.agreements}
    assert {"tax", "welfare", "registry", "police"} <= providers and {"fraud", "research", "statistics", "welfare"} <= recipients
    assert {e.text for e in browser.find_elements(By.CSS_SELECTOR, "#live svg text.agency.provider")} == providers
    assert {e.text for e in browser.find_elements(By.CSS_SELECTOR, "#live svg text.agency.recipient")} == recipients
    flows = flow_titles(browser)
    assert {f"{a.provider} → {a.recipient}" for a in charter.agreements} <= set(flows)
    assert not flows["tax → fraud"].startswith("0.0/s"), flows  # the demo's incomes were shared with fraud
    assert "agreement_inactive" in flows["tax → statistics"]  # the draft agreement denies
    assert "Decisions by recipient" in browser.find_element(By.ID, "live").text
    # the landed trail verifies, the demo's suspension and reactivation of tax-to-fraud among its operator actions
    audit = browser.execute_script("return document.getElementById('audit').innerText")
    assert re.search(r"Verified: [\d,]+ checkpoints, [\d,]+ decisions, [1-9]\d* operator actions", audit), audit
    browser.save_screenshot(str(screenshots / "02-overview-operator.png"))


@pytest.mark.integration
@pytest.mark.slow
def test_suspending_tax_to_fraud_shows_agreement_inactive_denials_on_its_edge(demo: RunningDemo, browser: Any, screenshots: Path) -> None:
    from selenium.webdriver.common.by import By

    log_in(browser, demo.url, "operator", demo.passwords["operator"])
    wait_for(browser, lambda b: "tax → fraud" in flow_titles(b), 15, "the tax → fraud edge")
    before = denied(flow_titles(browser)["tax → fraud"], "agreement_inactive")  # the demo's own suspension showed one

    log = demo.data_dir / "logs" / "processor.log"
    offset = log.stat().st_size
    suspended = demo.backbone("agreements", "suspend", SUSPENDED)
    assert f"{SUSPENDED}@2 is now suspended" in suspended.stdout
    deadline = time.monotonic() + 20  # the worker applies it without a restart; events after that are denied
    while f"agreement {SUSPENDED}@2 is now suspended" not in log.read_text()[offset:]:
        assert time.monotonic() < deadline, "the processor did not apply the suspension within 20 s"
        time.sleep(0.25)
    demo.backbone("produce", "--agency", "tax", "--events", str(TAX_EVENTS))

    # the live part follows by server-sent events (no reload)
    wait_for(browser, lambda b: denied(flow_titles(b).get("tax → fraud", ""), "agreement_inactive") >= before + TAX_EVENTS,
             60, f"{TAX_EVENTS} more agreement_inactive denials on tax → fraud")
    assert "agreement_inactive" in browser.find_element(By.ID, "live").text  # in the table under the picture too
    browser.save_screenshot(str(screenshots / "03-tax-to-fraud-suspended-denials.png"))

    browser.get(demo.url + "/charter")
    row = browser.find_element(By.XPATH, f"//tr[td[1][normalize-space()='{SUSPENDED}@2']]")
    assert "suspended" in row.get_attribute("class")
    browser.save_screenshot(str(screenshots / "04-charter-tax-to-fraud-suspended.png"))


@pytest.mark.integration
@pytest.mark.slow
def test_the_operator_is_refused_the_oversight_page(demo: RunningDemo, browser: Any, screenshots: Path) -> None:
    from selenium.webdriver.common.by import By

    log_in(browser, demo.url, "operator", demo.passwords["operator"])
    wait_for(browser, lambda b: b.find_elements(By.ID, "live"), 15, "the overview")
    assert not browser.find_elements(By.CSS_SELECTOR, "header a[href='/subject']")
    status = browser.execute_async_script(
        "const done = arguments[arguments.length - 1]; fetch('/subject').then(r => done(r.status), e => done(String(e)));")
    assert status == 403
    browser.get(demo.url + "/subject")
    assert "only oversight sees disclosures about a person" in browser.find_element(By.TAG_NAME, "body").text
    assert not browser.find_elements(By.NAME, "national_id")
    browser.save_screenshot(str(screenshots / "05-subject-refused-to-operator.png"))


@pytest.mark.integration
@pytest.mark.slow
def test_oversight_sees_the_disclosures_about_a_demo_subject(demo: RunningDemo, browser: Any, screenshots: Path) -> None:
    from selenium.webdriver.common.by import By

    cases = json.loads((demo.data_dir / "ground_truth.json").read_text())  # people of the demo, with their ids
    national_id = next((c for c in cases if c["kind"] == "undeclared_income"), cases[0])["national_id"]
    log_in(browser, demo.url, "oversight", demo.passwords["oversight"])
    wait_for(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "header a[href='/subject']"), 15, "the oversight's overview")
    browser.find_element(By.CSS_SELECTOR, "header a[href='/subject']").click()
    wait_for(browser, lambda b: b.find_elements(By.NAME, "national_id"), 15, "the subject form")
    browser.find_element(By.NAME, "national_id").send_keys(national_id)
    browser.find_element(By.CSS_SELECTOR, "main form").submit()
    heading = wait_for(browser, lambda b: re.search(r"(\d+) disclosures about subject (\S+)", b.find_element(By.TAG_NAME, "main").text),
                       30, "the disclosures")
    assert int(heading.group(1)) > 0
    page = browser.find_element(By.TAG_NAME, "main").text
    assert "fraud" in page and ("tax-to-fraud@2" in page or "welfare-to-fraud@1" in page)
    assert national_id not in browser.page_source  # named by its oversight pseudonym only
    # the demo's trail is sealed: the records shown verify against their signed checkpoints
    assert browser.find_element(By.ID, "verification").text.startswith("verified: the records shown are sealed")
    browser.save_screenshot(str(screenshots / "06-subject-disclosures-oversight.png"))


@pytest.mark.integration
@pytest.mark.slow
def test_each_metrics_endpoint_the_demo_prints_serves_non_zero_backbone_metrics(demo: RunningDemo) -> None:
    """As `curl http://127.0.0.1:PORT/metrics` of each process after the demo mix, parsed as Prometheus does."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    deadline = time.monotonic() + 30
    while len(re.findall(r"metrics of the (\w+): (http://\S+)", demo.output)) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    urls = dict(re.findall(r"metrics of the (\w+): (http://\S+)", demo.output))
    assert set(urls) == {"registry", "processor", "sinks"}, demo.output[-2000:]
    totals: dict[str, dict[str, float]] = {}
    for part, url in urls.items():
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url, timeout=10) as answer:
            text = answer.read().decode()
        found: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                found[sample.name] = found.get(sample.name, 0.0) + sample.value
        totals[part] = found
    worker, sinks, registry = totals["processor"], totals["sinks"], totals["registry"]
    for name in ("backbone_events_decided_total", "backbone_records_released_total", "backbone_events_routed_total",
                 "backbone_processor_consumed_total", "backbone_audit_checkpoints_sealed_total", "backbone_state_version"):
        assert worker.get(name, 0) > 0, (name, sorted(worker))
    for name in ("backbone_sink_rows_landed_total", "backbone_sink_batch_rows_count", "backbone_sink_insert_seconds_count"):
        assert sinks.get(name, 0) > 0, (name, sorted(sinks))
    assert "backbone_consumer_lag" in sinks
    assert registry.get("backbone_registry_requests_total", 0) > 0, sorted(registry)


@pytest.mark.integration
@pytest.mark.slow
def test_ctrl_c_stops_the_demo_and_every_process_it_started(demo: RunningDemo) -> None:
    log = (demo.data_dir / "logs" / "processor.log").read_text()
    worker = int(re.search(r" pid=(\d+) ", log).group(1))  # type: ignore[union-attr]
    assert worker in demo.started
    code = stop(demo)
    assert code == 0, demo.output[-3000:]
    assert "demo finished; every process it started has stopped" in demo.output
    assert [pid for pid in demo.started if pid_alive(pid)] == [], "processes the demo started outlived it"
