"""A keyring for tests: creates a key the first time a domain or provider without one is asked for.

The product's keyring never does (a missing key is a configuration error naming the fix); tests
that use made-up domains and providers use this one instead of provisioning each.
"""

from __future__ import annotations

from backbone.keys.keyring import KeyKind, Keyring


class AutoKeyring(Keyring):
    """An in-memory keyring that creates any key it is asked for."""

    def active_key(self, kind: KeyKind, owner: str) -> tuple[str, bytes]:
        self.ensure(**{"domains" if kind == "domain" else "providers": [owner]})
        return super().active_key(kind, owner)
