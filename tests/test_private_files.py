"""Another account on the host reads nothing the backbone writes (issue 25, item 2): every directory
and file under the data dir and the chDB directory is its user's only (0700 / 0600), whatever the
umask of the shell that started it, and a data or chDB directory others may use is refused with the
path and the fix. The parts run for real: the `backbone` command in a child process started with the
permissive umask 022, chDB, the embedded broker and registry."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from backbone.clickhouse.client import make_client
from backbone.clickhouse.endpoint import ChdbServer
from backbone.errors import NotPrivateError
from backbone.settings import PROJECT_ROOT
from backbone.stack.embedded import EmbeddedBroker, EmbeddedStack
from tests.cli import CLI, clean_env

pytestmark = pytest.mark.integration


def open_to_others(root: Path) -> list[str]:
    """Every path under `root` (and `root`) whose group or others have any permission."""
    found = []
    for path in [root, *root.rglob("*")]:
        mode = path.lstat().st_mode
        if not stat.S_ISLNK(mode) and mode & 0o077:
            found.append(f"{path.relative_to(root.parent)} {stat.S_IMODE(mode):o}")
    return found


def backbone_022(*args: str, data: Path, dsn: str | None = None) -> subprocess.CompletedProcess[str]:
    """`backbone ARGS` in a child process started with the umask 022 of a usual login shell."""
    env = {"BACKBONE_DATA_DIR": str(data), "BACKBONE_KAFKA_BOOTSTRAP": "127.0.0.1:1",
           "BACKBONE_SCHEMA_REGISTRY_URL": "http://127.0.0.1:1", **({"BACKBONE_CLICKHOUSE_DSN": dsn} if dsn else {})}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, cwd=PROJECT_ROOT, env=clean_env(env), umask=0o022)


def land_rows(data: Path) -> None:
    """A table with rows in the default chDB directory of `data`, written by the backbone command."""
    for sql in ("CREATE DATABASE IF NOT EXISTS agency", "CREATE TABLE IF NOT EXISTS agency.claims (id String) ENGINE = MergeTree ORDER BY id",
                "INSERT INTO agency.claims VALUES ('national-id-1')", "SELECT count() FROM agency.claims"):
        result = backbone_022("clickhouse", "query", sql, data=data)
        assert result.returncode == 0, result.stderr


def test_keys_and_a_chdb_directory_with_rows_are_private_to_their_user(tmp_path: Path) -> None:
    data = tmp_path / "data"
    made = backbone_022("keys", "init", "--new-master-key-file", str(data / "master.key"), data=data)
    assert made.returncode == 0, made.stderr
    land_rows(data)
    assert (data / "keyring.json").exists() and any((data / "clickhouse").rglob("*.bin"))
    assert open_to_others(data) == []


def test_the_embedded_stack_keeps_its_data_dir_private(tmp_path: Path) -> None:
    data = tmp_path / "data"
    previous = os.umask(0o022)  # as a library caller's shell would have it
    try:
        with EmbeddedStack(data):
            pass
    finally:
        os.umask(previous)
    assert (data / "logs" / "broker.log").exists() and (data / "registry-users.json").exists()
    assert open_to_others(data) == []


@pytest.fixture
def readable_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "shared"
    directory.mkdir()
    directory.chmod(0o755)
    return directory


def test_a_chdb_directory_others_may_read_is_neither_opened_nor_served(readable_dir: Path) -> None:
    for attempt in (lambda: make_client(f"chdb://{readable_dir}", read_only=True), lambda: make_client(f"chdb://{readable_dir}"),
                    lambda: ChdbServer(readable_dir)):
        with pytest.raises(NotPrivateError) as refused:
            attempt()
        assert str(readable_dir) in str(refused.value) and f"chmod -R go-rwx {readable_dir}" in str(refused.value)
    assert list(readable_dir.iterdir()) == []  # nothing opened, nothing written
    query = backbone_022("clickhouse", "query", "SELECT 1", data=readable_dir.parent / "data", dsn=f"chdb://{readable_dir}")
    assert query.returncode == 1 and "Traceback" not in query.stderr
    assert f"chmod -R go-rwx {readable_dir}" in " ".join(query.stderr.split())


def test_a_data_dir_others_may_read_is_refused_before_anything_starts(readable_dir: Path) -> None:
    broker = EmbeddedBroker(readable_dir)
    with pytest.raises(NotPrivateError, match="go-rwx"):
        broker.start()
    assert broker.pid is None
    up = backbone_022("up", data=readable_dir)
    assert up.returncode == 1 and f"chmod -R go-rwx {readable_dir}" in " ".join(up.stderr.split())


@pytest.fixture
def open_parent() -> Iterator[Path]:
    """A directory every account may enter (as /home or /srv are), holding the backbone's data dir."""
    parent = Path(tempfile.mkdtemp(prefix="backbone-private-"))
    parent.chmod(0o755)
    yield parent
    shutil.rmtree(parent, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ls") is None, reason="needs root to act as nobody")
def test_another_account_cannot_read_the_data_dir(open_parent: Path) -> None:
    data = open_parent / "data"
    land_rows(data)
    parts = [path for path in (data / "clickhouse").rglob("*.bin")]
    assert parts
    for target in (data, data / "clickhouse", parts[0]):
        looked = subprocess.run(["ls", "-la", str(target)], capture_output=True, text=True, timeout=30, user="nobody")
        assert looked.returncode != 0 and "Permission denied" in looked.stderr


def test_a_secret_file_is_made_once_private_under_a_permissive_umask_and_never_overwritten(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from backbone.files.private import create_private_file, read_or_create

    path = tmp_path / "link.key"
    before = os.umask(0o022)
    try:
        with ThreadPoolExecutor(8) as pool:  # eight makers at once: one writes, every one reads what it wrote
            read = set(pool.map(lambda n: read_or_create(path, lambda: f"secret {n}\n".encode()), range(8)))
    finally:
        os.umask(before)
    assert len(read) == 1 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not create_private_file(path, b"another secret") and path.read_bytes() in read  # an existing key stays
    assert read_or_create(path, lambda: pytest.fail("made again")) in read
