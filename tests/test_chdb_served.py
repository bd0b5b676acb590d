"""A chDB directory held by one process (a sink, the demo) is read by the others through the
read-only endpoint the holder serves (`backbone.clickhouse.endpoint`).

The holder here is a separate Python process holding a real chDB directory; readers are the real
`backbone` commands in their own processes, and this process, which never opens the held directory
itself (chDB allows one directory per process, and the session fixtures may hold another one)."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from backbone.clickhouse.client import make_client
from backbone.clickhouse.endpoint import SERVED_FILE, Endpoint, served_endpoint
from backbone.settings import PROJECT_ROOT
from tests.cli import run_backbone

pytestmark = pytest.mark.integration

# Holds the directory as a writer (as a sink does), lands one fraud alert, serves the directory
# until its stdin closes, then stops cleanly. It logs at DEBUG, so a leaked secret would show.
HOLDER = """
import json, logging, sys
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
from backbone.clickhouse.client import make_client, serve_readers
from backbone.clickhouse.readpolicy import ReadLimits
from consumers import ddl
dsn = sys.argv[1]
limits = ReadLimits(**json.loads(sys.argv[2])) if len(sys.argv) > 2 else None
client = make_client(dsn)
client.command(ddl.create_database_sql("fraud"))
client.command(ddl.create_alerts_table_sql("fraud"))
client.command(ddl.create_published_table_sql("fraud"))
client.insert("fraud.alerts", [["shared_bank_account", "tok-1", "2026-01", "3 claimants"]],
              column_names=["kind", "subject", "period", "details"])
served = serve_readers(dsn, limits)
print(served.endpoint.port, flush=True)
sys.stdin.read()
served.close()
client.close()
print("stopped", flush=True)
"""


@dataclass
class Holder:
    dsn: str
    directory: Path
    process: subprocess.Popen[str]
    port: int
    log: Path

    def stop(self) -> str:
        """Stop it cleanly; its log."""
        out, _ = self.process.communicate(input="", timeout=30)  # its stdin closes: it stops
        assert "stopped" in out, self.log.read_text()[-2000:]
        return self.log.read_text()


def _environment(**values: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("BACKBONE_")}
    return env | values


def hold(directory: Path, **limits: int) -> Holder:
    dsn = f"chdb://{directory}"
    log = directory.parent / f"{directory.name}-holder.log"
    with log.open("w") as stderr:
        process = subprocess.Popen([sys.executable, "-c", HOLDER, dsn, *([json.dumps(limits)] if limits else [])], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=stderr, text=True, cwd=PROJECT_ROOT, env=_environment())
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.strip().isdigit():
        process.kill()
        process.communicate(timeout=10)
        raise AssertionError(f"the holder did not start: {line}{log.read_text()[-2000:]}")
    return Holder(dsn, directory, process, int(line), log)


@pytest.fixture(scope="module")
def holder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Holder]:
    held = hold(tmp_path_factory.mktemp("held") / "clickhouse")
    yield held
    if held.process.poll() is None:
        held.stop()


def backbone(dsn: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A `backbone` command as a user runs it, pointed at `dsn` (Kafka and the registry unreachable)."""
    return run_backbone(*args, env={"BACKBONE_CLICKHOUSE_DSN": dsn, "BACKBONE_DATA_DIR": str(tmp_path / "data"),
                                    "BACKBONE_KAFKA_BOOTSTRAP": "127.0.0.1:1", "BACKBONE_SCHEMA_REGISTRY_URL": "http://127.0.0.1:1"})


def test_reading_commands_read_a_directory_another_process_holds(holder: Holder, tmp_path: Path) -> None:
    query = backbone(holder.dsn, tmp_path, "clickhouse", "query", "SELECT kind, subject, period FROM fraud.alerts FINAL")
    assert query.returncode == 0, query.stderr
    assert "shared_bank_account" in query.stdout and "tok-1" in query.stdout
    alerts = backbone(holder.dsn, tmp_path, "fraud", "alerts")  # reads only: creates nothing
    assert alerts.returncode == 0, alerts.stderr
    assert "tok-1" in alerts.stdout and "1 alerts" in alerts.stdout


def test_status_shows_clickhouse_figures_while_the_directory_is_held(holder: Holder, tmp_path: Path) -> None:
    status = backbone(holder.dsn, tmp_path, "status", "--timeout", "1")
    assert status.returncode == 0, status.stderr
    unreachable = status.stdout.split("Topics")[0]
    assert "kafka" in unreachable and "clickhouse" not in unreachable
    rows = status.stdout.split("Rows per agency")[1]
    assert any(line.split("│")[1:3] == [" fraud    ", " 1    "] for line in rows.splitlines() if "fraud" in line), rows
    assert "DB::Exception" not in status.stdout + status.stderr


def test_a_reader_in_this_process_gets_rows_without_opening_the_directory(holder: Holder) -> None:
    client = make_client(holder.dsn, read_only=True)
    try:
        assert client.query("SELECT kind, subject FROM fraud.alerts FINAL").result_rows == [("shared_bank_account", "tok-1")]
        wanted = client.query("SELECT count() FROM fraud.alerts WHERE subject = {s:String}", parameters={"s": "tok-1"})
        assert wanted.result_rows == [(1,)]
        # bindings over 4 KB travel as multipart/form-data
        many = ["tok-1"] + [f"other-{n:05d}" for n in range(1000)]
        assert client.query("SELECT count() FROM fraud.alerts WHERE subject IN {s:Array(String)}", parameters={"s": many}).result_rows == [(1,)]
        assert client.command("SELECT version(), timezone()")  # what clickhouse-connect asks first
    finally:
        client.close()


@pytest.mark.parametrize("statement", [
    "INSERT INTO fraud.alerts (kind, subject, period, details) VALUES ('k', 's', 'p', 'd')",
    "CREATE TABLE fraud.extra (a UInt8) ENGINE = Memory",
    "CREATE TABLE IF NOT EXISTS fraud.extra (a UInt8) ENGINE = Memory",
    "ALTER TABLE fraud.alerts DELETE WHERE 1",
    "DELETE FROM fraud.alerts WHERE 1",
    "TRUNCATE TABLE fraud.alerts",
    "DROP TABLE fraud.alerts",
    "SET readonly = 0",
    "SELECT count() FROM fraud.alerts SETTINGS readonly = 0",
    "SELECT 1; DROP TABLE fraud.alerts",
    "SYSTEM STOP MERGES",
    "KILL QUERY WHERE 1",
    "SELECT * FROM file('/etc/hostname', 'LineAsString')",
    "INSERT INTO FUNCTION file('written.tsv', 'TSV') SELECT 1",
])
def test_the_endpoint_refuses_writes(holder: Holder, statement: str) -> None:
    client = make_client(holder.dsn, read_only=True)
    try:
        with pytest.raises(DatabaseError) as refused:
            client.command(statement)
        assert refused.value.code in (164, 62)  # READONLY; SYNTAX_ERROR: one statement at a time
        assert client.query("SELECT count() FROM fraud.alerts").result_rows == [(1,)]
        assert client.query("SELECT count() FROM system.tables WHERE database = 'fraud'").result_rows == [(2,)]
    finally:
        client.close()


def test_select_into_outfile_is_refused(holder: Holder, tmp_path: Path) -> None:
    target = tmp_path / "copied.tsv"
    client = make_client(holder.dsn, read_only=True)
    try:
        with pytest.raises(DatabaseError) as refused:
            client.command(f"SELECT * FROM fraud.alerts INTO OUTFILE '{target}'")
        assert refused.value.code == 164
    finally:
        client.close()
    assert not target.exists()


def _ask(endpoint: Endpoint, authorization: str | None) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{endpoint.port}/", data=b"SELECT 1", method="POST")
    if authorization is not None:
        request.add_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - a loopback URL of the test's own
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _basic(user: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()


def test_requests_without_the_right_credentials_get_401(holder: Holder) -> None:
    endpoint = served_endpoint(holder.directory)
    assert endpoint is not None and endpoint.port == holder.port
    for authorization in (None, _basic(endpoint.user, "not-the-secret"), _basic("default", ""),
                          _basic("default", endpoint.secret), "Bearer " + endpoint.secret):
        status, body = _ask(endpoint, authorization)
        assert status == 401 and b"AUTHENTICATION_FAILED" in body
    assert _ask(endpoint, _basic(endpoint.user, endpoint.secret)) == (200, b"1\n")


def test_the_served_file_is_private_to_its_user(holder: Holder) -> None:
    path = holder.directory / SERVED_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    data = json.loads(path.read_text())
    assert data["pid"] == holder.process.pid and data["port"] == holder.port and len(data["secret"]) >= 32
    assert data["secret"] not in repr(served_endpoint(holder.directory))


def test_writers_still_need_the_directory_and_say_so(holder: Holder) -> None:
    opened = subprocess.run([sys.executable, "-c", "import sys\nfrom backbone.clickhouse.client import make_client\nmake_client(sys.argv[1])",
                             holder.dsn], capture_output=True, text=True, timeout=60, cwd=PROJECT_ROOT, env=_environment())
    assert opened.returncode != 0
    assert "ClickHouseDsnError" in opened.stderr and "in use by another process" in opened.stderr


def test_after_the_holder_stops_the_directory_opens_directly(tmp_path: Path) -> None:
    held = hold(tmp_path / "clickhouse")
    secret = json.loads((held.directory / SERVED_FILE).read_text())["secret"]
    log = held.stop()
    assert f"read-only on 127.0.0.1:{held.port}" in log and secret not in log
    assert not (held.directory / SERVED_FILE).exists()
    query = backbone(held.dsn, tmp_path, "clickhouse", "query", "SELECT subject FROM fraud.alerts")
    assert query.returncode == 0, query.stderr
    assert "tok-1" in query.stdout


@pytest.mark.parametrize("stale", ["holder killed", "live pid, closed port"])
def test_a_stale_served_file_does_not_confuse_readers(tmp_path: Path, stale: str) -> None:
    held = hold(tmp_path / "clickhouse")
    served = held.directory / SERVED_FILE
    held.process.send_signal(signal.SIGKILL)  # no clean stop: the file stays behind
    held.process.communicate(timeout=30)
    assert served.exists()
    if stale == "live pid, closed port":  # this test's own pid is alive; the holder's port is closed now
        data = json.loads(served.read_text()) | {"pid": os.getpid()}
        served.write_text(json.dumps(data))
    query = backbone(held.dsn, tmp_path, "clickhouse", "query", "SELECT subject FROM fraud.alerts")
    assert query.returncode == 0, query.stderr
    assert "tok-1" in query.stdout


# --- what a reader may run: reads of existing tables and views (issue 25, item 3) ------------------
class _Listener:
    """A loopback port that records whether anything connected to it (a url() the endpoint must not fetch)."""

    def __init__(self) -> None:
        import socket
        import threading

        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen()
        self.socket.settimeout(0.2)
        self.port = self.socket.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self.socket.accept()
            except OSError:
                continue
            self.connections += 1
            connection.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.socket.close()


def _refused(holder: Holder, statement: str) -> str:
    client = make_client(holder.dsn, read_only=True)
    try:
        with pytest.raises(DatabaseError) as refused:
            client.query(statement)
        return str(refused.value)
    finally:
        client.close()


@pytest.mark.parametrize("target", ["/etc/shadow", "/etc/hostname", "served file", "master key"])
def test_a_reader_cannot_read_files_with_the_file_function(holder: Holder, tmp_path: Path, target: str) -> None:
    secret = "master-key-bytes-that-must-not-leak"
    path = {"served file": str(holder.directory / SERVED_FILE), "master key": str(tmp_path / "master.key")}.get(target, target)
    (tmp_path / "master.key").write_text(secret)
    served_secret = json.loads((holder.directory / SERVED_FILE).read_text())["secret"]
    for statement in (f"SELECT file('{path}')", f"SELECT * FROM file('{path}', 'LineAsString')", f"DESCRIBE TABLE file('{path}')",
                      f"SELECT count() FROM fraud.alerts WHERE subject IN (SELECT * FROM file('{path}', 'LineAsString'))"):
        message = _refused(holder, statement)
        assert "READONLY" in message
        assert secret not in message and served_secret not in message and "root:" not in message


@pytest.mark.parametrize("statement", [
    "DESCRIBE TABLE url('http://127.0.0.1:{port}/data.csv', 'CSV')",
    "SELECT * FROM url('http://127.0.0.1:{port}/data.csv', 'CSV', 'a String')",
    "SELECT * FROM remote('127.0.0.1:{port}', system.one)",
    "SELECT count() FROM fraud.alerts WHERE kind IN (SELECT c1 FROM url('http://127.0.0.1:{port}/x', 'CSV'))",
])
def test_a_reader_cannot_make_the_endpoint_connect_anywhere(holder: Holder, statement: str) -> None:
    listener = _Listener()
    try:
        _refused(holder, statement.format(port=listener.port))
    finally:
        listener.close()
    assert listener.connections == 0


@pytest.mark.parametrize("statement", [
    "SELECT * FROM numbers(10)",
    "SELECT dictGet('d', 'a', toUInt64(1))",
    "SELECT getSetting('max_execution_time')",
    "SELECT hostName()",
    "SELECT * FROM system.processes",
    "SELECT * FROM system.users",
    "SHOW PROCESSLIST",
    "EXPLAIN PIPELINE SELECT * FROM url('http://127.0.0.1:1/x', 'CSV')",
    "SELECT * APPLY(file) FROM fraud.alerts",
    "SELECT `count\n    Function file`('/etc/hostname')",
])
def test_only_reads_of_the_agencies_tables_with_plain_functions_are_served(holder: Holder, statement: str) -> None:
    assert "READONLY" in _refused(holder, statement)


def _post(endpoint: Endpoint, sql: str, query: str = "") -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{endpoint.port}/{query}", data=sql.encode(), method="POST")
    request.add_header("Authorization", _basic(endpoint.user, endpoint.secret))
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - a loopback URL of the test's own
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Holder]:
    """A holder whose endpoint runs one query at a time, for 2 s at most, of at most 1000 result rows."""
    held = hold(tmp_path_factory.mktemp("limited") / "clickhouse", max_execution_time=2, max_result_rows=1000, concurrent=1)
    yield held
    if held.process.poll() is None:
        held.stop()


def test_a_query_stops_at_the_servers_time_limit(limited: Holder) -> None:
    endpoint = served_endpoint(limited.directory)
    assert endpoint is not None
    status, body = _post(endpoint, "SELECT count() FROM system.numbers")
    assert status == 500 and b"TIMEOUT_EXCEEDED" in body
    assert _post(endpoint, "SELECT count() FROM system.numbers SETTINGS max_execution_time = 0")[0] == 403
    status, body = _post(endpoint, "SELECT count() FROM system.numbers", "?max_execution_time=0")  # as a setting of the request
    assert status == 403 and b"READONLY" in body


def test_results_are_bounded_by_the_server(limited: Holder) -> None:
    endpoint = served_endpoint(limited.directory)
    assert endpoint is not None
    status, body = _post(endpoint, "SELECT number FROM system.numbers LIMIT 5000")
    assert status == 500 and b"TOO_MANY_ROWS_OR_BYTES" in body
    assert _post(endpoint, "SELECT number FROM system.numbers LIMIT 5000", "?max_result_rows=0&result_overflow_mode=break")[0] == 403
    assert _post(endpoint, "SELECT count() FROM fraud.alerts") == (200, b"1\n")


def test_concurrent_queries_are_bounded_and_a_gone_client_frees_its_slot_at_the_time_limit(limited: Holder) -> None:
    import socket
    import time

    endpoint = served_endpoint(limited.directory)
    assert endpoint is not None
    sql = b"SELECT count() FROM system.numbers"
    token = base64.b64encode(f"{endpoint.user}:{endpoint.secret}".encode()).decode()

    def held_by_a_gone_client() -> bool:
        """Send a long query, then probe while it runs (2 s at most); go away; whether a probe met the taken slot."""
        with socket.create_connection(("127.0.0.1", endpoint.port), timeout=10) as gone:
            gone.sendall(f"POST / HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {token}\r\nContent-Length: {len(sql)}\r\n\r\n".encode() + sql)
            probing = time.monotonic() + 4
            while time.monotonic() < probing:
                status, body = _post(endpoint, "SELECT 1")
                if status == 503:
                    assert b"TOO_MANY_SIMULTANEOUS_QUERIES" in body
                    return True
                assert (status, body) == (200, b"1\n")
        return False

    # on a loaded machine a probe may only get in after the long query met its limit: try again, a bounded number of times
    assert any(held_by_a_gone_client() for _ in range(8)), "the long query never held the endpoint's only slot"
    deadline = time.monotonic() + 60
    while _post(endpoint, "SELECT 1") != (200, b"1\n"):  # given back once the query meets the time limit
        assert time.monotonic() < deadline, "the gone client's query still runs past its time limit"
        time.sleep(0.2)
    assert limited.process.poll() is None
