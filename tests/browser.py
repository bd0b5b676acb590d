"""A real headless Chromium for the console's browser tests: Debian's `chromium` and
`chromium-driver`, installed by the test set-up when missing, driven through Selenium.

`ensure_chromium()` finds both on PATH or installs them with apt-get (as root only, bounded in
time, `apt-get update` first when the package lists are missing); it raises `BrowserUnavailable`
with the precise reason when that is impossible, and the tests skip with that reason.
Screenshots go under `artifacts_dir()`: `$BACKBONE_TEST_ARTIFACTS/<part>` if set, else
`tests/artifacts/<part>` (git-ignored).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

PACKAGES = ("chromium", "chromium-driver")
# Installing chromium with its libraries takes ~1-2 min on a fresh Debian; a stuck mirror must not
# hang the suite. apt waits this long for a dpkg lock another engineer's apt holds.
INSTALL_TIMEOUT_S = 600
UPDATE_TIMEOUT_S = 300
LOCK_TIMEOUT_S = 120
# apt's words for "the package lists do not know this package" (or are stale: a 404 on fetch):
# run `apt-get update`, then install again.
MISSING_LISTS = ("Unable to locate package", "has no installation candidate", "Failed to fetch")


class BrowserUnavailable(Exception):
    """Chromium or its WebDriver is missing and cannot be installed here; the message says why."""


def _found() -> tuple[str, str] | None:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


def _last_error(output: str) -> str:
    """apt's last `E:` line (its reason), else its last non-empty line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("E:", "W:"))]
    return (errors or lines or ["no output"])[-1]


def _apt(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        return subprocess.run(["apt-get", "-o", f"DPkg::Lock::Timeout={LOCK_TIMEOUT_S}", *args],
                              capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        raise BrowserUnavailable(f"apt-get {' '.join(args)} did not finish within {timeout:g} s") from None


def install_chromium() -> str:
    """`apt-get install -y --no-install-recommends chromium chromium-driver` (after `apt-get update`
    when the lists lack them); returns what apt said last. Raises `BrowserUnavailable` if not root,
    without apt-get, or when the install fails."""
    if not shutil.which("apt-get"):
        raise BrowserUnavailable("chromium/chromedriver not on PATH and no apt-get here to install Debian's "
                                 f"{' and '.join(PACKAGES)}; install them (or chromium + a matching chromedriver) by hand")
    if os.geteuid() != 0:
        raise BrowserUnavailable("chromium/chromedriver not on PATH and the tests do not run as root, so they cannot "
                                 f"install them: sudo apt-get install {' '.join(PACKAGES)}")
    install = ("install", "-y", "--no-install-recommends", *PACKAGES)
    done = _apt(*install, timeout=INSTALL_TIMEOUT_S)
    if done.returncode != 0 and any(words in done.stdout + done.stderr for words in MISSING_LISTS):
        updated = _apt("update", timeout=UPDATE_TIMEOUT_S)
        if updated.returncode != 0:
            raise BrowserUnavailable(f"apt-get update failed (exit {updated.returncode}): {_last_error(updated.stdout + updated.stderr)}")
        done = _apt(*install, timeout=INSTALL_TIMEOUT_S)
    if done.returncode != 0:
        raise BrowserUnavailable(f"apt-get install {' '.join(PACKAGES)} failed (exit {done.returncode}): "
                                 f"{_last_error(done.stdout + done.stderr)}")
    return _last_error(done.stdout)


@functools.cache
def ensure_chromium() -> tuple[str, str]:
    """Paths of `chromium` and `chromedriver`, installing them first when missing (once per session)."""
    found = _found()
    if found:
        return found
    said = install_chromium()
    found = _found()
    if not found:
        raise BrowserUnavailable(f"apt-get installed {' and '.join(PACKAGES)} ({said}) but chromium or chromedriver "
                                 "is still not on PATH")
    return found


def chrome(width: int = 1280, height: int = 1400) -> Any:
    """A headless Chromium under Selenium (quit it when done)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = ensure_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    # no sandbox: the tests run as root in a container; no /dev/shm: it is small in containers
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", f"--window-size={width},{height}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def artifacts_dir(part: str) -> Path:
    """Where tests leave files for people to look at (screenshots): made if missing."""
    root = os.environ.get("BACKBONE_TEST_ARTIFACTS")
    folder = (Path(root) if root else Path(__file__).resolve().parent / "artifacts") / part
    folder.mkdir(parents=True, exist_ok=True)
    return folder
