"""The one place that makes a ClickHouse client.

`chdb:///path` gives an embedded chDB database at that path; `http(s)://user:password@host:port/db`
a ClickHouse server. Both are clickhouse-connect clients, so callers never know which one they hold.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ProgrammingError

from backbone.errors import ClickHouseDsnError

SCHEMES = ("chdb", "http", "https", "clickhouse", "clickhouses")


def chdb_path(dsn: str) -> Path | None:
    """The directory of a `chdb://` DSN, or None for a server DSN."""
    parts = urlsplit(dsn)
    if parts.scheme != "chdb":
        return None
    return Path(parts.netloc + parts.path) if parts.netloc else Path(parts.path)


def make_client(dsn: str, **settings: object) -> Client:
    """A clickhouse-connect client for `dsn`; for chDB the directory is created when missing."""
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
        path.mkdir(parents=True, exist_ok=True)
        try:
            return clickhouse_connect.get_client(dsn=f"chdb://{path.resolve()}", settings=settings or None)
        except ProgrammingError as exc:
            # chDB serves one directory per process, and one process per directory.
            raise ClickHouseDsnError(
                f"cannot open chDB directory {path}: it is in use by another process, or this process "
                "already opened a different chDB directory (chDB allows one of each); stop the other "
                "process or point BACKBONE_CLICKHOUSE_DSN at a ClickHouse server"
            ) from exc
    if not parts.hostname:
        raise ClickHouseDsnError("BACKBONE_CLICKHOUSE_DSN: server DSN needs a host, e.g. http://default:@127.0.0.1:8123/default")
    return clickhouse_connect.get_client(dsn=dsn, settings=settings or None)
