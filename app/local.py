"""A whole pipeline on this machine: the embedded stack with a fresh keyring, and processor workers
as real `backbone process` child processes. One home for what the demo, the benchmarks and the
integration tests all start; only PIDs started here are ever signalled.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backbone.errors import BackboneError
from backbone.events.catalog import load_catalog
from backbone.keys.keyring import BUILT_IN_DOMAINS, OPERATIONS_SIGNER, PROCESSOR_SIGNER, Keyring
from backbone.keys.master import decode_master_key, encode_master_key, new_master_key, write_master_key_file
from backbone.keys.roles import split
from backbone.policy.agreements import Charter, load_agreements
from backbone.settings import Settings, load_settings
from backbone.stack.embedded import ChildProcess, EmbeddedStack

READY_LINE = "enforcing"  # what a processor worker logs once its data plane runs


def stack_settings(stack: EmbeddedStack, data_dir: Path, **overrides: Any) -> Settings:
    """Settings pointing at `stack`, with group timeouts suited to Tansu (its join takes about half
    the session timeout)."""
    environment = stack.environment()
    values: dict[str, Any] = {
        "kafka_bootstrap": stack.broker.bootstrap,
        "schema_registry_url": environment["BACKBONE_SCHEMA_REGISTRY_URL"],
        "schema_registry_user": environment.get("BACKBONE_SCHEMA_REGISTRY_USER"),
        "schema_registry_password": environment.get("BACKBONE_SCHEMA_REGISTRY_PASSWORD"),
        "data_dir": data_dir,
        "kafka_timeout_s": 10.0,
        "consumer_session_timeout_ms": 6000,
        "consumer_heartbeat_interval_ms": 500,
    }
    values.update(overrides)
    return load_settings(**values)


def provision_keyring(settings: Settings, master_key: bytes) -> Keyring:
    """A fresh keyring with a key for every domain and provider of the charter (and oversight),
    saved to `settings.keyring_path` under `master_key`. With `key_provider=pkcs11` those keys and
    the processors' signing key are made on the token instead (kept if there) and the file holds
    only the operators' signing key; the token provider is returned."""
    charter = load_agreements(settings.agreements_dir, load_catalog(settings.schemas_dir))
    if settings.key_provider != "file":
        Keyring.generate(signers=[OPERATIONS_SIGNER]).save(settings.keyring_path, master_key)
        provider = Keyring.open(settings)
        provider.ensure(sorted({*BUILT_IN_DOMAINS, *charter.domains()}), sorted(charter.providers()), [PROCESSOR_SIGNER])
        return provider
    keyring = Keyring.for_charter(charter)
    keyring.save(settings.keyring_path, master_key)
    return keyring


@dataclass(slots=True, frozen=True)
class RoleKeyring:
    """Where one role's keyring and its own master key file are."""

    role: str
    keyring_path: Path
    master_key_file: Path

    def settings(self) -> dict[str, Any]:
        """Settings overrides that make a process run as this role."""
        return {"role": self.role, "keyring_path": self.keyring_path, "master_key_file": self.master_key_file, "master_key": None}

    def open(self) -> Keyring:
        """This role's keyring, opened with its master key file."""
        return Keyring.load(self.keyring_path, decode_master_key(self.master_key_file.read_text(), f"master key file {self.master_key_file}"))

    def environment(self) -> dict[str, str]:
        """The same as `BACKBONE_*` variables (keyword arguments of `worker_environment`)."""
        return {"role": self.role, "keyring_path": str(self.keyring_path), "master_key_file": str(self.master_key_file)}


def provision_role_keyrings(directory: Path, charter: Charter) -> dict[str, RoleKeyring]:
    """Keys for every domain, provider and signer of `charter`, generated once and cut into the roles'
    keyrings (`backbone.keys.roles`): `<directory>/<role>.keyring`, each under its own new master key
    file `<directory>/<role>.master.key`. Nothing keeps the whole set."""
    found = {}
    for role, keyring in split(Keyring.for_charter(charter)).items():
        master_file = directory / f"{role}.master.key"
        keyring.save(directory / f"{role}.keyring", write_master_key_file(master_file))
        found[role] = RoleKeyring(role, directory / f"{role}.keyring", master_file)
    return found


@contextmanager
def embedded_settings(data_dir: Path, partitions: int = 6, **overrides: Any) -> Iterator[Settings]:
    """A broker and registry of this run's own in `data_dir`, and settings pointing at them with a
    fresh keyring (master key in the settings); `overrides` are further settings (key provider...)."""
    with EmbeddedStack(data_dir, broker_port=0, registry_port=0) as stack:
        master = new_master_key()
        settings = stack_settings(stack, data_dir, master_key=encode_master_key(master), kafka_partitions=partitions, **overrides)
        provision_keyring(settings, master)
        yield settings


def token_environment(settings: Settings) -> dict[str, str]:
    """The `BACKBONE_PKCS11_*` variables of `settings` (the PIN included: for the token's own role only)."""
    env = {f"BACKBONE_{name.upper()}": str(getattr(settings, name))
           for name in ("pkcs11_module", "pkcs11_token_label", "pkcs11_pin_file") if getattr(settings, name) is not None}
    if settings.pkcs11_pin is not None:
        env["BACKBONE_PKCS11_PIN"] = settings.pkcs11_pin.get_secret_value()
    return env


def worker_environment(settings: Settings, **extra: str) -> dict[str, str]:
    """This process's environment with every `BACKBONE_*` variable taken from `settings` (plus `extra`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKBONE_")}
    env.update({
        "BACKBONE_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "BACKBONE_SCHEMA_REGISTRY_URL": settings.schema_registry_url,
        "BACKBONE_DATA_DIR": str(settings.data_dir),
        "BACKBONE_CLICKHOUSE_DSN": settings.clickhouse_dsn or "",
        "BACKBONE_CLICKHOUSE_DATABASE_PREFIX": settings.clickhouse_database_prefix,
        "BACKBONE_KAFKA_PARTITIONS": str(settings.kafka_partitions),
        "BACKBONE_CONSUMER_SESSION_TIMEOUT_MS": str(settings.consumer_session_timeout_ms),
        "BACKBONE_CONSUMER_HEARTBEAT_INTERVAL_MS": str(settings.consumer_heartbeat_interval_ms),
        "BACKBONE_SCHEMAS_DIR": str(settings.schemas_dir),
        "BACKBONE_AGREEMENTS_DIR": str(settings.agreements_dir),
        "BACKBONE_LOG_LEVEL": settings.log_level,
        "BACKBONE_LOG_FORMAT": settings.log_format,
    })
    credentials = settings.schema_registry_credentials()
    if credentials is not None:
        env["BACKBONE_SCHEMA_REGISTRY_USER"], env["BACKBONE_SCHEMA_REGISTRY_PASSWORD"] = credentials
    if settings.master_key is not None:
        env["BACKBONE_MASTER_KEY"] = settings.master_key.get_secret_value()
    if settings.master_key_file is not None:
        env["BACKBONE_MASTER_KEY_FILE"] = str(settings.master_key_file)
    env["BACKBONE_KEY_PROVIDER"] = settings.key_provider
    env.update(token_environment(settings))
    env["BACKBONE_KEYRING_PATH"] = str(settings.keyring_path)
    if settings.audit_keys_file is not None:
        env["BACKBONE_AUDIT_KEYS_FILE"] = str(settings.audit_keys_file)
    if settings.role is not None:
        env["BACKBONE_ROLE"] = settings.role
    if "master_key_file" in extra:  # another role's master key: this one's must not take precedence
        env.pop("BACKBONE_MASTER_KEY", None)
    env.update({f"BACKBONE_{name.upper()}": value for name, value in extra.items()})
    return env


class ProcessorWorker:
    """One `backbone process` worker as a child process, logging at info to `<data dir>/<name>.log`."""

    def __init__(self, settings: Settings, name: str = "worker", **extra_env: str) -> None:
        self.settings = settings
        self.log_path = settings.data_dir / f"{name}.log"
        self.extra_env = extra_env
        self._child: ChildProcess | None = None

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child else None

    def start(self, timeout: float = 90.0) -> ProcessorWorker:
        """Start and wait until the worker logs that it is enforcing (its data plane is running)."""
        offset = self.log_size()
        self._child = ChildProcess(
            "the processor worker",
            [sys.executable, "-c", "from app.cli import main; main()", "process", "-l", "info"],
            self.log_path, worker_environment(self.settings, **self.extra_env),
        )
        self._child.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.wait_for_line(READY_LINE, offset, timeout=0.05):
                return self
            code = self._child.exited()
            if code is not None:
                raise BackboneError(f"the processor worker exited with {code}; log {self.log_path}: {self.tail(5)}")
        raise BackboneError(f"the processor worker was not ready within {timeout:g}s; log {self.log_path}")

    def alive(self) -> bool:
        return self._child is not None and self._child.alive()

    def log_size(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def wait_for_line(self, text: str, after: int = 0, timeout: float = 15.0) -> bool:
        """True once `text` appears in the worker's log past byte offset `after` (bounded)."""
        deadline = time.monotonic() + timeout
        needle = text.encode()
        while True:
            if self.log_path.exists():
                with open(self.log_path, "rb") as log:
                    log.seek(after)
                    if needle in log.read():
                        return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def rss_mb(self) -> float | None:
        """Resident memory of the worker process (VmRSS), in MiB."""
        if self.pid is None:
            return None
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:]) if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no shutdown and no final commit, as when a machine dies."""
        child, self._child = self._child, None
        if child is not None:
            child.kill()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 30 s; only the PID started here."""
        child, self._child = self._child, None
        if child is not None:
            child.stop(timeout=30.0)
