"""The portal's sessions: random tokens in an HttpOnly, SameSite=Strict cookie (Secure over https),
held in memory (a restart signs everyone out), each carrying the subject it was opened for and a
CSRF token every form sends back. The subject lives here only, on the server: no request names it.

Refused links are throttled per client address: at most `MAX_FAILURES` a minute from one address,
the rest refused unchecked (429) until its window has passed. Links are not guessable (a 256-bit key
authenticates them), so this bounds the work a client makes, and one address cannot lock everyone
out; the addresses remembered are bounded (`MAX_CLIENTS`, the oldest forgotten first).
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

COOKIE = "backbone_portal"
SESSION_S = 30 * 60
MAX_FAILURES = 20
FAILURE_WINDOW_S = 60.0
MAX_CLIENTS = 10_000


@dataclass(slots=True)
class PortalSession:
    subject: str  # the national id, from the link (or the OpenID provider's claim); never sent to the browser
    csrf: str
    expires: float
    receipts: list[dict[str, Any]] = field(default_factory=list)  # consent receipts made in this session

    def csrf_matches(self, sent: str) -> bool:
        return hmac.compare_digest(self.csrf.encode(), sent.encode())


class PortalSessions:
    """Open sessions and the refused-link throttle (used from one event loop)."""

    def __init__(self, session_s: float = SESSION_S) -> None:
        self._sessions: dict[str, PortalSession] = {}
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._session_s = session_s

    def open(self, subject: str) -> str:
        now = time.time()
        self._sessions = {t: s for t, s in self._sessions.items() if s.expires >= now}
        token = secrets.token_urlsafe(32)
        self._sessions[token] = PortalSession(subject, secrets.token_urlsafe(24), now + self._session_s)
        return token

    def get(self, token: str | None) -> PortalSession | None:
        found = self._sessions.get(token or "")
        if found is None or found.expires < time.time():
            self._sessions.pop(token or "", None)
            return None
        return found

    def close(self, token: str | None) -> None:
        self._sessions.pop(token or "", None)

    def locked(self, client: str) -> bool:
        window = self._failures.get(client)
        if window is None:
            return False
        now = time.monotonic()
        while window and now - window[0] >= FAILURE_WINDOW_S:
            window.popleft()
        if not window:
            del self._failures[client]
            return False
        return len(window) >= MAX_FAILURES

    def failed(self, client: str) -> None:
        window = self._failures.pop(client, None) or deque(maxlen=MAX_FAILURES)
        window.append(time.monotonic())
        self._failures[client] = window  # the most recent last
        while len(self._failures) > MAX_CLIENTS:
            self._failures.popitem(last=False)
