"""Pseudonyms and reversible tokens.

- `token(domain, value)`: HMAC-SHA256 under the sharing domain's key, truncated to 128 bits,
  base64url, prefixed with the key id: `k3.q1Zx...`. Deterministic inside a domain (recipients in
  one domain can join on it) and unlinkable across domains (each domain has its own random key).
- `encrypt(provider, value)`: AES-SIV under the provider's key, deterministic, prefixed with the key
  id; only `reidentify` with that provider's key reverses it.

The `*_function` factories return closures over the key for the hot path (no look-ups per call).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from backbone.errors import KeyringError, ReidentifyError
from backbone.keyring import Keyring

DIGEST_BYTES = 16  # 128 bits of HMAC-SHA256: collision-safe for any population, compact in tables
_b64encode = base64.urlsafe_b64encode
_IPAD = bytes(byte ^ 0x36 for byte in range(256))
_OPAD = bytes(byte ^ 0x5C for byte in range(256))
_URL_SAFE = bytes.maketrans(b"+/", b"-_")


def _text(value: Any) -> str:
    # Avro ints and strings pseudonymise alike: 42 and "42" are the same identifier.
    return value if isinstance(value, str) else str(value)


def token_function(keyring: Keyring, domain: str) -> tuple[Callable[[Any], str], str]:
    """(function value -> pseudonym, key id) for `domain`'s active key."""
    key_id, key = keyring.active_key("domain", domain)
    prefix = f"{key_id}."
    # HMAC-SHA256 (RFC 2104) with the keyed inner and outer states computed once: per value only
    # two state copies, a third of `hmac.digest`'s cost. The domain name is mixed into the message
    # too, so even a key reused by mistake would not link domains.
    block = key.ljust(64, b"\x00") if len(key) <= 64 else hashlib.sha256(key).digest().ljust(64, b"\x00")
    inner = hashlib.sha256(block.translate(_IPAD))
    inner.update(domain.encode() + b"\x00")
    outer = hashlib.sha256(block.translate(_OPAD))
    copy_inner, copy_outer = inner.copy, outer.copy
    encode = binascii.b2a_base64

    def pseudonymise(value: Any) -> str:
        state = copy_inner()
        state.update((value if isinstance(value, str) else str(value)).encode())
        mac = copy_outer()
        mac.update(state.digest())
        # 16 bytes -> 22 base64 characters (+ "==" dropped), made URL-safe
        return prefix + encode(mac.digest()[:DIGEST_BYTES], newline=False)[:22].translate(_URL_SAFE).decode("ascii")

    return pseudonymise, key_id


def encrypt_function(keyring: Keyring, provider: str) -> tuple[Callable[[Any], str], str]:
    """(function value -> reversible token, key id) for `provider`'s active key."""
    key_id, key = keyring.active_key("provider", provider)
    cipher = AESSIV(key)
    prefix = f"{key_id}."
    associated = [provider.encode(), key_id.encode()]

    def encrypt(value: Any) -> str:
        sealed = cipher.encrypt(_text(value).encode(), associated)
        return prefix + _b64encode(sealed).rstrip(b"=").decode("ascii")

    return encrypt, key_id


def token(domain: str, value: Any, *, keyring: Keyring) -> str:
    """The pseudonym of `value` in sharing domain `domain`."""
    return token_function(keyring, domain)[0](value)


def encrypt(provider: str, value: Any, *, keyring: Keyring) -> str:
    """A deterministic, reversible token of `value` under `provider`'s key."""
    return encrypt_function(keyring, provider)[0](value)


def token_key_id(token_text: str) -> str:
    """The key id a token was made with (`k3` in `k3.q1Zx...`)."""
    key_id, dot, _ = token_text.partition(".")
    if not dot or not key_id:
        raise ReidentifyError("not a backbone token: expected <key id>.<base64url>")
    return key_id


def reidentify(provider: str, token_text: str, *, keyring: Keyring) -> str:
    """The value an `encrypt` token stands for; needs the provider's key that made it.

    Errors name the key id and provider only, never the token's content.
    """
    key_id = token_key_id(token_text)
    try:
        key = keyring.key_by_id("provider", provider, key_id)
    except KeyringError:
        raise ReidentifyError(f"token key {key_id} is not a key of provider {provider!r}; check --provider") from None
    body = token_text.split(".", 1)[1]
    try:
        sealed = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        plain = AESSIV(key).decrypt(sealed, [provider.encode(), key_id.encode()])
        return plain.decode()
    except (InvalidTag, binascii.Error, ValueError, UnicodeDecodeError):
        raise ReidentifyError(f"token does not decrypt under key {key_id} of provider {provider!r}: altered or not an encrypt token") from None
