"""A SoftHSM2 token for the benchmark's PKCS#11 round: initialised in the run's temporary directory
with the backbone's keys made on it (as `backbone keys init` does), and the worker settings that
select it. Needs Debian's `softhsm2` (apt-get install softhsm2) and python-pkcs11 (the `hsm` extra);
without them the round is skipped with the reason."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

from backbone.errors import BackboneError
from backbone.events.catalog import load_catalog
from backbone.keys.keyring import BUILT_IN_DOMAINS, PROCESSOR_SIGNER, Keyring
from backbone.policy.agreements import load_agreements
from backbone.settings import Settings

MODULE_PATHS = ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
                "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so")
LABEL = "backbone-bench"


def softhsm_settings(settings: Settings, directory: Path) -> dict[str, str] | str:
    """Worker settings (lower-case names, as `ProcessorWorker` extras) selecting a new SoftHSM2 token
    in `directory` that holds every key the charter needs; or why there is none."""
    util = shutil.which("softhsm2-util")
    module = next((path for path in MODULE_PATHS if Path(path).exists()), None)
    if not util or not module:
        return "SoftHSM2 is not installed (apt-get install softhsm2)"
    (directory / "tokens").mkdir(parents=True, exist_ok=True)
    conf = directory / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {directory / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    pin = secrets.token_hex(8)
    pin_file = directory / "user.pin"
    pin_file.write_text(pin)
    pin_file.chmod(0o600)
    os.environ["SOFTHSM2_CONF"] = str(conf)  # the workers inherit it
    subprocess.run([util, "--init-token", "--free", "--label", LABEL, "--pin", pin, "--so-pin", secrets.token_hex(8)],
                   check=True, capture_output=True, timeout=60)
    extra = {"key_provider": "pkcs11", "pkcs11_module": module, "pkcs11_token_label": LABEL, "pkcs11_pin_file": str(pin_file)}
    on_token = settings.model_copy(update={"key_provider": "pkcs11", "pkcs11_module": Path(module), "pkcs11_token_label": LABEL,
                                           "pkcs11_pin_file": pin_file})
    charter = load_agreements(settings.agreements_dir, load_catalog(settings.schemas_dir))
    try:  # the run's keyring file stays beside the token (the operators' key); the rest is made on it
        Keyring.open(on_token).ensure(sorted({*BUILT_IN_DOMAINS, *charter.domains()}), sorted(charter.providers()), [PROCESSOR_SIGNER])
    except BackboneError as exc:
        return f"the token could not be provisioned: {exc}"
    return extra
