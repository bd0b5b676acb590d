"""A real SoftHSM2 token for the PKCS#11 key provider's tests: Debian's `softhsm2`, installed by the
test set-up when missing (as tests/browser.py installs chromium: as root only, bounded in time,
`apt-get update` first when the package lists lack it), else the tests skip with apt's last error.

`new_token(directory)` initialises a token of its own in `directory` (its own softhsm2.conf, set as
SOFTHSM2_CONF in this process) and returns the settings that select it.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

from tests.browser import INSTALL_TIMEOUT_S, MISSING_LISTS, UPDATE_TIMEOUT_S, BrowserUnavailable, _apt, _last_error

PACKAGE = "softhsm2"
MODULE_PATHS = ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
                "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so")
USER_PIN, SO_PIN = "3141-5926", "2718-2818"


class SoftHsmUnavailable(Exception):
    """SoftHSM2 is missing and cannot be installed here; the message says why."""


def _found() -> tuple[str, str] | None:
    util = shutil.which("softhsm2-util")
    module = next((path for path in MODULE_PATHS if Path(path).exists()), None)
    return (util, module) if util and module else None


@functools.cache
def ensure_softhsm() -> tuple[str, str]:
    """Paths of `softhsm2-util` and the PKCS#11 module, installing Debian's softhsm2 when missing."""
    found = _found()
    if found:
        return found
    if not shutil.which("apt-get") or os.geteuid() != 0:
        raise SoftHsmUnavailable(f"softhsm2 is not installed and cannot be installed here (needs apt-get as root): apt-get install {PACKAGE}")
    try:
        done = _apt("install", "-y", "--no-install-recommends", PACKAGE, timeout=INSTALL_TIMEOUT_S)
        if done.returncode != 0 and any(words in done.stdout + done.stderr for words in MISSING_LISTS):
            updated = _apt("update", timeout=UPDATE_TIMEOUT_S)
            if updated.returncode != 0:
                raise SoftHsmUnavailable(f"apt-get update failed: {_last_error(updated.stdout + updated.stderr)}")
            done = _apt("install", "-y", "--no-install-recommends", PACKAGE, timeout=INSTALL_TIMEOUT_S)
    except BrowserUnavailable as exc:  # apt timed out
        raise SoftHsmUnavailable(str(exc)) from None
    if done.returncode != 0:
        raise SoftHsmUnavailable(f"apt-get install {PACKAGE} failed: {_last_error(done.stdout + done.stderr)}")
    found = _found()
    if not found:
        raise SoftHsmUnavailable(f"apt-get installed {PACKAGE} but softhsm2-util or libsofthsm2.so is not where expected")
    return found


def new_token(directory: Path, label: str = "backbone-test") -> dict[str, str]:
    """A fresh token labelled `label` with its store in `directory`: the BACKBONE_* settings (and
    SOFTHSM2_CONF) that select it. Sets SOFTHSM2_CONF in this process too."""
    util, module = ensure_softhsm()
    (directory / "tokens").mkdir(parents=True, exist_ok=True)
    conf = directory / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {directory / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    pin_file = directory / "user.pin"
    pin_file.write_text(USER_PIN + "\n")
    pin_file.chmod(0o600)
    os.environ["SOFTHSM2_CONF"] = str(conf)
    subprocess.run([util, "--init-token", "--free", "--label", label, "--pin", USER_PIN, "--so-pin", SO_PIN],
                   check=True, capture_output=True, timeout=60, env={**os.environ, "SOFTHSM2_CONF": str(conf)})
    return {"SOFTHSM2_CONF": str(conf), "BACKBONE_KEY_PROVIDER": "pkcs11", "BACKBONE_PKCS11_MODULE": module,
            "BACKBONE_PKCS11_TOKEN_LABEL": label, "BACKBONE_PKCS11_PIN_FILE": str(pin_file)}
