"""Read-only access to a chDB directory that another process holds.

chDB opens a directory in one process only. The process that holds one for writing (a sink, the
demo) serves read-only queries on it to the others: a small HTTP server on 127.0.0.1 speaking the
part of the ClickHouse HTTP interface clickhouse-connect's HTTP client uses (the query in the body or
the `query` parameter, `database`, `param_<name>` bindings, settings as parameters, the result in the
requested FORMAT, errors as an HTTP status with a `Code: N. DB::Exception: ...` body and the
`X-ClickHouse-Exception-Code` header). So a reader gets an ordinary clickhouse-connect client and
never knows (`backbone.clickhouse.client.make_client(dsn, read_only=True)` makes it).

Reading only, of existing tables and views: a statement runs only when ClickHouse's own parse of it
passes the allow-lists of `backbone.clickhouse.readpolicy` (one SELECT, DESCRIBE TABLE or EXISTS;
functions that compute on their arguments only, so no file(), url(), remote(), dictGet(), ...; no
table functions at all; tables of the agencies and the few system tables readers need).
`readonly=1` alone is not enough: it still lets the scalar file() read any file the process can,
DESCRIBE url(...) make requests, and SYSTEM, KILL and SELECT ... INTO OUTFILE through on chDB.
Every query runs on its own chDB connection opened with `readonly=1` and the server's limits
(`readpolicy.ReadLimits`: time, memory, result rows and bytes), which readonly=1 keeps the client's
settings and SETTINGS clauses from loosening (clickhouse-connect sees them read-only and asks for
none). At most `ReadLimits.concurrent` queries run at once; more are answered 503. chDB cannot cancel
a query whose client went away: it ends by itself or at `max_execution_time`.

Authenticated: a random secret per serving process, HTTP Basic. The server writes port, user,
secret and pid to `<directory>/.served.json` (mode 0600, written atomically, removed on a clean
stop); readers ignore the file when its process is gone or its port does not answer. The secret is
never logged, and neither are queries or their parameters (the request line carries them).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from clickhouse_connect.driver.binding import quote_identifier

from backbone.clickhouse.readpolicy import FUNCTIONS_SQL, NotARead, ReadLimits, ReadPolicy, TableRef, parse_ast
from backbone.errors import ClickHouseDsnError
from backbone.files.private import check_private

log = logging.getLogger("backbone.clickhouse")

SERVED_FILE = ".served.json"
HOST = "127.0.0.1"
USER = "backbone-reader"

# Parameters the HTTP interface consumes itself: never applied as settings (the client sends some
# on every request; `user` and `password` are ClickHouse's own ways to authenticate, not ours).
TRANSPORT_PARAMETERS = frozenset({
    "query", "database", "default_format", "user", "password", "quota_key", "query_id",
    "session_id", "session_timeout", "session_check", "compress", "decompress", "buffer_size",
    "wait_end_of_query", "client_protocol_version", "role", "send_progress_in_http_headers",
    "http_headers_progress_interval_ms", "enable_http_compression", "http_zlib_compression_level",
    "cancel_http_readonly_queries_on_client_close",
})
MAX_BODY = 64 * 1024 * 1024  # a query with its bindings; reads never send more
_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CODE = re.compile(r"Code: (\d+)\.")
_TRAILING_FORMAT = re.compile(r"\bFORMAT\s+(\w+)\s*$", re.IGNORECASE)
_CONTENT_TYPES = {"Native": "application/octet-stream", "RowBinary": "application/octet-stream",
                  "JSON": "application/json; charset=UTF-8", "JSONEachRow": "application/x-ndjson; charset=UTF-8"}
READONLY, AUTHENTICATION_FAILED, SYNTAX_ERROR, NOT_IMPLEMENTED, TOO_MANY_SIMULTANEOUS_QUERIES = 164, 516, 62, 48, 202


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to reach the process serving a chDB directory (the secret never prints)."""

    port: int
    pid: int
    user: str = USER
    secret: str = field(default="", repr=False)


class Refused(Exception):
    """A request the endpoint answers with a ClickHouse error (`code`, HTTP `status`)."""

    def __init__(self, code: int, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process (the pid was reused): alive; its port will not answer us
        return True
    return True


def served_endpoint(directory: Path) -> Endpoint | None:
    """The endpoint another live process serves `directory` on, or None: no file, a file this user
    did not write privately, a malformed one, or one whose process is gone (or is this process).
    Whether its port answers is for the caller to find out (a stale file's port does not)."""
    path = directory / SERVED_FILE
    try:
        stat = path.stat()
        if stat.st_uid != os.getuid() or stat.st_mode & 0o077:
            log.warning("ignoring %s: not private to this user (mode %o)", path, stat.st_mode & 0o777)
            return None
        data = json.loads(path.read_text())
        endpoint = Endpoint(port=int(data["port"]), pid=int(data["pid"]), user=str(data["user"]), secret=str(data["secret"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("ignoring %s: unreadable or malformed", path)
        return None
    if endpoint.pid == os.getpid() or not _alive(endpoint.pid):
        return None
    return endpoint


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _refusal(exc: Exception) -> Refused:
    """A chDB error as the HTTP interface reports it: `Code: N. DB::Exception: ...` and a status."""
    text = str(exc)
    start = text.find("Code: ")
    message = text[start:].strip() if start >= 0 else text.strip() or type(exc).__name__
    match = _CODE.search(message)
    code = int(match.group(1)) if match else 1001  # STD_EXCEPTION
    status = {SYNTAX_ERROR: 400, READONLY: 403, 497: 403, 60: 404, 81: 404}.get(code, 500)
    return Refused(code, message, status)


@dataclass(slots=True)
class Answer:
    body: bytes
    format: str | None  # None: a statement without a result set
    summary: dict[str, str] = field(default_factory=dict)


class ReadOnlyEngine:
    """Runs reads (`readpolicy`) on chDB connections of `directory` (which this process holds), each
    under `limits`."""

    def __init__(self, directory: Path, limits: ReadLimits | None = None) -> None:
        import chdb

        self._connect = chdb.connect
        self.limits = limits or ReadLimits()
        self.path = os.path.realpath(directory)  # chDB compares engine paths literally, as clickhouse-connect spells them
        self._dsn = f"{self.path}?{self.limits.connection_settings()}"
        try:
            # held for the server's life, so the directory stays open here while it serves (and reads
            # system.functions below, which the per-query result limit would cut short)
            self._anchor = self._connect(f"{self.path}?readonly=1")
        except RuntimeError as exc:
            raise ClickHouseDsnError(f"cannot serve chDB directory {directory}: another process holds it") from exc
        rows = self._anchor.query(FUNCTIONS_SQL, "JSONCompact").bytes()
        self.policy = ReadPolicy([tuple(row) for row in json.loads(rows)["data"]])

    def close(self) -> None:
        self._anchor.close()

    def _single_statement(self, connection: Any, sql: str) -> str:
        """The statement as ClickHouse's parser reads it, formatted on one line (comments gone, keywords
        upper case); a syntax error, or more than one statement, is refused here."""
        try:
            formatted = connection.query(f"SELECT formatQuerySingleLine({_quote(sql)})", "TSVRaw").bytes().decode().strip()
        except Exception as exc:  # noqa: BLE001 - chDB raises RuntimeError subclasses; the code says which
            raise _refusal(exc) from None
        return formatted

    def _check_read(self, connection: Any, sql: str, binds: dict[str, str]) -> None:
        """Refuse `sql` unless its parse (EXPLAIN AST: parsing only, nothing runs) passes the allow-lists
        and every existing table it names may be read."""
        try:
            text = connection.query(f"EXPLAIN AST {sql}", "TSVRaw", params=binds).bytes().decode()
            tables = self.policy.check(parse_ast(text))
        except NotARead as refused:
            raise self._not_a_read(str(refused)) from None
        except Exception as exc:  # noqa: BLE001
            raise _refusal(exc) from None
        if not tables:
            return
        current = connection.query("SELECT currentDatabase()", "TSVRaw").bytes().decode().strip()
        wanted = {TableRef(ref.database or current, ref.table) for ref in tables}
        listing = ", ".join(f"({_quote(ref.database or '')}, {_quote(ref.table)})" for ref in wanted)
        found = connection.query(f"SELECT database, name, engine FROM system.tables WHERE (database, name) IN ({listing})",
                                 "JSONCompact").bytes()
        for database, table, engine in json.loads(found)["data"]:
            if not self.policy.table_allowed(database, table, engine):
                raise self._not_a_read(f"table {database}.{table} is not served (the agencies' tables and views are)")

    @staticmethod
    def _not_a_read(reason: str) -> Refused:
        return Refused(READONLY, f"Code: 164. DB::Exception: this chDB directory is served read-only by the process that holds it "
                                 f"(pid {os.getpid()}): it runs reads of existing tables and views only, and {reason[:200]}; "
                                 "writing needs the directory itself, so stop that process first. (READONLY)", 403)

    def run(self, sql: str, database: str | None, settings: dict[str, str], binds: dict[str, str], default_format: str) -> Answer:
        """Run `sql` as the HTTP interface would: in `database`, under `settings` (refused if they change
        anything), with `binds` for its {name:Type} parameters, its result in its own FORMAT or `default_format`."""
        if not sql.strip():
            raise Refused(SYNTAX_ERROR, "Code: 62. DB::Exception: Empty query. (SYNTAX_ERROR)", 400)
        connection = self._connect(self._dsn)
        try:
            try:
                if database:
                    connection.query(f"USE {quote_identifier(database)}", "TSV")
                for name, value in settings.items():  # readonly=1 refuses any change; an equal value passes
                    if not _SETTING_NAME.match(name):
                        raise Refused(115, f"Code: 115. DB::Exception: Unknown setting {name[:64]!r}. (UNKNOWN_SETTING)", 400)
                    connection.query(f"SET {name} = {_quote(value)}", "TSV")
            except Refused:
                raise
            except Exception as exc:  # noqa: BLE001
                raise _refusal(exc) from None
            formatted = self._single_statement(connection, sql)
            statement = sql.rstrip().rstrip(";")  # one statement (checked): EXPLAIN would show a trailing ';' twice
            self._check_read(connection, statement, binds)
            trailing = _TRAILING_FORMAT.search(formatted)
            result_format = trailing.group(1) if trailing else default_format
            started = time.perf_counter_ns()
            try:
                # the statement runs as sent, checked as sent (the parser read it as exactly one read)
                result = connection.query(statement, default_format, params=binds)
            except Exception as exc:  # noqa: BLE001
                raise _refusal(exc) from None
            summary = {"read_rows": str(result.rows_read()), "read_bytes": str(result.bytes_read()),
                       "elapsed_ns": str(time.perf_counter_ns() - started)}
            return Answer(result.bytes() or b"", result_format, summary)
        finally:
            connection.close()


def _form_fields(content_type: str, body: bytes) -> dict[str, str]:
    """Text fields of a multipart/form-data body (clickhouse-connect sends large bindings so)."""
    message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    fields: dict[str, str] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if part.get_filename() is not None:
            raise Refused(NOT_IMPLEMENTED, "Code: 48. DB::Exception: external data is not served. (NOT_IMPLEMENTED)", 400)
        if name:
            fields[str(name)] = (part.get_payload(decode=True) or b"").decode()
    return fields


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as clickhouse-connect's pooled connections expect
    timeout = 60  # an idle kept-alive connection gives its thread back after this
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the request line carries query parameters: never logged
        return

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._serve()

    def do_POST(self) -> None:  # noqa: N802
        self._serve()

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise Refused(NOT_IMPLEMENTED, "Code: 48. DB::Exception: chunked request bodies are not served. (NOT_IMPLEMENTED)", 411)
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            raise Refused(NOT_IMPLEMENTED, f"Code: 48. DB::Exception: a request body of 0 to {MAX_BODY} bytes is served. (NOT_IMPLEMENTED)", 413)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes, headers: dict[str, str], close: bool = False) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def _authenticated(self) -> bool:
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, secret = base64.b64decode(token, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        expected = self.server.endpoint
        return hmac.compare_digest(user.encode(), expected.user.encode()) & hmac.compare_digest(secret.encode(), expected.secret.encode())

    def _serve(self) -> None:
        target = urlsplit(self.path)
        if target.path == "/ping":  # as ClickHouse: no credentials needed to learn it is up
            self._send(200, b"Ok.\n", {"Content-Type": "text/plain; charset=UTF-8"}, close=self.command != "GET")
            return
        if not self._authenticated():  # before reading any body
            self._send(401, f"Code: {AUTHENTICATION_FAILED}. DB::Exception: {USER}: Authentication failed: password is incorrect, "
                            "or there is no user with such name. (AUTHENTICATION_FAILED)\n".encode(),
                       {"X-ClickHouse-Exception-Code": str(AUTHENTICATION_FAILED), "WWW-Authenticate": 'Basic realm="backbone chDB"'},
                       close=True)
            return
        if target.path not in ("", "/"):
            self._send(404, b"Code: 48. DB::Exception: only / is served. (NOT_IMPLEMENTED)\n",
                       {"X-ClickHouse-Exception-Code": str(NOT_IMPLEMENTED)}, close=True)
            return
        params = dict(parse_qsl(target.query, keep_blank_values=True))
        try:
            try:
                body = self._body()
            except Refused:
                self.close_connection = True  # the unread body would be taken for the next request
                raise
            content_type = self.headers.get("Content-Type", "")
            if content_type.startswith("multipart/form-data"):
                params.update(_form_fields(content_type, body))
                body = b""
            sql = "\n".join(part for part in (params.get("query", ""), body.decode()) if part)
            binds = {name[6:]: value for name, value in params.items() if name.startswith("param_")}
            settings = {name: value for name, value in params.items() if name not in TRANSPORT_PARAMETERS and not name.startswith("param_")}
            if not self.server.running.acquire(blocking=False):
                raise Refused(TOO_MANY_SIMULTANEOUS_QUERIES, f"Code: 202. DB::Exception: {self.server.engine.limits.concurrent} queries "
                                                             "are running on this endpoint; try again when one ends. "
                                                             "(TOO_MANY_SIMULTANEOUS_QUERIES)", 503)
            try:
                answer = self.server.engine.run(sql, params.get("database") or None, settings, binds,
                                                params.get("default_format") or "TabSeparated")
            finally:
                self.server.running.release()
        except Refused as refused:
            self._send(refused.status, f"{refused}\n".encode(), {"X-ClickHouse-Exception-Code": str(refused.code),
                                                                 "Content-Type": "text/plain; charset=UTF-8"}, close=self.close_connection)
            log.debug("chDB endpoint refused a query: code %s", refused.code)
            return
        except UnicodeDecodeError:
            self._send(400, b"Code: 36. DB::Exception: the query is not UTF-8. (BAD_ARGUMENTS)\n", {"X-ClickHouse-Exception-Code": "36"})
            return
        except Exception as exc:  # noqa: BLE001 - answered, never a traceback (it could quote the query)
            log.warning("chDB endpoint failed on a query: %s", type(exc).__name__)
            self._send(500, f"Code: 1001. DB::Exception: the endpoint failed ({type(exc).__name__}). (STD_EXCEPTION)\n".encode(),
                       {"X-ClickHouse-Exception-Code": "1001"}, close=True)
            return
        headers = {"X-ClickHouse-Query-Id": params.get("query_id") or "", "X-ClickHouse-Summary": json.dumps(answer.summary)}
        if answer.format is not None:
            headers["X-ClickHouse-Format"] = answer.format
            headers["Content-Type"] = _CONTENT_TYPES.get(answer.format, "text/plain; charset=UTF-8")
        self._send(200, answer.body, headers)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, engine: ReadOnlyEngine, endpoint: Endpoint) -> None:
        super().__init__((HOST, 0), _Handler)
        self.engine = engine
        self.endpoint = endpoint
        self.running = threading.BoundedSemaphore(engine.limits.concurrent)  # queries running now


class ChdbServer:
    """Serves a chDB directory this process holds, read-only, on 127.0.0.1; `close()` stops it.

    Start it once the process holds the directory (after its own clients opened it). Each query runs
    under `limits` (`ReadLimits()` unless given)."""

    def __init__(self, directory: Path, limits: ReadLimits | None = None) -> None:
        check_private(directory, "chDB directory")  # never serve what others could copy off the disk anyway
        self.directory = directory
        self._engine = ReadOnlyEngine(directory, limits)
        self._server = _Server(self._engine, Endpoint(port=0, pid=os.getpid(), secret=secrets.token_urlsafe(32)))
        self.endpoint = Endpoint(port=self._server.server_address[1], pid=os.getpid(), secret=self._server.endpoint.secret)
        self._server.endpoint = self.endpoint
        self._thread = threading.Thread(target=self._server.serve_forever, name="chdb-endpoint", daemon=True)
        self._thread.start()
        self._write_served_file()
        log.info("serving chDB directory %s read-only on %s:%d", directory, HOST, self.endpoint.port)

    def _write_served_file(self) -> None:
        path = self.directory / SERVED_FILE
        partial = self.directory / f"{SERVED_FILE}.{os.getpid()}.partial"
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        os.fchmod(descriptor, 0o600)  # whatever the umask, and a leftover partial file, say
        with os.fdopen(descriptor, "w") as handle:
            json.dump({"port": self.endpoint.port, "user": self.endpoint.user, "secret": self.endpoint.secret,
                       "pid": self.endpoint.pid}, handle)
        os.replace(partial, path)

    def close(self) -> None:
        """Stop serving: the file goes first (if it is still this server's), then the port, then the directory."""
        path = self.directory / SERVED_FILE
        try:
            if json.loads(path.read_text()).get("secret") == self.endpoint.secret:
                path.unlink()
        except (OSError, ValueError):
            pass
        self._server.shutdown()
        self._server.server_close()
        self._engine.close()
        log.debug("stopped serving chDB directory %s", self.directory)

    def __enter__(self) -> ChdbServer:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
