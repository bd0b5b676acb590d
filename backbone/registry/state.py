"""The registry's state, rebuilt by applying the `_schemas` log in offset order (pure: no I/O).

Log records (key -> value, both JSON):
- `{"keytype": "SCHEMA", "claim": c}` -> `{"subject", "version", "id", "schema", "references"?}`: a
  claim that `subject` version `version` is schema `id` (with the named types it references). Every write has its own claim key, so compaction never
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

from backbone.registry import errors
from backbone.registry.compatibility import DEFAULT_LEVEL, AvroText, Reference, identity_of, parse_references


@dataclass(slots=True)
class Version:
    """One accepted subject version."""

    subject: str
    version: int
    schema_id: int
    claim: str
    deleted: bool = False


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
        except (KeyError, TypeError, ValueError, errors.ApiError):
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
        references = parse_references(value.get("references"))
        self.max_id = max(self.max_id, schema_id)  # an id seen in the log is never handed out again
        identity = identity_of(json.loads(text), references)
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
            self.schemas[schema_id] = AvroText(text, identity, references)
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
        """The avro library's parse of a stored schema, references resolved (parsed once)."""
        parsed = self._parsed.get(schema_id)
        if parsed is None:
            parsed = self._parsed[schema_id] = self.resolve(self.schemas[schema_id])
        return parsed

    def referenced(self, reference: Reference) -> Version:
        """The subject version a reference names (soft-deleted ones too, as Confluent resolves them)."""
        versions = self.subjects.get(reference.subject, {})
        if reference.version == -1:
            live = [versions[v] for v in sorted(versions) if not versions[v].deleted]
            if live:
                return live[-1]
        elif reference.version in versions:
            return versions[reference.version]
        raise errors.invalid_schema(
            f"reference '{reference.name}' names subject '{reference.subject}' version {reference.version}, "
            "which is not registered; register it first"
        )

    def resolve(self, schema: AvroText) -> avro.schema.Schema:
        """`schema` parsed with the named types of its references (and theirs), each parsed once,
        dependencies first; 42201 when a reference is missing or the schema does not parse with them."""
        names = avro.schema.Names()
        try:
            self._load(schema.references, names, set())
            return schema.parsed(names)
        except errors.ApiError:
            raise
        except Exception as exc:  # noqa: BLE001 - avro raises SchemaParseException and friends
            raise errors.invalid_schema(f"not a valid Avro schema ({type(exc).__name__}: {str(exc)[:200]})") from None

    def _load(self, references: tuple[Reference, ...], names: avro.schema.Names, seen: set[int]) -> None:
        for reference in references:
            schema_id = self.referenced(reference).schema_id
            if schema_id in seen:
                continue
            seen.add(schema_id)
            target = self.schemas[schema_id]
            self._load(target.references, names, seen)
            target.parsed(names)
            names.default_namespace = None  # each referenced document starts in the null namespace

    def referenced_by(self, entry: Version) -> list[int]:
        """Ids of the live schemas whose references name `entry`'s subject version."""
        latest = max((v.version for v in self.versions(entry.subject)), default=None)
        return sorted({
            v.schema_id for v in self.claims.values() if not v.deleted
            for r in self.schemas[v.schema_id].references
            if r.subject == entry.subject and (r.version == entry.version or (r.version == -1 and latest == entry.version))
        })

    def usages(self, schema_id: int, deleted: bool = False) -> list[Version]:
        return sorted(
            (v for v in self.claims.values() if v.schema_id == schema_id and (deleted or not v.deleted)),
            key=lambda v: (v.subject, v.version),
        )
