"""The roles' names and what each holds, without the keyring: what a command's help says about
the role it needs (`app.cli.roles`) costs no cryptography import. `backbone.keys.roles` decides
which key belongs to which role."""

from __future__ import annotations

from typing import Literal, get_args

Role = Literal["processor", "operator", "oversight"]
ROLES: tuple[Role, ...] = get_args(Role)

WHAT_EACH_HOLDS: dict[Role, str] = {
    "processor": "the domain and encryption keys it applies, the oversight domain and its checkpoint signing key",
    "operator": "its own signing key only (no pseudonym or encryption key)",
    "oversight": "the providers' keys (re-identification) and the oversight domain",
}
