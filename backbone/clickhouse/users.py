"""The sinks' ClickHouse users, provisioned out of band: a password per sink workload, the DSN it
connects with, and the credentials (hashes) the grants are applied with.

`provision` keeps or makes `<dir>/<workload>.password` (0600) for each sink workload, writes
`<dir>/<workload>.dsn` (the server URL with the workload's user and password) when given the URL,
and the credentials file: one `Credential` (SHA-256 of password and salt, and the salt) per user.
Whoever applies the grants (`backbone clickhouse grants --apply --credentials FILE`, as the
ClickHouse administrator) reads that file and never a sink's password; each sink reads its own DSN
only. Re-provisioning keeps every password and every credential that still matches its password.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from backbone.errors import BackboneError
from backbone.files.private import make_private_dirs

FORMAT = "backbone-clickhouse-credentials/1"


@dataclass(slots=True, frozen=True)
class Credential:
    """A password as ClickHouse keeps it (`sha256_hash`): SHA-256 of password and salt, and the salt.
    Statements carry this, never the password."""

    sha256_hex: str
    salt: str

    @classmethod
    def of(cls, password: str, salt: str) -> Credential:
        return cls(hashlib.sha256((password + salt).encode()).hexdigest(), salt)

    def matches(self, password: str) -> bool:
        return secrets.compare_digest(Credential.of(password, self.salt).sha256_hex, self.sha256_hex)


def with_user(url: str, user: str, password: str) -> str:
    """`http://host:8123/db` -> `http://user:password@host:8123/db` (user and password URL-quoted)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BackboneError(f"--url {url!r}: give the server's http(s)://host:port/database, without a user")
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, f"{quote(user, safe='')}:{quote(password, safe='')}@{host}", parts.path or "/default", "", ""))


def _write_private(path: Path, text: str) -> None:
    make_private_dirs(path.parent)
    partial = path.with_name(path.name + ".partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)  # whatever the umask, and a leftover partial file
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    os.replace(partial, path)


def read_credentials(path: Path) -> dict[str, Credential]:
    """The credentials file `provision` writes: user -> `Credential`."""
    try:
        document = json.loads(Path(path).read_text())
        if document.get("format") != FORMAT:
            raise ValueError("format")
        return {user: Credential(entry["sha256_hex"], entry["salt"]) for user, entry in document["users"].items()}
    except FileNotFoundError:
        raise BackboneError(f"{path}: no such file; make it with `backbone clickhouse users provision`") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BackboneError(f"{path}: not a credentials file of `backbone clickhouse users provision` ({type(exc).__name__})") from None


def provision(users: Mapping[str, str], passwords_dir: Path, credentials_file: Path, url: str | None = None) -> dict[str, Credential]:
    """For each sink workload -> ClickHouse user of `users`: its password file (kept, or made), its
    DSN file when `url` is given, and its credential in `credentials_file` (other users there are kept)."""
    make_private_dirs(passwords_dir)
    known = read_credentials(credentials_file) if Path(credentials_file).exists() else {}
    for workload, user in users.items():
        password_file = passwords_dir / f"{workload}.password"
        if not password_file.exists():
            _write_private(password_file, secrets.token_urlsafe(32) + "\n")
        lines = password_file.read_text().splitlines()
        password = lines[0] if lines else ""
        if not password:
            raise BackboneError(f"{password_file} is empty: write the password on its first line, or delete the file for a new one")
        if user not in known or not known[user].matches(password):
            known[user] = Credential.of(password, secrets.token_hex(16))
        if url is not None:
            _write_private(passwords_dir / f"{workload}.dsn", with_user(url, user, password))
    document = {"format": FORMAT, "users": {user: {"sha256_hex": c.sha256_hex, "salt": c.salt} for user, c in sorted(known.items())}}
    _write_private(Path(credentials_file), json.dumps(document, indent=2) + "\n")
    return known
