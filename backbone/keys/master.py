"""The master key a keyring file is encrypted under: made, encoded, read from settings or a file
(`BACKBONE_MASTER_KEY`, base64, or `BACKBONE_MASTER_KEY_FILE`), written to a file only its owner reads.
Errors name where a key came from, never its value."""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path
from typing import Any

from backbone.errors import KeyringError
from backbone.files.private import create_private_file, make_private_dirs

MASTER_KEY_BYTES = 32
MASTER_KEY_HELP = (
    "set BACKBONE_MASTER_KEY (base64 of 32 random bytes) or BACKBONE_MASTER_KEY_FILE (a file holding it); "
    "for the embedded demo, `backbone keys init --new-master-key-file .backbone/master.key` writes one"
)


def new_master_key() -> bytes:
    """32 random bytes for a new master key."""
    return os.urandom(MASTER_KEY_BYTES)


def encode_master_key(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")


def decode_master_key(text: str, source: str) -> bytes:
    """Decode a base64 master key; `source` names where it came from (never the value)."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyringError(f"{source} is not valid base64; {MASTER_KEY_HELP}") from None
    if len(key) != MASTER_KEY_BYTES:
        raise KeyringError(f"{source} must decode to {MASTER_KEY_BYTES} bytes; {MASTER_KEY_HELP}")
    return key


def master_key_from_settings(settings: Any) -> bytes:
    """The master key from `BACKBONE_MASTER_KEY` or `BACKBONE_MASTER_KEY_FILE`, or a clear error."""
    if settings.master_key is not None:
        return decode_master_key(settings.master_key.get_secret_value(), "BACKBONE_MASTER_KEY")
    if settings.master_key_file is not None:
        path = Path(settings.master_key_file)
        try:
            text = path.read_text()
        except OSError as exc:
            raise KeyringError(f"cannot read master key file {path} ({exc.strerror}); {MASTER_KEY_HELP}") from None
        return decode_master_key(text, f"master key file {path}")
    raise KeyringError(f"no master key for the keyring; {MASTER_KEY_HELP}")


def write_master_key_file(path: Path) -> bytes:
    """Create a new master key file readable by its owner only; refuses to overwrite one."""
    key = new_master_key()
    make_private_dirs(path.parent)
    if not create_private_file(path, (encode_master_key(key) + "\n").encode()):
        raise KeyringError(f"master key file {path} already exists; set BACKBONE_MASTER_KEY_FILE={path} to use it")
    return key
