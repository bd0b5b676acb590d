"""The portal's blocking reads of the audit database, for one signed-in person at a time.

`PortalTrail.entries(subject)` computes the person's oversight pseudonyms (under every oversight
key id, so entries from before a rotation show too) with the keyring the portal holds and returns
the entries they may see now; `receipt(subject, entry_id)` makes the offline-verifiable receipt of
one of those entries and nothing else. The subject always comes from the session, never from the
request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from app.portal.records import Entry, Releases, entries, read_releases, suppressed_counts, visible
from backbone.errors import BackboneError
from backbone.policy.agreements import Charter
from backbone.settings import Settings


class NotYours(BackboneError):
    """An entry that is not among the signed-in person's visible entries (or does not exist)."""


@dataclass(slots=True, frozen=True)
class Sealing:
    """Where a receipt's record is sealed, and whether that was before the entry was released."""

    writer: str
    checkpoint: int
    sealed_at: str
    released_at: str | None
    before_release: bool | None


class PortalTrail:
    def __init__(self, settings: Settings, charter_of: Callable[[], Charter], keyring: Any,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.settings = settings
        self._charter_of = charter_of
        self._keyring = keyring
        self.clock = clock

    def tokens(self, subject: str) -> list[str]:
        from backbone.control.erasure import oversight_tokens

        return oversight_tokens(self._keyring, subject)

    def _client(self) -> Any:
        from backbone.clickhouse.client import make_client

        return make_client(self.settings.clickhouse_dsn or "", read_only=True)

    def _visible(self, client: Any, subject: str) -> tuple[list[Entry], Releases]:
        charter = self._charter_of()
        releases = read_releases(client, self.settings.clickhouse_database_prefix)
        now = self.clock()
        found = entries(client, self.settings.clickhouse_database_prefix, self.tokens(subject), charter)
        return [e for e in found if visible(e, charter, releases, now)], releases

    def entries(self, subject: str) -> list[Entry]:
        client = self._client()
        try:
            return self._visible(client, subject)[0]
        finally:
            client.close()

    def receipt(self, subject: str, entry_id: str) -> tuple[dict[str, Any], Sealing]:
        """The receipt of one of the person's visible entries; `NotYours` for anything else."""
        from backbone.audit.log import public_key_map
        from backbone.audit.published import verifier_keys
        from backbone.events.catalog import load_catalog
        from consumers.audit_trail import ClickHouseTrail

        client = self._client()
        try:
            shown, releases = self._visible(client, subject)
            entry = next((e for e in shown if e.entry_id == entry_id), None)
            if entry is None:
                raise NotYours("no such entry among your records")
            trail = ClickHouseTrail(client, self.settings.clickhouse_database_prefix, load_catalog(self.settings.schemas_dir))
            made = trail.receipt(entry.event_id, entry.recipient, public_key_map(verifier_keys(self.settings)))
        finally:
            client.close()
        sealed_at = str(made["checkpoint"]["created_at"])
        released = releases.at.get(entry.agreement.partition("@")[0]) if entry.notice != "immediate" else None
        before = None if released is None else datetime.fromisoformat(sealed_at) < released
        return made, Sealing(made["position"]["writer"], int(made["position"]["checkpoint"]), sealed_at,
                             released.isoformat() if released else None, before)

    def held_counts(self) -> dict[str, int]:
        """Oversight's view: decisions per agreement version the people concerned cannot see now."""
        client = self._client()
        try:
            charter = self._charter_of()
            return suppressed_counts(client, self.settings.clickhouse_database_prefix, charter,
                                     read_releases(client, self.settings.clickhouse_database_prefix), self.clock())
        finally:
            client.close()
