"""Pseudonyms and reversible tokens.

- `token(domain, value)`: HMAC-SHA256 under the sharing domain's key, truncated to 128 bits,
  base64url, prefixed with the key id: `k3.q1Zx...`. Deterministic inside a domain (recipients in
  one domain can join on it) and unlinkable across domains (each domain has its own random key).
- `encrypt(provider, value, domain=, field=)`: AES-SIV under the provider's key, deterministic,
  prefixed with the key id, with the provider, the sharing domain and the field name as associated
  data: one value encrypts differently per domain and per field, so ciphertexts never link
  recipients of different domains. Only `reidentify` with that provider's key and the same domain
  and field reverses it.
- `event_id_function(keyring, domain, recipient)`: the recipient's own event id for a source event,
  a UUID made by HMAC under the domain key: deterministic (sinks deduplicate replays), unlinkable
  across domains and recipients.

The `*_function` factories return closures over the key for the hot path (no look-ups per call).
With a token provider (`backbone.keys.provider.TokenKeys`, e.g. PKCS#11) they close over the token's
keyed functions instead: the same HMAC message and AES-SIV associated data, so one format for both.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
from collections.abc import Callable
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from backbone.errors import KeyringError, ReidentifyError
from backbone.keys.keyring import Keyring
from backbone.keys.provider import TokenKeys

DIGEST_BYTES = 16  # 128 bits of HMAC-SHA256: collision-safe for any population, compact in tables
_b64encode = base64.urlsafe_b64encode
_IPAD = bytes(byte ^ 0x36 for byte in range(256))
_OPAD = bytes(byte ^ 0x5C for byte in range(256))
_URL_SAFE = bytes.maketrans(b"+/", b"-_")


def _text(value: Any) -> str:
    # Avro ints and strings pseudonymise alike: 42 and "42" are the same identifier.
    return value if isinstance(value, str) else str(value)


def _b64_22(digest: bytes) -> str:
    return binascii.b2a_base64(digest[:DIGEST_BYTES], newline=False)[:22].translate(_URL_SAFE).decode("ascii")


# Pseudonyms a token made lately, per domain function: one subject's events come in runs, and a
# token call costs ~40 us against ~4 us in process (bench.processor --key-provider both). The cache
# holds pseudonyms of values the processor reads anyway, never a key: it computes nothing new.
TOKEN_CACHE_SIZE = 1 << 16


def _token_function_on(provider: TokenKeys, domain: str, key_id: str | None) -> tuple[Callable[[Any], str], str]:
    mac, key_id = provider.hmac_function(domain, key_id)
    prefix, head = f"{key_id}.", domain.encode() + b"\x00"

    @functools.lru_cache(maxsize=TOKEN_CACHE_SIZE)
    def pseudonymise(value: Any) -> str:
        return prefix + _b64_22(mac(head + (value if isinstance(value, str) else str(value)).encode()))

    return pseudonymise, key_id


def token_function(keyring: Keyring | TokenKeys, domain: str, key_id: str | None = None) -> tuple[Callable[[Any], str], str]:
    """(function value -> pseudonym, key id) for `domain`'s active key (or, on a token provider, `key_id`)."""
    if isinstance(keyring, TokenKeys):
        return _token_function_on(keyring, domain, key_id)
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


def _associated(provider: str, domain: str, field: str, key_id: str) -> list[bytes]:
    return [provider.encode(), domain.encode(), field.encode(), key_id.encode()]


def encrypt_function(keyring: Keyring | TokenKeys, provider: str, domain: str, field: str,
                     key_id: str | None = None) -> tuple[Callable[[Any], str], str]:
    """(function value -> reversible token, key id) for `provider`'s active key (or, on a token
    provider, `key_id`), bound to the sharing `domain` and the `field` (AES-SIV associated data)."""
    if isinstance(keyring, TokenKeys):
        seal, key_id = keyring.siv_sealer(provider, lambda made_by: _associated(provider, domain, field, made_by), key_id)
        token_prefix = f"{key_id}."

        def encrypt_on_token(value: Any) -> str:
            return token_prefix + _b64encode(seal(_text(value).encode())).rstrip(b"=").decode("ascii")

        return encrypt_on_token, key_id
    key_id, key = keyring.active_key("provider", provider)
    cipher = AESSIV(key)
    prefix = f"{key_id}."
    associated = _associated(provider, domain, field, key_id)

    def encrypt(value: Any) -> str:
        sealed = cipher.encrypt(_text(value).encode(), associated)
        return prefix + _b64encode(sealed).rstrip(b"=").decode("ascii")

    return encrypt, key_id


def _uuid(digest: bytes) -> str:
    """The first 16 bytes of `digest` as a version-4-shaped UUID's text: `str(uuid.UUID(bytes=...))`
    with the version and variant bits set, formatted directly (uuid.UUID's constructor and `str` were
    ~8% of the router's time, py-spy; tests/test_processor_fast_paths.py checks they agree)."""
    text = digest[:16].hex()
    # version 4 layout: a valid UUID, though not random: nibble 12 is 4, nibble 16 is one of 8, 9, a, b
    return f"{text[:8]}-{text[8:12]}-4{text[13:16]}-{_VARIANT[text[16]]}{text[17:20]}-{text[20:32]}"


# the high nibble of byte 8 with the RFC 4122 variant bits set: (nibble & 0x3) | 0x8
_VARIANT = {f"{n:x}": f"{(n & 0x3) | 0x8:x}" for n in range(16)}


def event_id_function(keyring: Keyring | TokenKeys, domain: str, recipient: str) -> Callable[[Any], str]:
    """Source event id -> the recipient's event id (a version-4-shaped UUID string), by HMAC-SHA256
    under `domain`'s key with the recipient and a label mixed in, so it never equals a pseudonym."""
    label = f"event-id\x00{domain}\x00{recipient}\x00".encode()
    if isinstance(keyring, TokenKeys):
        # One token call per (domain, recipient) derives an event-id key the process then uses: event
        # ids are HMACs of random source UUIDs, which no dictionary reverses, so this key (unlike the
        # domain key) may live in memory; every event would otherwise cost a token call per recipient.
        mac, _ = keyring.hmac_function(domain)
        key = mac(b"event-id-key\x00" + label)
    else:
        _, key = keyring.active_key("domain", domain)
    block = key.ljust(64, b"\x00") if len(key) <= 64 else hashlib.sha256(key).digest().ljust(64, b"\x00")
    inner = hashlib.sha256(block.translate(_IPAD))
    inner.update(label)
    outer = hashlib.sha256(block.translate(_OPAD))
    copy_inner, copy_outer = inner.copy, outer.copy

    def event_id(source: Any) -> str:
        state = copy_inner()
        state.update(_text(source).encode())
        mac = copy_outer()
        mac.update(state.digest())
        return _uuid(mac.digest())

    return event_id


def token(domain: str, value: Any, *, keyring: Keyring) -> str:
    """The pseudonym of `value` in sharing domain `domain`."""
    return token_function(keyring, domain)[0](value)


def encrypt(provider: str, value: Any, *, keyring: Keyring, domain: str, field: str) -> str:
    """A deterministic, reversible token of `value` under `provider`'s key, for `field` in `domain`."""
    return encrypt_function(keyring, provider, domain, field)[0](value)


def token_key_id(token_text: str) -> str:
    """The key id a token was made with (`k3` in `k3.q1Zx...`)."""
    key_id, dot, _ = token_text.partition(".")
    if not dot or not key_id:
        raise ReidentifyError("not a backbone token: expected <key id>.<base64url>")
    return key_id


def reidentify(provider: str, token_text: str, *, keyring: Keyring | TokenKeys, domain: str, field: str) -> str:
    """The value an `encrypt` token stands for; needs the provider's key that made it and the
    sharing domain and field it was released under.

    Errors name the key id, provider, domain and field only, never the token's content.
    """
    key_id = token_key_id(token_text)
    key = b""
    if not isinstance(keyring, TokenKeys):
        try:
            key = keyring.key_by_id("provider", provider, key_id)
        except KeyringError:
            raise ReidentifyError(f"token key {key_id} is not a key of provider {provider!r}; check --provider") from None
    body = token_text.split(".", 1)[1]
    try:
        sealed = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        associated = _associated(provider, domain, field, key_id)
        if isinstance(keyring, TokenKeys):
            try:
                return keyring.siv_open(provider, key_id, sealed, associated).decode()
            except KeyringError:
                raise ReidentifyError(f"token key {key_id} is not a key of provider {provider!r}; check --provider") from None
        plain = AESSIV(key).decrypt(sealed, associated)
        return plain.decode()
    except (InvalidTag, binascii.Error, ValueError, UnicodeDecodeError):
        raise ReidentifyError(
            f"token does not decrypt under key {key_id} of provider {provider!r} for field {field!r} in domain {domain!r}: "
            "check --domain and --field, or the token was altered or is not an encrypt token"
        ) from None
