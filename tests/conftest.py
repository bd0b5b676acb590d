"""One fixture per real part. Integration tests use the real embedded broker and chDB; a Kafka
from `BACKBONE_KAFKA_BOOTSTRAP` or a testcontainers Kafka (when a Docker daemon answers) is used
instead when available."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

from backbone.settings import Settings, load_settings

# Timings never decide a test: these machines are shared and noisy, so hypothesis's per-example
# deadline (200 ms) is off for every property test (a slow example is not a failure).
hypothesis_settings.register_profile("backbone", deadline=None)
hypothesis_settings.load_profile("backbone")

# Group joins on Tansu take about half the session timeout: keep it short in tests.
TEST_CONSUMER_CONFIG = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}

# The files that take longest (seconds with their module set-up, from `--durations`: the peer suites,
# erasure, the rebuild and the demo in CI at bd01e0a; the audit modules and linkage on a loaded 2-core
# machine; the other files marked slow, "a minute or more"), started first by the two test processes
# (`-n 2 --dist loadfile`), longest first, so that no long file starts last while the other process
# has nothing left to do: xdist's own order (most tests first) hands out the files of one or two
# tests last, and those are the peer suites, the rebuild and the demo (over 6 minutes between them).
# Files not listed follow in xdist's order; a figure only orders, it never skips or times anything.
SLOWEST_FILES = {
    "tests/test_registry_peers.py": 190,
    "tests/test_erasure.py": 177,
    "tests/test_writer_rebuild.py": 120,
    "tests/test_audit_anchors.py": 115,
    "tests/test_linkage.py": 104,
    "tests/test_demo.py": 81,
    "tests/test_audit_trail.py": 80,
    "tests/test_audit_heads.py": 75,
    "tests/test_audit_timestamps.py": 75,
    "tests/test_console_browser.py": 60,
    "tests/test_failsafe.py": 60,
    "tests/test_registry_references.py": 60,
    "tests/test_rehearsal.py": 60,
}
# Files that read one session fixture run in the same test process, one after the other (else each
# process would build it): the landed pipeline (`landed_pipeline`).
SHARING = {"tests/test_audit_trail.py": "landed_pipeline", "tests/test_audit_heads.py": "landed_pipeline"}
# Long files whose tests share no costly module fixture, handed out test by test (both processes can
# run them at once): the two peer suites, each against a stack of its own.
BY_TEST = {"tests/test_registry_peers.py"}


@pytest.hookimpl(optionalhook=True)  # xdist's hook: known only where xdist is loaded
def pytest_xdist_make_scheduler(config: pytest.Config, log):  # noqa: ANN001, ANN201 - xdist's hook
    """`--dist loadfile`, but the files `SHARING` a fixture as one unit and those `BY_TEST` test by test,
    the longest (`SLOWEST_FILES`) handed out first."""
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    def seconds(scope: str) -> int:
        return sum(s for file, s in SLOWEST_FILES.items() if scope.split("::")[0] in (file, SHARING.get(file)))

    class LongestFirst(LoadFileScheduling):
        ordered = False

        def _split_scope(self, nodeid: str) -> str:
            file = super()._split_scope(nodeid)
            return nodeid if file in BY_TEST else SHARING.get(file, file)

        def _assign_work_unit(self, node) -> None:  # noqa: ANN001
            if not self.ordered:  # the first hand-out: the work queue holds every file now
                for scope in sorted(self.workqueue, key=lambda scope: -seconds(scope)):
                    self.workqueue.move_to_end(scope)
                self.ordered = True
            super()._assign_work_unit(node)

    return LongestFirst(config, log)


def _docker_answers() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=2)
        client.ping()
        return True
    except Exception:  # noqa: BLE001 - any failure means no usable daemon
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap servers of a real Kafka-protocol broker for the whole session."""
    configured = os.environ.get("BACKBONE_KAFKA_BOOTSTRAP")
    if configured:
        yield configured
        return
    if os.environ.get("BACKBONE_TEST_DOCKER", "1") != "0" and _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer() as container:
            yield container.get_bootstrap_server()
        return
    from backbone.stack.embedded import EmbeddedBroker

    with EmbeddedBroker(tmp_path_factory.mktemp("broker")) as broker:
        yield broker.bootstrap


@pytest.fixture(scope="session")
def clickhouse_dsn(tmp_path_factory: pytest.TempPathFactory) -> str:
    """chDB allows one directory per process, so the whole session shares one; tests isolate by database."""
    return os.environ.get("BACKBONE_CLICKHOUSE_DSN") or f"chdb://{tmp_path_factory.mktemp('chdb')}"


@pytest.fixture(scope="session")
def clickhouse_client(clickhouse_dsn: str):  # noqa: ANN201 - clickhouse_connect Client
    from backbone.clickhouse.client import make_client

    client = make_client(clickhouse_dsn)
    yield client
    client.close()


@pytest.fixture
def settings(kafka_bootstrap: str, tmp_path: Path, clickhouse_dsn: str) -> Settings:
    """Settings pointing at the session's real parts, with a private data dir and short timeouts."""
    return load_settings(
        kafka_bootstrap=kafka_bootstrap,
        data_dir=tmp_path / "data",
        clickhouse_dsn=clickhouse_dsn,
        kafka_timeout_s=10.0,
        consumer_session_timeout_ms=TEST_CONSUMER_CONFIG["session.timeout.ms"],
        consumer_heartbeat_interval_ms=TEST_CONSUMER_CONFIG["heartbeat.interval.ms"],
    )


@pytest.fixture
def unique() -> str:
    """A short unique suffix for topic, group and database names, so tests never share state."""
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def schema_registry_url(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real Confluent-compatible schema registry, carrying the credentials of a user that
    may do everything (`http://user:password@host:port`, which confluent-kafka, requests and
    ClickHouse accept): `BACKBONE_SCHEMA_REGISTRY_URL` (with `_USER`/`_PASSWORD` when set), else the
    backbone's registry as a child process on the session's broker, authenticating every request."""
    configured = os.environ.get("BACKBONE_SCHEMA_REGISTRY_URL")
    if configured:
        yield load_settings(schema_registry_url=configured).schema_registry_url_with_credentials()
        return
    from backbone.stack.embedded import EmbeddedRegistry

    with EmbeddedRegistry(tmp_path_factory.mktemp("registry"), kafka_bootstrap) as registry:
        yield registry.url


@pytest.fixture
def registry_settings(settings: Settings, schema_registry_url: str) -> Settings:
    """`settings` pointing at the session's schema registry too, with its service credentials in
    the URL (`http://user:password@host:port`, as `schema_registry_url`): every client the backbone
    builds from these settings sends them, and so do tests that hand the URL to a child process or
    a bare `SchemaRegistryClient`. Settings loaded from the environment move them into
    `schema_registry_user` / `_password` instead (tests/test_registry_auth.py covers that path)."""
    return settings.model_copy(update={"schema_registry_url": schema_registry_url})


@pytest.fixture
def backbone_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):  # noqa: ANN201
    """Run the `backbone` command in-process as a user would (exit code, stdout, stderr): the caller's
    BACKBONE_* variables removed, a data dir under `tmp_path`, then the keyword arguments as variables."""
    import subprocess
    import sys

    from app.cli import main
    from backbone.settings import get_settings

    def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        with monkeypatch.context() as patch:
            for key in list(os.environ):
                if key.startswith("BACKBONE_"):
                    patch.delenv(key)
            for key, value in {"BACKBONE_DATA_DIR": str(tmp_path / "data"), **env}.items():
                patch.setenv(key, value)
            patch.setattr(sys, "argv", ["backbone", *args])
            get_settings.cache_clear()
            code = 0
            try:
                main()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            finally:
                get_settings.cache_clear()
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, captured.out, captured.err)

    return run


@pytest.fixture(scope="session")
def landed_pipeline(tmp_path_factory: pytest.TempPathFactory, clickhouse_dsn: str, clickhouse_client):  # noqa: ANN001, ANN201
    """One real pipeline run (a worker crashed mid-run and restarted, operator actions), decided, audited
    and landed in the session's chDB (`tests.pipeline.landed_pipeline`), for the modules that verify
    a landed trail (test_audit_trail, test_audit_heads). Read it, never change it: copy the landed
    databases to tamper with them. Its stack stays up until the session ends."""
    from tests.pipeline import landed_pipeline

    with landed_pipeline(tmp_path_factory.mktemp("landed-pipeline"), clickhouse_dsn, clickhouse_client) as landed:
        yield landed
