"""The registry's state, rebuilt by applying the `_schemas` log in offset order (pure: no I/O).

Log records (key -> value, both JSON):
- `{"keytype": "SCHEMA", "claim": c}` -> `{"subject", "version", "id", "schema"}`: a claim that
  `subject` version `version` is schema `id`. Every write has its own claim key, so compaction never
  merges two claims and offset order survives it. A claim is accepted unless an earlier accepted
  claim already gave that id to another schema, that schema another id, that subject version
  another claim, or that subject this schema as a live version. Every process applies the same
  rule to the same order, so racing writers resolve the same way everywhere: the first wins.
- `{"keytype": "DELETED", "claim": c}` -> `{"deleted": true}`: soft delete of an accepted claim.
- a null value on either key: permanent delete (a tombstone).
- `{"keytype": "MAX_ID"}` -> `{"max_id": n}`: written before permanent deletes so that ids stay
  burnt after compaction removes their claims.
- `{"keytype": "CONFIG", "subject": s or null}` -> `{"compatibilityLevel": level}` or null.
- `{"keytype": "MODE", "subject": null}` -> `{"mode": "READWRITE" | "READONLY"}` or null (READWRITE).
- `{"keytype": "NOOP", "node": n}`: a marker a process writes and reads back to catch up.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import avro.schema

from backbone.registry.compatibility import DEFAULT_LEVEL, AvroText


@dataclass(slots=True)
class Version:
    """One accepted subject version."""

    subject: str
    version: int
    schema_id: int
    claim: str
    deleted: bool = False


def identity_of(text: str) -> str:
    return json.dumps(json.loads(text), separators=(",", ":"), sort_keys=True)


def record_key(key: dict[str, Any]) -> bytes:
    """Byte-stable key encoding, so compaction sees equal keys as equal."""
    return json.dumps(key, separators=(",", ":"), sort_keys=True).encode()


@dataclass
class RegistryState:
    """Subjects, versions, schemas by id and compatibility levels, as of `position` in the log."""

    schemas: dict[int, AvroText] = field(default_factory=dict)
    ids_by_identity: dict[str, int] = field(default_factory=dict)
    subjects: dict[str, dict[int, Version]] = field(default_factory=dict)
    claims: dict[str, Version] = field(default_factory=dict)
    levels: dict[str | None, str] = field(default_factory=dict)
    mode: str = "READWRITE"
    max_id: int = 0
    position: int = -1
    _parsed: dict[int, avro.schema.Schema] = field(default_factory=dict)

    # -- applying the log -------------------------------------------------------------------

    def apply(self, offset: int, key: dict[str, Any], value: dict[str, Any] | None) -> None:
        """Apply one log record; malformed records are ignored (they never came from a registry)."""
        self.position = max(self.position, offset)
        kind = key.get("keytype")
        try:
            if kind == "SCHEMA":
                self._apply_claim(str(key["claim"]), value)
            elif kind == "DELETED":
                claimed = self.claims.get(str(key["claim"]))
                if claimed is not None and value is not None:
                    claimed.deleted = bool(value.get("deleted", True))
            elif kind == "MAX_ID" and value is not None:
                self.max_id = max(self.max_id, int(value["max_id"]))
            elif kind == "CONFIG":
                subject = key.get("subject")
                if value is None:
                    self.levels.pop(subject, None)
                else:
                    self.levels[subject] = str(value["compatibilityLevel"])
            elif kind == "MODE" and key.get("subject") is None:
                self.mode = "READWRITE" if value is None else str(value["mode"])
        except (KeyError, TypeError, ValueError):
            return

    def _apply_claim(self, claim: str, value: dict[str, Any] | None) -> None:
        if value is None:
            self._forget(claim)
            return
        if claim in self.claims:
            return
        subject, version, schema_id, text = (
            str(value["subject"]), int(value["version"]), int(value["id"]), str(value["schema"])
        )
        self.max_id = max(self.max_id, schema_id)  # an id seen in the log is never handed out again
        identity = identity_of(text)
        known = self.schemas.get(schema_id)
        if known is not None and known.identity != identity:
            return
        if self.ids_by_identity.get(identity, schema_id) != schema_id:
            return
        versions = self.subjects.get(subject, {})
        if version in versions:
            return
        if any(v.schema_id == schema_id and not v.deleted for v in versions.values()):
            return
        if known is None:
            self.schemas[schema_id] = AvroText(text, identity)
            self.ids_by_identity[identity] = schema_id
        entry = Version(subject, version, schema_id, claim)
        self.subjects.setdefault(subject, {})[version] = entry
        self.claims[claim] = entry

    def _forget(self, claim: str) -> None:
        entry = self.claims.pop(claim, None)
        if entry is None:
            return
        versions = self.subjects.get(entry.subject, {})
        versions.pop(entry.version, None)
        if not versions:
            self.subjects.pop(entry.subject, None)
        if not any(v.schema_id == entry.schema_id for v in self.claims.values()):
            gone = self.schemas.pop(entry.schema_id, None)
            self._parsed.pop(entry.schema_id, None)
            if gone is not None:
                self.ids_by_identity.pop(gone.identity, None)

    # -- queries ----------------------------------------------------------------------------

    def versions(self, subject: str, deleted: bool = False) -> list[Version]:
        """The subject's versions, oldest first; soft-deleted ones only when `deleted`."""
        found = self.subjects.get(subject, {})
        return [found[v] for v in sorted(found) if deleted or not found[v].deleted]

    def subject_names(self, deleted: bool = False) -> list[str]:
        return sorted(s for s in self.subjects if self.versions(s, deleted))

    def find(self, subject: str, identity: str, deleted: bool = False) -> Version | None:
        """The newest version of `subject` holding the schema with `identity`."""
        schema_id = self.ids_by_identity.get(identity)
        if schema_id is None:
            return None
        matches = [v for v in self.versions(subject, deleted) if v.schema_id == schema_id]
        return matches[-1] if matches else None

    def next_version(self, subject: str) -> int:
        return max(self.subjects.get(subject, {}), default=0) + 1

    def id_for(self, identity: str) -> int:
        """The schema's id if known anywhere, else the next id never used."""
        return self.ids_by_identity.get(identity) or self.max_id + 1

    def level(self, subject: str | None) -> str:
        return self.levels.get(subject) or self.levels.get(None) or DEFAULT_LEVEL

    def parsed(self, schema_id: int) -> avro.schema.Schema:
        """The avro library's parse of a stored schema (parsed once)."""
        parsed = self._parsed.get(schema_id)
        if parsed is None:
            parsed = self._parsed[schema_id] = self.schemas[schema_id].parsed()
        return parsed

    def usages(self, schema_id: int, deleted: bool = False) -> list[Version]:
        return sorted(
            (v for v in self.claims.values() if v.schema_id == schema_id and (deleted or not v.deleted)),
            key=lambda v: (v.subject, v.version),
        )
