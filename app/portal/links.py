"""One-time sign-in links for the citizen's portal (`backbone portal link --subject ID`).

A link carries a Fernet token (`cryptography`: AES-128-CBC + HMAC-SHA256 under a key only the portal
holds, with the time it was made): the subject id is encrypted in it, so the URL names no one to
whoever sees it, and a token made or altered without the key does not open. A token is accepted
for `LINK_TTL_S` after it was made and once: its random nonce is recorded as used (in memory and
in `<data dir>/portal/used-links`, so a restart does not open a used link again) before the
session it opens exists. The key is `<data dir>/portal/link.key` (0600 in a 0700 directory), made
on first use by whoever runs the portal; `portal link` must run with the same data directory.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from backbone.errors import BackboneError
from backbone.files.private import private_directory, read_or_create

LINK_TTL_S = 15 * 60
KEY_FILE = "link.key"
USED_FILE = "used-links"
SIGN_IN_PATH = "/signin"


class LinkRefused(BackboneError):
    """A sign-in link that does not open: forged, altered, expired or used."""


@dataclass(slots=True, frozen=True)
class Redeemed:
    subject: str
    nonce: str


def portal_directory(data_dir: Path) -> Path:
    return private_directory(Path(data_dir) / "portal", "portal directory")


def link_key(data_dir: Path) -> bytes:
    """The portal's link key, made (0600) when there is none yet."""
    return read_or_create(portal_directory(data_dir) / KEY_FILE, lambda: Fernet.generate_key() + b"\n").strip()


def issue(key: bytes, subject: str, now: float | None = None) -> str:
    """A token opening one session for `subject` (the national id, encrypted in it)."""
    if not subject.strip():
        raise BackboneError("--subject must not be empty")
    body = json.dumps({"s": subject, "n": secrets.token_urlsafe(16)}).encode()
    return Fernet(key).encrypt_at_time(body, int(time.time() if now is None else now)).decode("ascii")


def link_url(base_url: str, token: str) -> str:
    return f"{base_url.rstrip('/')}{SIGN_IN_PATH}?t={token}"


class LinkDesk:
    """Redeems tokens once each. Thread-safe; used nonces are kept until their links expire."""

    def __init__(self, key: bytes, used_file: Path | None = None, ttl_s: int = LINK_TTL_S) -> None:
        self._fernet = Fernet(key)
        self._ttl = ttl_s
        self._used_file = used_file
        self._lock = threading.Lock()
        self._used: dict[str, float] = {}
        if used_file is not None and used_file.exists():
            now = time.time()
            for line in used_file.read_text().splitlines():
                nonce, _, until = line.partition(" ")
                if until and float(until) > now:
                    self._used[nonce] = float(until)

    @classmethod
    def for_data_dir(cls, data_dir: Path) -> LinkDesk:
        return cls(link_key(data_dir), portal_directory(data_dir) / USED_FILE)

    def redeem(self, token: str, now: float | None = None) -> Redeemed:
        """The subject a valid, unused token names; `LinkRefused` (saying why, never whom) otherwise."""
        now = time.time() if now is None else now
        try:
            body = self._fernet.decrypt_at_time(token.encode("ascii"), self._ttl, int(now))
            data = json.loads(body)
            subject, nonce = str(data["s"]), str(data["n"])
        except InvalidToken:
            raise LinkRefused("this sign-in link is not valid or has expired: ask for a new one") from None
        except (UnicodeError, ValueError, KeyError, TypeError):
            raise LinkRefused("this sign-in link is not valid: ask for a new one") from None
        with self._lock:
            self._used = {n: until for n, until in self._used.items() if until > now}
            if nonce in self._used:
                raise LinkRefused("this sign-in link was used already: each link opens one session; ask for a new one")
            until = now + self._ttl + 60
            self._used[nonce] = until
            if self._used_file is not None:
                with self._used_file.open("a") as out:
                    out.write(f"{nonce} {until}\n")
                    out.flush()
                    os.fsync(out.fileno())
        return Redeemed(subject, nonce)
