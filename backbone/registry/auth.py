"""Authentication and authorization of every registry request (HTTP Basic, as confluent-kafka's
`basic.auth.user.info` and ClickHouse's `http://user:password@host` registry URLs send it).

Order: who is asking (401 without or with wrong credentials), then may they (403 beyond their
grant). Passwords are never logged or quoted in an answer.

A credential is checked with scrypt once per process and then remembered as an HMAC under a key
that lives only in this process's memory, so the cost is paid per client, not per request, and no
password stays in memory. The users file is re-read when it changes (`backbone registry users add`
takes effect without a restart); if it becomes unreadable, every request is refused (fail closed).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from aiohttp import web

from backbone.registry import errors
from backbone.registry.roles import ANONYMOUS, Access, Principal
from backbone.registry.users import PasswordHash, User, UsersFile, new_password

log = logging.getLogger("backbone.registry")
MAX_REMEMBERED = 1024  # verified credentials kept per process (cleared when full or the file changes)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Guard(Protocol):
    async def principal(self, request: web.Request) -> Principal:
        """Who sent `request`; raises a 401 `ApiError` when that cannot be established."""
        ...


class Anonymous:
    """No authentication (`BACKBONE_SCHEMA_REGISTRY_AUTH=none`): every request acts as admin."""

    async def principal(self, request: web.Request) -> Principal:
        return ANONYMOUS


def _credentials(header: str | None) -> tuple[str, str]:
    if not header:
        raise errors.unauthorized(
            "authentication required: send a registry user's credentials with HTTP Basic "
            "(backbone clients: BACKBONE_SCHEMA_REGISTRY_USER and BACKBONE_SCHEMA_REGISTRY_PASSWORD)"
        )
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        raise errors.unauthorized("only HTTP Basic authentication is accepted")
    try:
        name, colon, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise errors.unauthorized("malformed HTTP Basic credentials") from None
    if not colon or not name:
        raise errors.unauthorized("malformed HTTP Basic credentials")
    return name, password


class BasicAuth:
    """Users and scrypt hashes from a `UsersFile`; refuses to start without at least one user."""

    def __init__(self, users_file: UsersFile) -> None:
        self.users_file = users_file
        self._users = users_file.read()
        if not self._users:
            raise errors.UsersFileError(
                f"registry users file {users_file.path} has no users: add one with `backbone registry users add NAME --role admin`"
            )
        self._stamp = self._file_stamp()
        self._broken = False
        self._key = os.urandom(32)
        self._verified: dict[bytes, str] = {}  # HMAC(key, name:password) -> user name
        # An unknown name costs as much as a wrong password, so answers do not reveal which names exist.
        self._decoy = PasswordHash.of(new_password())
        # scrypt takes ~0.1 s and 32 MiB: at most two run at once, off the event loop.
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="registry-auth")

    @property
    def count(self) -> int:
        return len(self._users)

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            stat = self.users_file.path.stat()
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino)

    def _current(self) -> dict[str, User]:
        stamp = self._file_stamp()
        if stamp != self._stamp:
            self._stamp = stamp
            self._verified.clear()
            try:
                self._users = self.users_file.read()
                self._broken = False
                log.info("registry users file %s re-read: %d users", self.users_file.path, len(self._users))
            except errors.UsersFileError as exc:
                self._users, self._broken = {}, True
                log.error("refusing every request until the users file is fixed: %s", exc)
        if self._broken:
            raise errors.store_error("the registry cannot read its users file; see the registry log")
        return self._users

    async def principal(self, request: web.Request) -> Principal:
        name, password = _credentials(request.headers.get("Authorization"))
        users = self._current()
        token = hmac.new(self._key, f"{name}\0{password}".encode(), hashlib.sha256).digest()
        remembered = self._verified.get(token)
        if remembered is not None and remembered in users:
            return Principal(remembered, users[remembered].grant)
        user = users.get(name)
        stored = user.password if user is not None else self._decoy
        matches = await asyncio.get_running_loop().run_in_executor(self._pool, stored.matches, password)
        if user is None or not matches:
            log.warning("refused credentials from %s for %s %s", request.remote, request.method, request.path)
            raise errors.unauthorized("wrong user name or password")
        if len(self._verified) >= MAX_REMEMBERED:
            self._verified.clear()
        self._verified[token] = user.name
        return Principal(user.name, user.grant)


def guard_middleware(guard: Guard, access: Mapping[str, Access]) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """Authenticate every request, then authorize it by the access its route needs (`access`, by
    route name). Requests for unknown routes are authenticated too, then answered 404/405."""

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        principal = await guard.principal(request)
        route = request.match_info.route.name
        needed = access.get(route) if route else None
        if needed is not None:
            subject = request.match_info.get("subject")
            if not principal.grant.permits(needed, subject):
                scope = f" on subject '{subject}'" if subject else ""
                raise errors.forbidden(
                    f"user '{principal.name}' ({principal.grant}) may not {route.replace('_', ' ')}{scope}"
                )
        return await handler(request)

    return authenticate
