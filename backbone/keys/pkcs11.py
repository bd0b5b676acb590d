"""The PKCS#11 key provider: keys generated in a token (an HSM, a cloud KMS's PKCS#11 library, SoftHSM2)
as sensitive, non-extractable objects, and every keyed step computed by the token:

- domain keys: generic secrets, HMAC-SHA256 by `CKM_SHA256_HMAC` (pseudonyms, recipient event ids);
- provider keys: two AES-256 keys, K1 for `CKM_AES_CMAC` and K2 for `CKM_AES_CTR`, composed into
  RFC 5297 AES-SIV by `backbone.keys.siv` (deterministic encryption, `reidentify` checks the SIV);
- signing keys: Ed25519 key pairs, `CKM_EDDSA` (audit checkpoints); the public half is read back.

Objects are labelled `backbone <kind> <owner> <key id> <part> <created>` with CKA_ID the key id; key
ids are `h<n>` and the highest number of a kind and owner is the active key (rotation adds one).
Keys of the file keyring (`k<n>`), when a keyring file is configured beside the token, stay usable
for reading old tokens and verifying old checkpoints; new tokens use the token's keys only.

Settings: BACKBONE_PKCS11_MODULE, BACKBONE_PKCS11_TOKEN_LABEL, BACKBONE_PKCS11_PIN or
BACKBONE_PKCS11_PIN_FILE. The PIN never appears in a message or log line.
"""

from __future__ import annotations

import ctypes
import hashlib
import hmac
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from backbone.errors import KeyringError
from backbone.keys.keyring import KEY_BYTES, PROCESSOR_SIGNER, KeyInfo, KeyKind, Keyring, PublicKey
from backbone.keys.master import master_key_from_settings
from backbone.keys.siv import Siv

log = logging.getLogger(__name__)

HSM_PREFIX = "h"
LABEL_PREFIX = "backbone"
ED25519_PARAMS = bytes.fromhex("06032b6570")  # DER of the OID 1.3.101.112 (Ed25519), CKA_EC_PARAMS
INSTALL_HELP = "install python-pkcs11 (pip install 'data-sharing-backbone[hsm]')"
_libraries: dict[str, Any] = {}  # one loaded module per path and process (C_Initialize once)
# PKCS#11 logs in per process, not per session: one session (and its lock) per token and process,
# with a digest of the PIN that opened it so a later open with another PIN is refused too.
_sessions: dict[tuple[str, str], tuple[Any, threading.Lock, bytes]] = {}


def _pkcs11() -> Any:
    try:
        import pkcs11
    except ImportError:
        raise KeyringError(f"BACKBONE_KEY_PROVIDER=pkcs11 needs the python-pkcs11 package; {INSTALL_HELP}") from None
    return pkcs11


def read_pin(settings: Any) -> str:
    """The user PIN from `BACKBONE_PKCS11_PIN` or `BACKBONE_PKCS11_PIN_FILE`, or a clear error."""
    if settings.pkcs11_pin is not None:
        return settings.pkcs11_pin.get_secret_value()
    if settings.pkcs11_pin_file is not None:
        try:
            return Path(settings.pkcs11_pin_file).read_text().strip()
        except OSError as exc:
            raise KeyringError(f"cannot read PKCS#11 PIN file {settings.pkcs11_pin_file} ({exc.strerror})") from None
    raise KeyringError("BACKBONE_KEY_PROVIDER=pkcs11 needs the token's user PIN: set BACKBONE_PKCS11_PIN_FILE (a file "
                       "holding it) or BACKBONE_PKCS11_PIN")


def open_session(module: str, label: str, pin: str) -> tuple[Any, threading.Lock]:
    """A read-write user session on the token labelled `label` (shared in this process) and the lock
    that serialises its calls; errors name the fix, never the PIN."""
    digest = hashlib.sha256(pin.encode()).digest()
    opened = _sessions.get((module, label))
    if opened is not None:
        if not hmac.compare_digest(opened[2], digest):
            raise KeyringError(f"token {label!r} refused the user PIN (PinIncorrect); check BACKBONE_PKCS11_PIN_FILE or BACKBONE_PKCS11_PIN")
        return opened[0], opened[1]
    pkcs11 = _pkcs11()
    try:
        library = _libraries.get(module) or _libraries.setdefault(module, pkcs11.lib(module))
    except (RuntimeError, OSError) as exc:
        raise KeyringError(f"cannot load PKCS#11 module {module} ({type(exc).__name__}); set BACKBONE_PKCS11_MODULE "
                           "to the HSM's PKCS#11 library (SoftHSM2: /usr/lib/softhsm/libsofthsm2.so)") from None
    try:
        token = library.get_token(token_label=label)
    except pkcs11.exceptions.NoSuchToken:
        raise KeyringError(f"no PKCS#11 token labelled {label!r} in {module}; initialise one (SoftHSM2: "
                           f"softhsm2-util --init-token --free --label {label}) or set BACKBONE_PKCS11_TOKEN_LABEL") from None
    try:
        session = token.open(user_pin=pin, rw=True)
    except (pkcs11.exceptions.PinIncorrect, pkcs11.exceptions.PinLenRange, pkcs11.exceptions.PinLocked) as exc:
        raise KeyringError(f"token {label!r} refused the user PIN ({type(exc).__name__}); check BACKBONE_PKCS11_PIN_FILE "
                           "or BACKBONE_PKCS11_PIN") from None
    _sessions[(module, label)] = (session, threading.Lock(), digest)
    return session, _sessions[(module, label)][1]


class _TokenSigner:
    """An Ed25519 private key in the token: `sign` as `Ed25519PrivateKey.sign` (64-byte signature)."""

    __slots__ = ("_key", "_lock", "_mechanism")

    def __init__(self, key: Any, lock: threading.Lock, mechanism: Any) -> None:
        self._key, self._lock, self._mechanism = key, lock, mechanism

    def sign(self, data: bytes) -> bytes:
        with self._lock:
            return bytes(self._key.sign(data, mechanism=self._mechanism))

    def __repr__(self) -> str:
        return "<token signing key>"


class Pkcs11Provider:
    """Keys in one PKCS#11 token (see the module docstring); `beside` is the file keyring kept for
    keys made before the move (read only for domains and providers). Not fork-safe: open one per
    process. Calls into the token are serialised (one session)."""

    def __init__(self, session: Any, lock: threading.Lock, label: str, beside: Keyring | None = None) -> None:
        self._p = _pkcs11()
        self._session = session
        self._label = label
        self._beside = beside
        self._lock = lock
        self._objects: dict[str, dict[str, Any]] = {}  # key id -> part -> object
        self._infos: dict[str, KeyInfo] = {}
        self._scan()

    @classmethod
    def open(cls, settings: Any) -> Pkcs11Provider:
        if not settings.pkcs11_module or not settings.pkcs11_token_label:
            raise KeyringError("BACKBONE_KEY_PROVIDER=pkcs11 needs BACKBONE_PKCS11_MODULE (the PKCS#11 library, SoftHSM2: "
                               "/usr/lib/softhsm/libsofthsm2.so) and BACKBONE_PKCS11_TOKEN_LABEL")
        session, lock = open_session(str(settings.pkcs11_module), settings.pkcs11_token_label, read_pin(settings))
        beside = None
        path = Path(settings.keyring_path) if settings.keyring_path else None
        if path is not None and path.exists() and (settings.master_key is not None or settings.master_key_file is not None):
            beside = Keyring.load(path, master_key_from_settings(settings))
        return cls(session, lock, settings.pkcs11_token_label, beside)

    # reading -----------------------------------------------------------------------------------
    def _scan(self) -> None:
        p = self._p
        objects: dict[str, dict[str, Any]] = {}
        infos: dict[str, KeyInfo] = {}
        with self._lock:
            for item in self._session.get_objects():
                try:
                    label = item[p.Attribute.LABEL]
                except p.exceptions.PKCS11Error:
                    continue
                words = label.split(" ")
                if len(words) != 6 or words[0] != LABEL_PREFIX or not words[3].startswith(HSM_PREFIX):
                    continue
                _, kind, owner, key_id, part, created = words
                if kind not in KEY_BYTES:
                    continue
                part_name = part + ("-public" if item.object_class == p.ObjectClass.PUBLIC_KEY else "")
                objects.setdefault(key_id, {})[part_name] = item
                infos[key_id] = KeyInfo(kind, owner, key_id, datetime.fromisoformat(created), False)  # type: ignore[arg-type]
        newest: dict[tuple[str, str], str] = {}
        for key_id, info in sorted(infos.items(), key=lambda entry: _number(entry[0])):
            newest[(info.kind, info.owner)] = key_id
        self._objects = objects
        self._infos = {key_id: replace(info, active=newest[(info.kind, info.owner)] == key_id) for key_id, info in infos.items()}

    def keys(self) -> list[KeyInfo]:
        """The token's keys, then the file keyring's (active only where the token has none of its kind and owner)."""
        found = list(self._infos.values())
        held = {(info.kind, info.owner) for info in found}
        for info in self._beside.keys() if self._beside else []:
            found.append(replace(info, active=info.active and (info.kind, info.owner) not in held))
        return sorted(found, key=lambda info: (info.kind, info.owner, info.key_id[:1], _number(info.key_id)))

    def _token_key(self, kind: KeyKind, owner: str, key_id: str | None) -> tuple[str, dict[str, Any]]:
        if key_id is None:
            key_id = next((info.key_id for info in self._infos.values() if info.kind == kind and info.owner == owner and info.active), None)
            if key_id is None:
                flag = {"domain": "--domain", "provider": "--provider"}.get(kind, "")
                raise KeyringError(f"PKCS#11 token {self._label!r} has no key for {kind} {owner!r}; run `backbone keys init` "
                                   f"(or `backbone keys rotate {flag} {owner}`) with BACKBONE_KEY_PROVIDER=pkcs11")
        info = self._infos.get(key_id)
        if info is None or info.kind != kind or info.owner != owner:
            raise KeyringError(f"key {key_id!r} is not a key of {kind} {owner!r} on PKCS#11 token {self._label!r}")
        return key_id, self._objects[key_id]

    def _file_key(self, kind: KeyKind, owner: str, key_id: str) -> bytes:
        if self._beside is None:
            raise KeyringError(f"key {key_id!r} is a file-keyring key and no keyring file is configured beside the token; "
                               "set BACKBONE_KEYRING_PATH and the master key to read tokens made before the move")
        return self._beside.key_by_id(kind, owner, key_id)

    def key_by_id(self, kind: KeyKind, owner: str, key_id: str) -> bytes:
        raise KeyringError(f"key {key_id!r} of {kind} {owner!r} stays in PKCS#11 token {self._label!r}: its value cannot be read")

    def active_key(self, kind: KeyKind, owner: str) -> tuple[str, bytes]:
        return self.key_by_id(kind, owner, self._token_key(kind, owner, None)[0])  # type: ignore[return-value]

    # keyed functions -----------------------------------------------------------------------------
    def hmac_function(self, domain: str, key_id: str | None = None) -> tuple[Callable[[bytes], bytes], str]:
        if key_id is not None and not key_id.startswith(HSM_PREFIX):
            key = self._file_key("domain", domain, key_id)
            return (lambda message: hmac.digest(key, message, hashlib.sha256)), key_id
        key_id, parts = self._token_key("domain", domain, key_id)
        secret, mechanism, lock = parts["hmac"], self._p.Mechanism.SHA256_HMAC, self._lock

        def mac(message: bytes) -> bytes:
            with lock:
                return bytes(secret.sign(message, mechanism=mechanism))

        return mac, key_id

    def _siv(self, parts: dict[str, Any]) -> Siv:
        p, lock = self._p, self._lock
        k1, k2 = parts["cmac"], parts["ctr"]

        def cmac(message: bytes) -> bytes:
            with lock:
                return bytes(k1.sign(message, mechanism=p.Mechanism.AES_CMAC))

        def ctr(counter: bytes, data: bytes) -> bytes:
            with lock:  # CK_AES_CTR_PARAMS raw: the whole 128-bit block counts (RFC 5297 increments it all)
                return bytes(k2.encrypt(data, mechanism=p.Mechanism.AES_CTR, mechanism_param=_ctr_params(counter)))

        return Siv(cmac, ctr)

    def siv_sealer(self, provider: str, associated_for: Callable[[str], Sequence[bytes]],
                   key_id: str | None = None) -> tuple[Callable[[bytes], bytes], str]:
        if key_id is not None and not key_id.startswith(HSM_PREFIX):
            cipher, associated = AESSIV(self._file_key("provider", provider, key_id)), list(associated_for(key_id))
            return (lambda plaintext: cipher.encrypt(plaintext, associated)), key_id
        key_id, parts = self._token_key("provider", provider, key_id)
        return self._siv(parts).sealer(associated_for(key_id)), key_id

    def siv_open(self, provider: str, key_id: str, sealed: bytes, associated: Sequence[bytes]) -> bytes:
        if not key_id.startswith(HSM_PREFIX):
            return AESSIV(self._file_key("provider", provider, key_id)).decrypt(sealed, list(associated))
        return self._siv(self._token_key("provider", provider, key_id)[1]).open(sealed, associated)

    def signing_key(self, owner: str = PROCESSOR_SIGNER) -> tuple[str, _TokenSigner | Any]:
        """The token's active signing key of `owner`, else the file keyring's (an operator's own key)."""
        if not any(info.kind == "signing" and info.owner == owner for info in self._infos.values()) and self._beside is not None:
            return self._beside.signing_key(owner)
        key_id, parts = self._token_key("signing", owner, None)
        return key_id, _TokenSigner(parts["ed25519"], self._lock, self._p.Mechanism.EDDSA)

    def public_keys(self) -> list[PublicKey]:
        found = []
        for info in self.keys():
            if info.kind == "signing" and info.key_id in self._objects:
                with self._lock:
                    point = bytes(self._objects[info.key_id]["ed25519-public"][self._p.Attribute.EC_POINT])
                found.append(PublicKey(info.key_id, info.owner, info.created, info.active, _raw_point(point)))
        if self._beside is not None:
            actives = {(info.key_id, info.active) for info in self.keys()}
            found += [replace(key, active=(key.key_id, True) in actives) for key in self._beside.public_keys()]
        return found

    # changes -----------------------------------------------------------------------------------
    def ensure(self, domains: Iterable[str] = (), providers: Iterable[str] = (), signers: Iterable[str] = ()) -> list[KeyInfo]:
        created = []
        for kind, owners in (("domain", domains), ("provider", providers), ("signing", signers)):
            for owner in owners:
                if not any(info.kind == kind and info.owner == owner for info in self._infos.values()):
                    created.append(self._create(kind, owner))  # type: ignore[arg-type]
        return created

    def rotate(self, kind: KeyKind, owner: str) -> KeyInfo:
        return self._create(kind, owner)

    def _create(self, kind: KeyKind, owner: str) -> KeyInfo:
        if kind not in KEY_BYTES:
            raise KeyringError(f"unknown key kind {kind!r}; expected domain, provider or signing")
        if not owner or not owner.replace("_", "").replace("-", "").isalnum():
            raise KeyringError(f"invalid {kind} name {owner!r}: use letters, digits, - and _")
        p = self._p
        self._scan()  # another process may have added keys since
        number = max((_number(key_id) for key_id in self._infos), default=0) + 1
        key_id, created = f"{HSM_PREFIX}{number}", datetime.now(UTC).replace(microsecond=0)
        label = f"{LABEL_PREFIX} {kind} {owner} {key_id} {{part}} {created.isoformat()}"
        # Sensitive and never extractable, private to the logged-in user, kept on the token.
        kept = {p.Attribute.SENSITIVE: True, p.Attribute.EXTRACTABLE: False, p.Attribute.PRIVATE: True}
        sign, crypt = p.MechanismFlag.SIGN | p.MechanismFlag.VERIFY, p.MechanismFlag.ENCRYPT | p.MechanismFlag.DECRYPT
        with self._lock:
            if kind == "domain":
                self._session.generate_key(p.KeyType.GENERIC_SECRET, 256, id=key_id.encode(), label=label.format(part="hmac"),
                                           store=True, capabilities=sign, template=kept)
            elif kind == "provider":
                for part, capabilities in (("cmac", sign), ("ctr", crypt)):
                    self._session.generate_key(p.KeyType.AES, 256, id=key_id.encode(), label=label.format(part=part),
                                               store=True, capabilities=capabilities, template=kept)
            else:
                parameters = self._session.create_domain_parameters(p.KeyType.EC_EDWARDS, {p.Attribute.EC_PARAMS: ED25519_PARAMS}, local=True)
                parameters.generate_keypair(id=key_id.encode(), label=label.format(part="ed25519"), store=True, capabilities=sign,
                                            private_template=kept)
        self._scan()
        log.info("created %s key %s for %s on PKCS#11 token %s", kind, key_id, owner, self._label)
        return self._infos[key_id]

    def __repr__(self) -> str:
        return f"Pkcs11Provider(token {self._label!r}, {len(self._infos)} keys)"

    def __reduce__(self) -> Any:
        raise TypeError("a PKCS#11 session cannot be pickled; open the provider in each process")


def _number(key_id: str) -> int:
    return int(key_id[1:]) if key_id[1:].isdigit() else 0


def _raw_point(point: bytes) -> bytes:
    """The 32 raw bytes of an Ed25519 CKA_EC_POINT (a DER OCTET STRING, or raw on some tokens)."""
    if len(point) == 34 and point[:2] == b"\x04\x20":
        return point[2:]
    if len(point) == 32:
        return point
    raise KeyringError("the token returned an Ed25519 public key in an unexpected encoding")


class _CtrParams(ctypes.Structure):
    """CK_AES_CTR_PARAMS {CK_ULONG ulCounterBits; CK_BYTE cb[16]} in this platform's layout."""

    _fields_ = (("bits", ctypes.c_ulong), ("cb", ctypes.c_ubyte * 16))


def _ctr_params(counter: bytes) -> bytes:
    return bytes(_CtrParams(128, (ctypes.c_ubyte * 16).from_buffer_copy(counter)))
