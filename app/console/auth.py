"""Who may use the console: two users from settings, `operator` and `oversight`, each its role.

Passwords are hashed with scrypt at start-up (`backbone.registry.users.PasswordHash`, the registry's
own) and the plain text is not kept; a login is checked in constant time. Sessions are random
tokens in an HttpOnly, SameSite=Strict cookie, held in memory: a restart logs everyone out.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass

from backbone.errors import SettingsError
from backbone.registry.users import PasswordHash
from backbone.settings import Settings

OPERATOR = "operator"
OVERSIGHT = "oversight"
COOKIE = "backbone_console"
SESSION_S = 8 * 3600
# Guessing: after this many wrong passwords for one user within the window, that user's logins are
# refused until the window has passed (scrypt already costs ~0.1 s per attempt).
MAX_FAILURES = 5
FAILURE_WINDOW_S = 60.0


@dataclass(slots=True, frozen=True)
class Session:
    user: str
    role: str
    expires: float


class Logins:
    """The console's users and open sessions."""

    def __init__(self, passwords: dict[str, str]) -> None:
        self._hashes = {user: PasswordHash.of(password) for user, password in passwords.items()}
        self._sessions: dict[str, Session] = {}
        self._failures: dict[str, list[float]] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> Logins:
        passwords = {user: secret.get_secret_value() for user, secret in (
            (OPERATOR, settings.console_operator_password), (OVERSIGHT, settings.console_oversight_password)) if secret}
        if not passwords:
            raise SettingsError("the console needs a login: set BACKBONE_CONSOLE_OPERATOR_PASSWORD and/or "
                                "BACKBONE_CONSOLE_OVERSIGHT_PASSWORD")
        return cls(passwords)

    @property
    def users(self) -> list[str]:
        return sorted(self._hashes)

    async def log_in(self, user: str, password: str) -> str | None:
        """A session token for the right password, None otherwise (same cost for an unknown user)."""
        now = time.monotonic()
        recent = [at for at in self._failures.get(user, []) if now - at < FAILURE_WINDOW_S]
        self._failures[user] = recent
        if len(recent) >= MAX_FAILURES:
            return None
        known = self._hashes.get(user)
        check = known or next(iter(self._hashes.values()))
        matches = await asyncio.get_running_loop().run_in_executor(None, check.matches, password)
        if known is None or not matches:
            if known is not None:
                recent.append(now)
            return None
        self._failures.pop(user, None)
        token = secrets.token_urlsafe(32)
        self._sessions[token] = Session(user, user, time.time() + SESSION_S)  # the role is the user's name
        return token

    def session(self, token: str | None) -> Session | None:
        found = self._sessions.get(token or "")
        if found is None or found.expires < time.time():
            self._sessions.pop(token or "", None)
            return None
        return found

    def log_out(self, token: str | None) -> None:
        self._sessions.pop(token or "", None)
