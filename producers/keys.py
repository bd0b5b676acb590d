"""Topic keys for events about a data subject: a keyed hash, never the identifier itself.

`SubjectKeys(secret)(national_id)` is HMAC-SHA256 under a backbone-wide secret, hex encoded. Every
producer (every agency, and consent) uses the same secret, so one subject always gets the same key:
per-subject ordering holds and a subject's events and consent changes land on the same partition
number. Without the secret the key cannot be linked back to a person by trying every national id.

The secret comes from `BACKBONE_SUBJECT_KEY_SECRET`, else from `<data dir>/subject-key.secret`,
created with 32 random bytes on first use (so the embedded stack needs no setup). Share that one
secret with every producer of a deployment; changing it changes every key (ordering restarts).
"""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path

from backbone.files.private import private_directory, read_or_create
from backbone.settings import Settings
from producers.errors import ProducerError

SECRET_FILE = "subject-key.secret"
MIN_SECRET_BYTES = 16


def subject_key_secret(settings: Settings) -> bytes:
    """The secret of the subject keys (setting, or the data-dir file, created once)."""
    if settings.subject_key_secret is not None:
        secret = settings.subject_key_secret.get_secret_value().encode()
        if len(secret) < MIN_SECRET_BYTES:
            raise ProducerError(f"BACKBONE_SUBJECT_KEY_SECRET is shorter than {MIN_SECRET_BYTES} bytes; use a random secret")
        return secret
    path = private_directory(Path(settings.data_dir)) / SECRET_FILE
    try:
        secret = read_or_create(path, lambda: secrets.token_hex(32).encode()).strip()
    except OSError as exc:
        raise ProducerError(f"cannot read or create the subject key secret {path} ({exc.strerror}); "
                            "set BACKBONE_SUBJECT_KEY_SECRET") from None
    if len(secret) < MIN_SECRET_BYTES:
        raise ProducerError(f"the subject key secret in {path} is shorter than {MIN_SECRET_BYTES} bytes; delete the file to regenerate it")
    return secret


class SubjectKeys:
    """Subject id -> topic key (64 hex characters as bytes); the same id always gives the same key.

    HMAC-SHA256 with the padded key hashed once up front (RFC 2104), and recent keys cached: agency
    streams mention the same people again and again (every month's income, every claim).
    """

    __slots__ = ("_inner", "_outer", "_cache")
    CACHE_SIZE = 1 << 18

    def __init__(self, secret: bytes) -> None:
        block = hashlib.sha256().block_size
        key = hashlib.sha256(secret).digest() if len(secret) > block else secret
        key = key.ljust(block, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
        self._cache: dict[str, bytes] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> SubjectKeys:
        return cls(subject_key_secret(settings))

    def __call__(self, subject_id: str) -> bytes:
        key = self._cache.get(subject_id)
        if key is None:
            inner = self._inner.copy()
            inner.update(subject_id.encode())
            outer = self._outer.copy()
            outer.update(inner.digest())
            key = outer.hexdigest().encode()
            if len(self._cache) >= self.CACHE_SIZE:
                self._cache.clear()
            self._cache[subject_id] = key
        return key

    def __repr__(self) -> str:
        return "SubjectKeys(<secret>)"

