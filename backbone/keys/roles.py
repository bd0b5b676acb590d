"""Which keys each role holds: disjoint keyrings, so no one holds a key they do not apply.

- **processor**: every sharing domain's HMAC key and every provider's encryption key (it applies
  them), the oversight domain (the audit records' subject tokens, the erasure table) and its
  checkpoint signing key.
- **operator**: its own signing identity only. No domain key (a domain key computes the pseudonym
  of any candidate id: small identifier spaces are reversed by dictionary) and no encryption key.
- **oversight**: the providers' keys (re-identification decrypts `encrypt` tokens) and the
  oversight domain (`audit subject` finds one person's disclosures by their oversight token).

Processor and oversight share the provider keys and the oversight domain key (AES-SIV and HMAC are
symmetric); the operator shares nothing. A process says its role with `BACKBONE_ROLE`; its keyring
is then `<data dir>/<role>.keyring` (or `BACKBONE_KEYRING_PATH`), under its own master key. Without
a role, one keyring holds every key: one person running everything on one machine.
"""

from __future__ import annotations

from backbone.keys.keyring import OPERATIONS_SIGNER, OVERSIGHT_DOMAIN, PROCESSOR_SIGNER, KeyInfo, Keyring
from backbone.keys.role_names import ROLES, WHAT_EACH_HOLDS, Role

__all__ = ["OPERATOR_SIGNER", "ROLES", "WHAT_EACH_HOLDS", "Role", "for_role", "holds", "split"]


def holds(role: Role, info: KeyInfo) -> bool:
    """Whether a key belongs in `role`'s keyring."""
    if role == "processor":
        return info.kind in ("domain", "provider") or (info.kind == "signing" and info.owner == PROCESSOR_SIGNER)
    if role == "operator":
        return info.kind == "signing" and info.owner not in (PROCESSOR_SIGNER,)
    return info.kind == "provider" or (info.kind == "domain" and info.owner == OVERSIGHT_DOMAIN)


def for_role(keyring: Keyring, role: Role) -> Keyring:
    """The part of `keyring` that `role` holds."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
    return keyring.only(lambda info: holds(role, info))


def split(keyring: Keyring) -> dict[Role, Keyring]:
    """`keyring` cut into the roles' keyrings (generate once, then give each role its part)."""
    return {role: for_role(keyring, role) for role in ROLES}


# The operator's signing identity, until each operator has a key of their own.
OPERATOR_SIGNER = OPERATIONS_SIGNER
