"""Who may use the console: two users from settings, `operator` and `oversight`, each its role, and
each agency's grievance handlers (`BACKBONE_CONSOLE_HANDLERS`, `name@agency` -> password), role
`handler`, who see and work only their agency's grievances (`app.portal.handling`) and no other page.

Passwords are hashed with scrypt at start-up (`backbone.registry.users.PasswordHash`, the registry's
own) and the plain text is not kept; a login is checked in constant time. Sessions are random
tokens in an HttpOnly, SameSite=Strict cookie (Secure when the console is reached over https), held
in memory: a restart logs everyone out.

Guessing is throttled per user name: each attempt takes one of `MAX_FAILURES` places in its name's
window *before* the slow hash, so a burst of concurrent guesses gets no more checks than one at a
time; a wrong password keeps its place until the window has passed, a right one gives it back. Every
name that is not a user shares one window, so the memory the throttle holds does not grow with the
names tried.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque
from dataclasses import dataclass
from enum import Enum

from backbone.errors import SettingsError
from backbone.registry.users import PasswordHash
from backbone.settings import Settings

OPERATOR = "operator"
OVERSIGHT = "oversight"
HANDLER = "handler"
COOKIE = "backbone_console"
SESSION_S = 8 * 3600
# Guessing: at most this many passwords checked for one user name within the window (scrypt
# already costs ~0.1 s per attempt); further attempts are refused unchecked until places free up.
MAX_FAILURES = 5
FAILURE_WINDOW_S = 60.0
UNKNOWN = ""  # the one window every name that is not a user shares (no user is called "")


def agency_of(user: str) -> str:
    """The agency of a handler user `name@agency`; `SettingsError` for any other form."""
    name, at, agency = user.rpartition("@")
    if not at or not name.strip() or not agency.strip() or agency != agency.strip():
        raise SettingsError(f"a console handler is named name@agency (the agency whose grievances they work), not {user!r}")
    return agency


class Refusal(Enum):
    WRONG = "wrong user or password"
    LOCKED = "too many attempts"


@dataclass(slots=True, frozen=True)
class Session:
    user: str
    role: str
    expires: float
    agency: str | None = None  # a handler's agency: the only grievances the session sees


class Logins:
    """The console's users and open sessions (used from one event loop)."""

    def __init__(self, passwords: dict[str, str], handlers: dict[str, str] | None = None) -> None:
        """`passwords`: operator and oversight; `handlers`: handler user (`name@agency`) -> password."""
        self._agencies = {user: agency_of(user) for user in handlers or {}}
        self._hashes = {user: PasswordHash.of(password) for user, password in {**passwords, **(handlers or {})}.items()}
        self._sessions: dict[str, Session] = {}
        # one window per user and one for every other name: bounded by the users, not the names tried
        self._attempts: dict[str, deque[float]] = {name: deque(maxlen=MAX_FAILURES) for name in [*self._hashes, UNKNOWN]}

    @classmethod
    def from_settings(cls, settings: Settings) -> Logins:
        passwords = {user: secret.get_secret_value() for user, secret in (
            (OPERATOR, settings.console_operator_password), (OVERSIGHT, settings.console_oversight_password)) if secret}
        handlers = {user: secret.get_secret_value() for user, secret in settings.console_handlers.items()}
        if not passwords and not handlers:
            raise SettingsError("the console needs a login: set BACKBONE_CONSOLE_OPERATOR_PASSWORD and/or "
                                "BACKBONE_CONSOLE_OVERSIGHT_PASSWORD (or BACKBONE_CONSOLE_HANDLERS)")
        return cls(passwords, handlers)

    @property
    def users(self) -> list[str]:
        return sorted(self._hashes)

    def _reserve(self, name: str) -> float | None:
        """Take a place in the name's window (its time), or None when the window is full."""
        now = time.monotonic()
        window = self._attempts[name]
        while window and now - window[0] >= FAILURE_WINDOW_S:
            window.popleft()
        if len(window) >= MAX_FAILURES:
            return None
        window.append(now)
        return now

    async def attempt(self, user: str, password: str) -> str | Refusal:
        """A session token for the right password; WRONG otherwise (same cost for an unknown user), or
        LOCKED, unchecked, while the name's window is full."""
        known = self._hashes.get(user)
        name = user if known is not None else UNKNOWN
        # no await between the check and the reservation: concurrent attempts each see the others' places
        place = self._reserve(name)
        if place is None:
            return Refusal.LOCKED
        check = known or next(iter(self._hashes.values()))
        matches = await asyncio.get_running_loop().run_in_executor(None, check.matches, password)
        if known is None or not matches:
            return Refusal.WRONG
        try:
            self._attempts[name].remove(place)  # a right password does not count against the user
        except ValueError:
            pass
        token = secrets.token_urlsafe(32)
        agency = self._agencies.get(user)  # a handler's role is `handler`; operator's and oversight's their name
        self._sessions[token] = Session(user, HANDLER if agency else user, time.time() + SESSION_S, agency)
        return token

    async def log_in(self, user: str, password: str) -> str | None:
        """A session token for the right password, None for any refusal."""
        outcome = await self.attempt(user, password)
        return outcome if isinstance(outcome, str) else None

    def session(self, token: str | None) -> Session | None:
        found = self._sessions.get(token or "")
        if found is None or found.expires < time.time():
            self._sessions.pop(token or "", None)
            return None
        return found

    def log_out(self, token: str | None) -> None:
        self._sessions.pop(token or "", None)
