"""Key providers: where the keys are and who computes with them.

Two implement what the hot path and the CLI use:

- `file` (the default, `backbone.keys.keyring.Keyring`): keys in an encrypted JSON file, loaded into
  the process, which computes HMACs, AES-SIV and Ed25519 itself. Key ids `k<n>`.
- `pkcs11` (`backbone.keys.pkcs11.Pkcs11Provider`): keys generated in a PKCS#11 token (an HSM, a cloud
  KMS's PKCS#11 library, SoftHSM2 in tests) as sensitive, non-extractable objects; the token computes
  every keyed step. Key ids `h<n>`, so a token or signature says which provider made it and tokens
  of file keys stay readable after a move (the file keyring is kept beside the token for them).

`Keyring.open(settings)` returns the one `BACKBONE_KEY_PROVIDER` names. A token provider (`TokenKeys`)
offers keyed functions instead of key bytes; `backbone.keys.pseudonym` builds the same pseudonyms,
event ids and encrypt tokens on either.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

from backbone.keys.keyring import KeyInfo, KeyKind, PublicKey

FILE_PROVIDER = "file"
PKCS11_PROVIDER = "pkcs11"
PROVIDERS = (FILE_PROVIDER, PKCS11_PROVIDER)
# The first letter of a key id names the provider that holds the key.
KEY_ID_PREFIX = {FILE_PROVIDER: "k", PKCS11_PROVIDER: "h"}


class Signer(Protocol):
    """What signs a checkpoint: `Ed25519PrivateKey` (file) or a token's key (pkcs11)."""

    def sign(self, data: bytes) -> bytes: ...


@runtime_checkable
class TokenKeys(Protocol):
    """A provider whose keys never leave it: keyed functions, never key bytes."""

    def keys(self) -> list[KeyInfo]: ...

    def public_keys(self) -> list[PublicKey]: ...

    def signing_key(self, owner: str = ...) -> tuple[str, Signer]: ...

    def ensure(self, domains: Iterable[str] = (), providers: Iterable[str] = (), signers: Iterable[str] = ()) -> list[KeyInfo]: ...

    def rotate(self, kind: KeyKind, owner: str) -> KeyInfo: ...

    def hmac_function(self, domain: str, key_id: str | None = None) -> tuple[Callable[[bytes], bytes], str]:
        """(message -> HMAC-SHA256 under the domain's key, key id): the active key, or `key_id`."""
        ...

    def siv_sealer(self, provider: str, associated_for: Callable[[str], Sequence[bytes]],
                   key_id: str | None = None) -> tuple[Callable[[bytes], bytes], str]:
        """(plaintext -> AES-SIV output, key id) under the provider's active key (or `key_id`), with
        `associated_for(key_id)` as associated data."""
        ...

    def siv_open(self, provider: str, key_id: str, sealed: bytes, associated: Sequence[bytes]) -> bytes:
        """AES-SIV decryption under key `key_id`; raises `KeyringError` for a key not of `provider`
        and `ValueError` when the SIV does not check."""
        ...


def is_token_provider(keys: Any) -> bool:
    """Whether `keys` computes with keys it never hands out (a `TokenKeys`)."""
    return isinstance(keys, TokenKeys)


def open_token_provider(settings: Any) -> TokenKeys:
    """The provider `settings.key_provider` names when it is not the file keyring."""
    from backbone.keys.pkcs11 import Pkcs11Provider

    return Pkcs11Provider.open(settings)
