"""The one place that makes a ClickHouse client.

`chdb:///path` gives an embedded chDB database at that path; `http(s)://user:password@host:port/db`
a ClickHouse server. Both are clickhouse-connect clients, so callers never know which one they hold.

chDB opens a directory in one process only. The process that holds one for writing (a sink, the
demo) serves it read-only to the others (`serve_readers`, `backbone.clickhouse.endpoint`), and a reader
(`make_client(dsn, read_only=True)`) uses that endpoint when the directory is held, else opens the
directory itself. Writers need the directory: while another process holds it they get a clear error.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError, ProgrammingError

from backbone.errors import ClickHouseDsnError
from backbone.files.private import private_directory

if TYPE_CHECKING:
    from urllib3 import PoolManager

    from backbone.clickhouse.endpoint import ChdbServer
    from backbone.clickhouse.readpolicy import ReadLimits

SCHEMES = ("chdb", "http", "https", "clickhouse", "clickhouses")
# chDB's caches, as the process that first opens a directory starts the engine (later connections in
# the process share it; their options are ignored). ClickHouse's server defaults are for a server that
# owns its machine: 5 GiB each for marks, skip-index marks and primary indexes. The mark cache holds the
# marks the fraud rules read (their tables' 64-row granules) and those of parts merged away in the last 8
# minutes, so sinks landing 4,000 rows/s grew it by 1.8-2.8 MiB per million rows (`python -m
# bench.processor --soak`), 0.6-0.9 GiB a day: bounded here, above what 10 M fraud rows' marks take.
CHDB_ENGINE_OPTIONS: dict[str, int] = {
    "mark_cache_size": 64 << 20,
    "index_mark_cache_size": 16 << 20,
    "primary_index_cache_size": 16 << 20,
    "query_condition_cache_size": 16 << 20,
}

log = logging.getLogger("backbone.clickhouse")
_loopback_pool: PoolManager | None = None


def chdb_path(dsn: str) -> Path | None:
    """The directory of a `chdb://` DSN, or None for a server DSN."""
    parts = urlsplit(dsn)
    if parts.scheme != "chdb":
        return None
    return Path(parts.netloc + parts.path) if parts.netloc else Path(parts.path)


def make_client(dsn: str, *, read_only: bool = False, **settings: object) -> Client:
    """A clickhouse-connect client for `dsn`; for chDB the directory is created (0700) when missing,
    and refused when other users of the host may read it.

    `read_only`: the caller only reads, so a chDB directory another process holds is read through
    the read-only endpoint that process serves instead of failing. No effect on a server DSN."""
    parts = urlsplit(dsn)
    if parts.scheme not in SCHEMES:
        raise ClickHouseDsnError(
            f"BACKBONE_CLICKHOUSE_DSN: unsupported scheme {parts.scheme!r}; "
            "use chdb:///path/to/dir or http(s)://user:password@host:port/database"
        )
    if parts.scheme == "chdb":
        path = chdb_path(dsn)
        if path is None or not str(path):
            raise ClickHouseDsnError("BACKBONE_CLICKHOUSE_DSN: chdb DSN needs a directory, e.g. chdb:///var/lib/backbone/ch")
        private_directory(path, "chDB directory")  # created 0700, or refused when others may read it
        if read_only:
            served = _served_client(path, settings)
            if served is not None:
                return served
        try:
            return clickhouse_connect.get_client(dsn=f"chdb://{path.resolve()}", settings=settings or None,
                                                 chdb_options=CHDB_ENGINE_OPTIONS)
        except ProgrammingError as exc:
            # chDB serves one directory per process, and one process per directory.
            if read_only:
                raise ClickHouseDsnError(
                    f"cannot open chDB directory {path}: it is in use by another process that serves no read-only "
                    "endpoint (only backbone sink and backbone demo do), or this process already opened a different "
                    "chDB directory (chDB allows one of each); stop the other process or point BACKBONE_CLICKHOUSE_DSN "
                    "at a ClickHouse server"
                ) from exc
            raise ClickHouseDsnError(
                f"cannot open chDB directory {path}: it is in use by another process, or this process "
                "already opened a different chDB directory (chDB allows one of each); writing needs the "
                "directory itself: stop the other process (reading commands reach a directory a sink holds "
                "through its read-only endpoint) or point BACKBONE_CLICKHOUSE_DSN at a ClickHouse server"
            ) from exc
    if not parts.hostname:
        raise ClickHouseDsnError("BACKBONE_CLICKHOUSE_DSN: server DSN needs a host, e.g. http://default:@127.0.0.1:8123/default")
    return clickhouse_connect.get_client(dsn=dsn, settings=settings or None)


def _served_client(path: Path, settings: dict[str, object]) -> Client | None:
    """A client of the read-only endpoint serving `path`, or None when no live process serves it."""
    from backbone.clickhouse.endpoint import HOST, served_endpoint

    endpoint = served_endpoint(path)
    if endpoint is None:
        return None
    global _loopback_pool
    if _loopback_pool is None:
        from clickhouse_connect.driver.httputil import get_pool_manager

        _loopback_pool = get_pool_manager()  # its own pool: no HTTP(S)_PROXY from the environment sees the secret
    try:
        return clickhouse_connect.get_client(
            host=HOST, port=endpoint.port, username=endpoint.user, password=endpoint.secret, compress=False,
            connect_timeout=3, autogenerate_session_id=False, pool_mgr=_loopback_pool, settings=settings or None,
        )
    except (OperationalError, DatabaseError) as exc:  # a stale file: its port is closed or someone else's now
        log.warning("chDB directory %s: the endpoint of process %d did not answer (%s); opening the directory instead",
                    path, endpoint.pid, type(exc).__name__)
        return None


def serve_readers(dsn: str, limits: ReadLimits | None = None) -> ChdbServer | None:
    """Serve the chDB directory of `dsn`, which this process holds (open a client on it first),
    read-only to other processes until `close()`, each query under `limits` (the defaults of
    `ReadLimits` unless given); None for a ClickHouse server, which serves everyone itself."""
    path = chdb_path(dsn)
    if path is None:
        return None
    from backbone.clickhouse.endpoint import ChdbServer

    return ChdbServer(path, limits)
