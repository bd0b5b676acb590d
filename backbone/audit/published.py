"""Published public signing keys: the set a verifier checks the trail against.

`backbone audit keys --output FILE` writes them (the processors' checkpoint keys and each operator's
own key); `BACKBONE_AUDIT_KEYS_FILE` names such a file for `audit verify`, `audit subject` and the
console. With roles, no single keyring holds every signer's public key (an operator's keyring holds
only the operator's), so verification reads the published file and the local keyring's own keys
together: a key that is in neither is a forgery.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from backbone.errors import BackboneError, KeyringError
from backbone.files.private import make_private_dirs
from backbone.keys.keyring import Keyring, PublicKey

KEYS_FORMAT = "backbone-audit-keys/1"


def read_published(path: Path) -> list[PublicKey]:
    """The public keys in a file `write_published` (or `backbone audit keys --output`) wrote."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise BackboneError(f"published keys {path}: not a readable JSON file ({type(exc).__name__})") from None
    entries = data.get("keys") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise BackboneError(f"published keys {path}: expected {{\"format\": \"{KEYS_FORMAT}\", \"keys\": [...]}}")
    try:
        return [PublicKey.from_json(entry) for entry in entries]
    except BackboneError as exc:
        raise BackboneError(f"published keys {path}: {exc}") from None


def write_published(path: Path, keys: Iterable[PublicKey]) -> int:
    """Write `keys` (deduplicated by key id) for verifiers; returns how many."""
    unique = {key.key_id: key for key in keys}
    make_private_dirs(Path(path).parent)
    Path(path).write_text(json.dumps({"format": KEYS_FORMAT, "keys": [key.to_json() for key in unique.values()]}, indent=2) + "\n")
    return len(unique)


def verifier_keys(settings: Any, path: Path | None = None) -> list[PublicKey]:
    """The keys to verify with: the file `path` (or `BACKBONE_AUDIT_KEYS_FILE`) and the keyring's own
    public keys when this environment opens one. Neither: a clear error naming both ways."""
    found: dict[str, PublicKey] = {}
    chosen = path or getattr(settings, "audit_keys_file", None)
    if chosen is not None:
        found.update((key.key_id, key) for key in read_published(Path(chosen)))
    try:
        found.update((key.key_id, key) for key in Keyring.open(settings).public_keys() if key.key_id not in found)
    except KeyringError as exc:
        if not found:
            raise BackboneError(f"{exc}; or give the published public keys (--keys FILE or BACKBONE_AUDIT_KEYS_FILE, "
                                "which `backbone audit keys --output FILE` writes)") from None
    return list(found.values())
