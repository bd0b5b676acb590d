"""The registry's users file: names, grants and scrypt password hashes, never a password.

```json
{"format": "backbone-registry-users/1",
 "users": [{"name": "tax", "role": "write", "subjects": ["raw.tax."],
            "scrypt": {"n": 32768, "r": 8, "p": 1, "salt": "<base64>", "hash": "<base64>"}}]}
```
Each user has its own random salt; the cost parameters are stored per user so they can be raised
later without invalidating existing hashes. The file is written atomically with mode 0600.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from backbone.files.private import make_private_dirs
from backbone.registry.errors import UsersFileError
from backbone.registry.roles import Grant

FORMAT = "backbone-registry-users/1"
USERS_FILE_SETTING = "BACKBONE_SCHEMA_REGISTRY_USERS_FILE"
# scrypt cost: n=2^15, r=8 takes ~0.1 s and 32 MiB here. The registry verifies a credential once
# per process and remembers it (see auth.py), so this cost is paid per client, not per request.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
SALT_BYTES, HASH_BYTES = 16, 32
MIN_PASSWORD_LENGTH = 12
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")  # no ':' (HTTP Basic splits on it)


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise ValueError(f"user name {name[:64]!r} must be 1-64 letters, digits or . _ @ - (starting with a letter or digit)")
    return name


def check_password(password: str) -> str:
    """Refuse passwords too short to resist guessing (the message never quotes the password)."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    return password


def new_password() -> str:
    """A random password (URL-safe, so it fits in `http://user:password@host` unquoted)."""
    return secrets.token_urlsafe(24)


@dataclass(frozen=True, slots=True)
class PasswordHash:
    """An scrypt hash with its salt and cost parameters."""

    salt: bytes
    digest: bytes
    n: int = SCRYPT_N
    r: int = SCRYPT_R
    p: int = SCRYPT_P

    @classmethod
    def of(cls, password: str) -> PasswordHash:
        salt = os.urandom(SALT_BYTES)
        digest = Scrypt(salt=salt, length=HASH_BYTES, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P).derive(password.encode())
        return cls(salt, digest)

    def matches(self, password: str) -> bool:
        """Constant-time comparison (cryptography's `Scrypt.verify`)."""
        try:
            Scrypt(salt=self.salt, length=len(self.digest), n=self.n, r=self.r, p=self.p).verify(password.encode(), self.digest)
        except InvalidKey:
            return False
        return True

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "r": self.r, "p": self.p,
                "salt": base64.b64encode(self.salt).decode(), "hash": base64.b64encode(self.digest).decode()}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> PasswordHash:
        return cls(base64.b64decode(value["salt"], validate=True), base64.b64decode(value["hash"], validate=True),
                   int(value["n"]), int(value["r"]), int(value["p"]))


@dataclass(frozen=True, slots=True)
class User:
    name: str
    grant: Grant
    password: PasswordHash

    @classmethod
    def create(cls, name: str, grant: Grant, password: str) -> User:
        return cls(check_name(name), grant, PasswordHash.of(check_password(password)))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.grant.role.value, "subjects": list(self.grant.subjects),
                "scrypt": self.password.to_json()}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> User:
        return cls(check_name(str(value["name"])), Grant.of(str(value["role"]), list(value.get("subjects") or [])),
                   PasswordHash.from_json(value["scrypt"]))


class UsersFile:
    """The users file at `path`: read, written atomically, users added and removed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def exists(self) -> bool:
        return self.path.is_file()

    def read(self) -> dict[str, User]:
        """Every user by name; `UsersFileError` naming the file when it is missing or invalid."""
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UsersFileError(
                f"registry users file {self.path} does not exist: create it with "
                f"`backbone registry users add NAME --role admin` or point {USERS_FILE_SETTING} at one"
            ) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UsersFileError(f"registry users file {self.path} is not readable JSON ({type(exc).__name__})") from None
        if not isinstance(document, dict) or document.get("format") != FORMAT or not isinstance(document.get("users"), list):
            raise UsersFileError(f"registry users file {self.path} is not a {FORMAT} document")
        users: dict[str, User] = {}
        for number, entry in enumerate(document["users"], start=1):
            try:
                user = User.from_json(entry)
            except (KeyError, TypeError, ValueError) as exc:
                raise UsersFileError(f"registry users file {self.path}: user #{number} is invalid ({exc})") from None
            if user.name in users:
                raise UsersFileError(f"registry users file {self.path}: user {user.name} appears twice")
            users[user.name] = user
        return users

    def write(self, users: dict[str, User]) -> None:
        """Replace the file atomically (readers never see half a file), readable by its owner only."""
        make_private_dirs(self.path.parent)
        document = {"format": FORMAT, "users": [users[name].to_json() for name in sorted(users)]}
        handle, temporary = tempfile.mkstemp(prefix=".users-", dir=self.path.parent)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                json.dump(document, out, indent=2)
                out.write("\n")
            os.chmod(temporary, 0o600)
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def put(self, user: User, *, replace: bool = False) -> bool:
        """Add `user` (or replace one of that name when `replace`); True when it replaced one."""
        users = self.read() if self.exists() else {}
        existed = user.name in users
        if existed and not replace:
            raise UsersFileError(f"user {user.name} exists in {self.path}; pass --replace to change its role or password")
        users[user.name] = user
        self.write(users)
        return existed

    def remove(self, name: str) -> None:
        users = self.read()
        if name not in users:
            raise UsersFileError(f"no user {name[:64]} in {self.path}")
        del users[name]
        self.write(users)
