"""The keyring: per-domain HMAC keys (pseudonyms), per-provider AES-SIV keys (reversible
encryption) and Ed25519 signing keys (the processors' audit checkpoints), each with a key id that
the tokens and signatures it makes carry, so keys rotate without breaking old tokens or making old
checkpoints unverifiable (rotated signing keys keep their public half on record).

On disk the keyring is a JSON file whose key material is wrapped, key by key, with AES-256-GCM under
a master key (`BACKBONE_MASTER_KEY`, base64, or `BACKBONE_MASTER_KEY_FILE`); the key's metadata is
the GCM associated data, so metadata cannot be swapped between keys. Key bytes never appear in
reprs, logs or error messages.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import json
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from backbone.errors import KeyringError
from backbone.files.private import make_private_dirs, private_directory
from backbone.keys.master import master_key_from_settings

log = logging.getLogger(__name__)

KeyKind = Literal["domain", "provider", "signing"]

# Domain of the subject pseudonyms in the audit trail, so oversight can find every disclosure about
# one person; every keyring has it besides the sharing domains the charter names.
OVERSIGHT_DOMAIN = "oversight"
BUILT_IN_DOMAINS: tuple[str, ...] = (OVERSIGHT_DOMAIN,)
# Owner of the signing key the processors sign audit checkpoints with: every worker sharing a
# keyring signs with its active key; each checkpoint names the key id.
PROCESSOR_SIGNER = "processor"
# Signed the checkpoint that sealed each operator action before operators had keys of their own
# (kept for verifying those; `backbone.audit.anchors` names them as signed by no one in particular).
OPERATIONS_SIGNER = "operations"
# Each operator's own signing key, which seals the actions they record (`backbone.audit.operations`):
# owner `operator:<identity>`, the identity as BACKBONE_IDENTITY names it (`operator_signer`).
OPERATOR_SIGNER_PREFIX = "operator:"
_IDENTITY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9@._-]{0,127}$")  # as settings.identity
SIGNING_ALGORITHM = "Ed25519"

FORMAT = "backbone-keyring/1"
# HMAC-SHA256; AES-256-SIV takes 512 bits; an Ed25519 private key is a 32-byte seed
KEY_BYTES: dict[str, int] = {"domain": 32, "provider": 64, "signing": 32}
_CHECK = b"backbone keyring master key check"


@dataclass(slots=True, frozen=True)
class KeyInfo:
    """What may be shown about a key: never its bytes."""

    kind: KeyKind
    owner: str  # the sharing domain (domain keys) or provider id (provider keys)
    key_id: str
    created: datetime
    active: bool


@dataclass(slots=True, frozen=True)
class PublicKey:
    """The public half of a signing key, which anyone may hold to verify checkpoints."""

    key_id: str
    owner: str
    created: datetime
    active: bool
    public: bytes  # the raw 32-byte Ed25519 public key

    def verifier(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self.public)

    def to_json(self) -> dict[str, Any]:
        return {"key_id": self.key_id, "owner": self.owner, "algorithm": SIGNING_ALGORITHM, "created": self.created.isoformat(),
                "active": self.active, "public": base64.b64encode(self.public).decode("ascii")}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PublicKey:
        """Read one entry of `to_json`; a malformed entry raises `KeyringError`."""
        try:
            if data.get("algorithm", SIGNING_ALGORITHM) != SIGNING_ALGORITHM:
                raise ValueError("algorithm")
            public = base64.b64decode(data["public"], validate=True)
            Ed25519PublicKey.from_public_bytes(public)
            return cls(str(data["key_id"]), str(data.get("owner", "")), datetime.fromisoformat(data["created"]) if data.get("created")
                       else datetime.fromtimestamp(0, UTC), bool(data.get("active", False)), public)
        except (KeyError, ValueError, TypeError, binascii.Error):
            raise KeyringError("not an Ed25519 public key entry (key_id, algorithm Ed25519, public: base64 of 32 bytes)") from None


class _Secret:
    """Key bytes behind a repr that never shows them."""

    __slots__ = ("_value",)

    def __init__(self, value: bytes) -> None:
        self._value = value

    def reveal(self) -> bytes:
        return self._value

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__

    def __reduce__(self) -> Any:  # keys do not leave the process through pickle
        raise TypeError("key material cannot be pickled")


class Keyring:
    """Keys by id, with one active key per domain and per provider; asking for a missing key
    raises `KeyringError` naming the fix."""

    def __init__(self) -> None:
        self._infos: dict[str, KeyInfo] = {}
        self._secrets: dict[str, _Secret] = {}

    # construction ------------------------------------------------------------------------------
    @classmethod
    def generate(cls, domains: Iterable[str] = (), providers: Iterable[str] = (), signers: Iterable[str] = ()) -> Keyring:
        """An in-memory keyring with a fresh key for each domain, provider and signer."""
        keyring = cls()
        keyring.ensure(domains, providers, signers)
        return keyring

    @classmethod
    def for_charter(cls, charter: Any) -> Keyring:
        """A fresh keyring with a key for every sharing domain and provider a `Charter` names, for
        the built-in domains (oversight) and the processors' checkpoint signing key."""
        return cls.generate(domains={*BUILT_IN_DOMAINS, *charter.domains()}, providers=charter.providers(),
                            signers=(PROCESSOR_SIGNER, OPERATIONS_SIGNER))

    @classmethod
    def load(cls, path: Path, master_key: bytes) -> Keyring:
        """Open a keyring file; a missing file or wrong master key raises `KeyringError`."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise KeyringError(f"keyring {path} does not exist; run `backbone keys init` (or set BACKBONE_KEYRING_PATH)") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise KeyringError(f"keyring {path} is not a readable keyring file ({type(exc).__name__})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise KeyringError(f"keyring {path} is not a {FORMAT} file")
        aead = AESGCM(master_key)
        try:
            _unwrap(aead, data["check"], b"check")
        except (InvalidTag, KeyError, ValueError, TypeError):
            raise KeyringError(
                f"the master key does not open keyring {path}: set BACKBONE_MASTER_KEY or BACKBONE_MASTER_KEY_FILE"
                " to the master key it was created with"
            ) from None
        keyring = cls()
        try:
            for item in data["keys"]:
                info = KeyInfo(item["kind"], item["owner"], item["key_id"], datetime.fromisoformat(item["created"]), bool(item["active"]))
                secret = _unwrap(aead, item["material"], _associated(info))
                keyring._add(info, secret)
        except InvalidTag:
            raise KeyringError(f"keyring {path} was altered: a key does not match its metadata; restore it from backup") from None
        except (KeyError, ValueError, TypeError):
            raise KeyringError(f"keyring {path} has a malformed key entry; restore it from backup") from None
        return keyring

    @classmethod
    def open(cls, settings: Any) -> Keyring:
        """The keyring named by the settings (`BACKBONE_KEYRING_PATH`, master key from env or file);
        with `BACKBONE_KEY_PROVIDER=pkcs11` the token provider instead (`backbone.keys.provider`)."""
        if getattr(settings, "key_provider", "file") != "file":
            from backbone.keys.provider import open_token_provider

            return open_token_provider(settings)  # type: ignore[return-value]
        return cls.load(Path(settings.keyring_path), master_key_from_settings(settings))

    def save(self, path: Path, master_key: bytes) -> None:
        """Write the keyring, wrapped under `master_key`, atomically and owner-readable only."""
        path = Path(path)
        aead = AESGCM(master_key)
        data = {
            "format": FORMAT,
            "cipher": "AES-256-GCM",
            "check": _wrap(aead, _CHECK, b"check"),
            "keys": [
                {
                    "kind": info.kind,
                    "owner": info.owner,
                    "key_id": info.key_id,
                    "created": info.created.isoformat(),
                    "active": info.active,
                    "material": _wrap(aead, self._secrets[info.key_id].reveal(), _associated(info)),
                }
                for info in self._infos.values()
            ],
        }
        make_private_dirs(path.parent)
        temporary = path.with_name(path.name + ".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2)
        os.replace(temporary, path)

    # changes -----------------------------------------------------------------------------------
    def ensure(self, domains: Iterable[str] = (), providers: Iterable[str] = (), signers: Iterable[str] = ()) -> list[KeyInfo]:
        """Create a key for every domain, provider and signer that has none; returns the new keys."""
        created = []
        for kind, owners in (("domain", domains), ("provider", providers), ("signing", signers)):
            for owner in owners:
                if self._active(kind, owner) is None:
                    created.append(self._create(kind, owner))
        return created

    def rotate(self, kind: KeyKind, owner: str) -> KeyInfo:
        """Make a new active key for `owner`; older keys stay for reading old tokens (and, for
        signing keys, their public halves for verifying old checkpoints)."""
        for key_id, info in list(self._infos.items()):
            if info.kind == kind and info.owner == owner and info.active:
                self._infos[key_id] = replace(info, active=False)
        return self._create(kind, owner)

    # reading -----------------------------------------------------------------------------------
    def keys(self) -> list[KeyInfo]:
        """Metadata of every key, by kind, owner and creation."""
        return sorted(self._infos.values(), key=lambda info: (info.kind, info.owner, _key_number(info.key_id)))

    def active_key(self, kind: KeyKind, owner: str) -> tuple[str, bytes]:
        """(key id, key bytes) of the key new tokens for `owner` use."""
        key_id = self._active(kind, owner)
        if key_id is None:
            if kind == "signing":
                raise KeyringError(f"the keyring has no signing key for {owner!r}; run `backbone audit rotate-key` to create one")
            flag = "--domain" if kind == "domain" else "--provider"
            raise KeyringError(f"the keyring has no key for {kind} {owner!r}; run `backbone keys rotate {flag} {owner}` or `backbone keys init`")
        return key_id, self._secrets[key_id].reveal()

    def key_by_id(self, kind: KeyKind, owner: str, key_id: str) -> bytes:
        """The bytes of key `key_id`, which must belong to `owner` (old keys included)."""
        info = self._infos.get(key_id)
        if info is None or info.kind != kind or info.owner != owner:
            raise KeyringError(f"key {key_id!r} is not a key of {kind} {owner!r} in this keyring")
        return self._secrets[key_id].reveal()

    def signing_key(self, owner: str = PROCESSOR_SIGNER) -> tuple[str, Ed25519PrivateKey]:
        """(key id, private key) of `owner`'s active signing key."""
        key_id, seed = self.active_key("signing", owner)
        return key_id, Ed25519PrivateKey.from_private_bytes(seed)

    def public_keys(self) -> list[PublicKey]:
        """The public half of every signing key, rotated ones included: what verifiers need."""
        found = []
        for info in self.keys():
            if info.kind == "signing":
                private = Ed25519PrivateKey.from_private_bytes(self._secrets[info.key_id].reveal())
                public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
                found.append(PublicKey(info.key_id, info.owner, info.created, info.active, public))
        return found

    def only(self, keep: Any) -> Keyring:
        """A new keyring holding the keys (with their ids and states) for which `keep(info)` is true:
        how one role's keyring is cut from the keys generated for all (`backbone.keys.roles`)."""
        chosen = Keyring()
        for key_id, info in self._infos.items():
            if keep(info):
                chosen._add(info, self._secrets[key_id])
        return chosen

    def adopt(self, other: Keyring) -> list[KeyInfo]:
        """Take `other`'s keys: those this keyring lacks are added, those it holds take `other`'s
        state (active or not); returns the keys added. A key id naming different keys is refused."""
        added = []
        for key_id, info in other._infos.items():
            mine = self._infos.get(key_id)
            if mine is None:
                self._add(info, other._secrets[key_id])
                added.append(info)
            elif (mine.kind, mine.owner) != (info.kind, info.owner) or self._secrets[key_id].reveal() != other._secrets[key_id].reveal():
                raise KeyringError(f"key id {key_id} names different keys in the two keyrings; they do not come from one another")
            else:
                self._infos[key_id] = info
        return added

    def __repr__(self) -> str:
        kinds = [info.kind for info in self._infos.values()]
        return (f"Keyring({kinds.count('domain')} domain keys, {kinds.count('provider')} provider keys, "
                f"{kinds.count('signing')} signing keys)")

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("a keyring cannot be pickled; load it from its file in each process")

    # internals ---------------------------------------------------------------------------------
    def _active(self, kind: str, owner: str) -> str | None:
        for key_id, info in self._infos.items():
            if info.kind == kind and info.owner == owner and info.active:
                return key_id
        return None

    def _create(self, kind: KeyKind, owner: str) -> KeyInfo:
        if kind not in KEY_BYTES:
            raise KeyringError(f"unknown key kind {kind!r}; expected domain, provider or signing")
        if not _valid_owner(kind, owner):
            raise KeyringError(f"invalid {kind} name {owner!r}: use letters, digits, - and _")
        number = max((_key_number(key_id) for key_id in self._infos), default=0) + 1
        # A signing key's id is published beside other keyrings' (processors', each operator's): a random
        # suffix keeps ids of keyrings made apart from colliding in a verifier's map of public keys.
        key_id = f"k{number}" if kind != "signing" else f"k{number}-{os.urandom(4).hex()}"
        info = KeyInfo(kind, owner, key_id, datetime.now(UTC), True)
        self._add(info, _Secret(os.urandom(KEY_BYTES[kind])))
        return info

    def _add(self, info: KeyInfo, secret: _Secret) -> None:
        if info.key_id in self._infos:
            raise KeyringError(f"duplicate key id {info.key_id!r} in keyring")
        self._infos[info.key_id] = info
        self._secrets[info.key_id] = secret


def operator_signer(identity: str) -> str:
    """The owner of the signing key of operator `identity` (their BACKBONE_IDENTITY)."""
    if not _IDENTITY.match(identity or ""):
        raise KeyringError(f"invalid operator identity {identity[:64]!r}: letters, digits, @ . _ - (as BACKBONE_IDENTITY)")
    return OPERATOR_SIGNER_PREFIX + identity


def _valid_owner(kind: str, owner: str) -> bool:
    if kind == "signing" and owner.startswith(OPERATOR_SIGNER_PREFIX):
        return bool(_IDENTITY.match(owner.removeprefix(OPERATOR_SIGNER_PREFIX)))
    return bool(owner) and owner.replace("_", "").replace("-", "").isalnum()


def _key_number(key_id: str) -> int:
    digits = key_id[1:].partition("-")[0]  # k7, or k7-<random> for a signing key
    return int(digits) if digits.isdigit() else 0


def _associated(info: KeyInfo) -> bytes:
    return f"{info.kind}\x00{info.owner}\x00{info.key_id}".encode()


def _wrap(aead: AESGCM, plaintext: bytes, associated: bytes) -> str:
    nonce = os.urandom(12)
    return base64.b64encode(nonce + aead.encrypt(nonce, plaintext, associated)).decode("ascii")


def _unwrap(aead: AESGCM, text: str, associated: bytes) -> _Secret:
    raw = base64.b64decode(text)
    return _Secret(aead.decrypt(raw[:12], raw[12:], associated))


def record_reidentification(data_dir: Path, provider: str, key_id: str, outcome: str, reason: str, actor: str,
                            token_sha256: str) -> Path:
    """Append one line to `<data dir>/reidentify.log`: when, which provider key, who (the configured
    identity), why, the outcome and the token's SHA-256.

    Never the token or the value: the log says that someone looked and at what, not what they saw.
    """
    path = private_directory(Path(data_dir)) / "reidentify.log"
    entry = {
        "time": datetime.now(UTC).isoformat(),
        "provider": provider,
        "key_id": key_id,
        "user": actor,
        "outcome": outcome,
        "reason": reason,
        "token_sha256": token_sha256,
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as handle:
        handle.write(json.dumps(entry) + "\n")
    return path


def ensure_signer(settings: Any, keyring: Keyring, signer: str) -> Keyring:
    """`keyring` if it holds `signer`'s signing key; else the keyring file (`settings.keyring_path`)
    with one added, under a lock: processes sharing the file add one key between them."""
    try:
        keyring.signing_key(signer)
        return keyring
    except KeyringError:
        if not isinstance(keyring, Keyring):  # a token provider: the key is made on the token
            keyring.ensure(signers=[signer])
            return keyring
    path = Path(settings.keyring_path)
    master = master_key_from_settings(settings)
    try:
        fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            current = Keyring.load(path, master)
            if current.ensure(signers=[signer]):
                current.save(path, master)
                log.info("created the %s audit signing key in keyring %s", signer, path)
        finally:
            os.close(fd)
    except OSError as exc:
        raise KeyringError(f"keyring {path} has no {signer} signing key and cannot be written ({exc.strerror}); "
                           "run `backbone audit rotate-key` where it is writable") from None
    return current
