"""A private embedded stack with a keyring for benchmarks, and processor workers run against it as
real `backbone process` subprocesses. Only PIDs started here are ever signalled."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from backbone.catalog import load_catalog
from backbone.embedded import EmbeddedStack
from backbone.errors import BackboneError
from backbone.keyring import Keyring, encode_master_key, new_master_key
from backbone.policy.agreements import load_agreements
from backbone.settings import Settings, load_settings
from processors.router import OVERSIGHT_DOMAIN


@contextmanager
def embedded_settings(data_dir: Path, partitions: int = 6) -> Iterator[Settings]:
    """A broker and registry of this run's own in `data_dir`, and settings pointing at them with a
    fresh keyring holding every domain of the charter (and oversight)."""
    with EmbeddedStack(data_dir, broker_port=0, registry_port=0) as stack:
        master = new_master_key()
        settings = load_settings(
            kafka_bootstrap=stack.broker.bootstrap,
            schema_registry_url=stack.environment()["BACKBONE_SCHEMA_REGISTRY_URL"],
            data_dir=data_dir,
            master_key=encode_master_key(master),
            kafka_partitions=partitions,
            kafka_timeout_s=10.0,
            # Tansu's group join takes about half the session timeout.
            consumer_session_timeout_ms=6000,
            consumer_heartbeat_interval_ms=500,
        )
        charter = load_agreements(settings.agreements_dir, load_catalog(settings.schemas_dir))
        keyring = Keyring.generate(domains={OVERSIGHT_DOMAIN, *charter.domains()}, providers=charter.providers())
        keyring.save(settings.keyring_path, master)
        yield settings


def worker_environment(settings: Settings, **extra: str) -> dict[str, str]:
    """This process's environment with every `BACKBONE_*` variable taken from `settings` (plus `extra`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKBONE_")}
    env.update({
        "BACKBONE_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "BACKBONE_SCHEMA_REGISTRY_URL": settings.schema_registry_url,
        "BACKBONE_DATA_DIR": str(settings.data_dir),
        "BACKBONE_MASTER_KEY": settings.master_key.get_secret_value() if settings.master_key else "",
        "BACKBONE_KAFKA_PARTITIONS": str(settings.kafka_partitions),
        "BACKBONE_CONSUMER_SESSION_TIMEOUT_MS": str(settings.consumer_session_timeout_ms),
        "BACKBONE_CONSUMER_HEARTBEAT_INTERVAL_MS": str(settings.consumer_heartbeat_interval_ms),
        **{f"BACKBONE_{name.upper()}": value for name, value in extra.items()},
    })
    return env


class ProcessorWorker:
    """One `backbone process` worker as a subprocess, logging at info to `<data dir>/<name>.log`."""

    def __init__(self, settings: Settings, name: str = "worker", **extra_env: str) -> None:
        self.settings = settings
        self.log_path = settings.data_dir / f"{name}.log"
        self.extra_env = extra_env
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self, timeout: float = 90.0) -> ProcessorWorker:
        """Start and wait until the worker logs that it is enforcing (its data plane is running)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", "from backbone.cli import main; main()", "process", "-l", "info"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=worker_environment(self.settings, **self.extra_env), start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "enforcing" in self.log_path.read_text(errors="replace"):
                return self
            if self.process.poll() is not None:
                raise BackboneError(f"worker exited with {self.process.returncode}: {self.tail()}")
            time.sleep(0.05)
        raise BackboneError(f"worker not ready within {timeout:g}s: {self.tail()}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def rss_mb(self) -> float | None:
        """Resident memory of the worker process (VmRSS), in MiB."""
        if self.process is None:
            return None
        try:
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()  # only the PID started here
            process.wait(10)
