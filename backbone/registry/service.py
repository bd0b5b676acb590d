"""Registry operations over the log: each write catches up, decides, appends, and reads its own
record back before answering. Blocking (Kafka I/O): the HTTP layer runs them in a thread."""

from __future__ import annotations

import threading
import uuid
from typing import Any

from backbone.registry import errors
from backbone.registry.compatibility import LEVELS, AvroText, incompatibilities
from backbone.registry.kafka_log import SchemaLog
from backbone.registry.state import Version

MAX_ATTEMPTS = 5
MODES = ("READWRITE", "READONLY")


def _version_number(raw: str | int) -> int:
    """`latest` and -1 mean the newest version (returned as -1); anything else must be 1..2^31-1."""
    if raw in ("latest", -1, "-1"):
        return -1
    try:
        number = int(raw)
    except (TypeError, ValueError):
        raise errors.invalid_version(raw) from None
    if not 1 <= number <= 2**31 - 1:
        raise errors.invalid_version(raw)
    return number


def check_level(level: Any) -> str:
    if not isinstance(level, str) or level.upper() not in LEVELS:
        raise errors.invalid_level(level)
    return level.upper()


def check_mode(mode: Any) -> str:
    if not isinstance(mode, str) or mode.upper() not in MODES:
        raise errors.invalid_mode(mode)
    return mode.upper()


class SchemaRegistry:
    """Subjects, versions, ids and compatibility levels, stored in a `SchemaLog`."""

    def __init__(self, schema_log: SchemaLog) -> None:
        self.log = schema_log
        self._write_lock = threading.Lock()  # one write at a time in this process

    @property
    def state(self):  # noqa: ANN201 - RegistryState, read under `self.log.lock`
        return self.log.state

    # -- reads (call under `with registry.log.lock`) ------------------------------------------

    def version(self, subject: str, raw_version: str | int, deleted: bool = False) -> Version:
        number = _version_number(raw_version)
        visible = self.state.versions(subject, deleted)
        if not visible:  # as Confluent: a subject whose versions are all soft-deleted is not found
            raise errors.subject_not_found(subject)
        if number == -1:
            return visible[-1]
        for entry in visible:
            if entry.version == number:
                return entry
        raise errors.version_not_found(subject, raw_version)

    def versions(self, subject: str, deleted: bool = False) -> list[Version]:
        found = self.state.versions(subject, deleted)
        if not found:
            raise errors.subject_not_found(subject)
        return found

    def schema(self, schema_id: int) -> AvroText:
        found = self.state.schemas.get(schema_id)
        if found is None:
            raise errors.schema_not_found(f"Schema {schema_id} not found")
        return found

    def lookup(self, subject: str, candidate: AvroText, deleted: bool = False) -> Version:
        if not self.state.versions(subject, deleted):
            raise errors.subject_not_found(subject)
        found = self.state.find(subject, candidate.identity, deleted)
        if found is None:
            raise errors.schema_not_found()
        return found

    def compatibility(self, subject: str, candidate: AvroText, raw_version: str | int | None) -> list[str]:
        """Reasons `candidate` breaks the subject's level against one version (or all, when None)."""
        level = self.state.level(subject)
        parsed = self.state.resolve(candidate)
        if raw_version is None:
            existing = self.state.versions(subject)
        else:
            number, live = _version_number(raw_version), self.state.versions(subject)
            existing = live[-1:] if number == -1 else [v for v in live if v.version == number]
            if not existing and number != -1:
                # Confluent answers 40402 here even for a subject that never existed (where reading
                # the version answers 40401); clients match on it, so this endpoint does the same.
                raise errors.version_not_found(subject, raw_version)
            level = level.removesuffix("_TRANSITIVE")
        return incompatibilities(parsed, [(v.version, self.state.parsed(v.schema_id)) for v in existing], level)

    # -- writes (blocking) ---------------------------------------------------------------
    # Each write checks the mode after catching up with the log, so a READONLY set through
    # another registry process on the same topic is honoured too.

    def sync(self) -> None:
        self.log.sync()

    def _writable(self, what: str) -> None:
        """Call under `self.log.lock`, after a sync."""
        if self.state.mode == "READONLY":
            raise errors.read_only(what)

    def register(self, subject: str, candidate: AvroText) -> Version:
        """Register `candidate` under `subject`; the same schema always gets the same id."""
        with self._write_lock:
            for _ in range(MAX_ATTEMPTS):
                self.log.sync()
                with self.log.lock:
                    parsed = self.state.resolve(candidate)  # its references must be registered
                    existing = self.state.find(subject, candidate.identity)
                    if existing is not None:  # changes nothing, so READONLY answers it too (clients re-register at start)
                        return existing
                    self._writable(f"registering under subject '{subject}'")
                    level = self.state.level(subject)
                    live = [(v.version, self.state.parsed(v.schema_id)) for v in self.state.versions(subject)]
                    schema_id = self.state.id_for(candidate.identity)
                    version = self.state.next_version(subject)
                reasons = incompatibilities(parsed, live, level)
                if reasons:
                    raise errors.ApiError(
                        409, errors.INCOMPATIBLE,
                        f"Schema being registered is incompatible with an earlier schema for subject "
                        f"\"{subject}\" ({level}), details: {reasons}",
                    )
                claim = uuid.uuid4().hex
                key = {"keytype": "SCHEMA", "claim": claim}
                offset = self.log.append(
                    [(key, {"subject": subject, "version": version, "id": schema_id, "schema": candidate.text,
                            **({"references": [r.body() for r in candidate.references]} if candidate.references else {})})]
                )
                self.log.wait_applied(offset)
                with self.log.lock:
                    accepted = self.state.claims.get(claim)
                if accepted is not None:
                    return accepted
                # Another process won this id or version first: retract our claim so compaction can
                # never promote it, then try again with what we now know.
                self.log.append([(key, None)])
        raise errors.store_error(f"could not register under {subject}: {MAX_ATTEMPTS} concurrent conflicts")

    def delete_subject(self, subject: str, permanent: bool) -> list[int]:
        with self._write_lock:
            self.log.sync()
            with self.log.lock:
                self._writable(f"deleting subject '{subject}'")
                every = self.state.versions(subject, deleted=True)
                live = [v for v in every if not v.deleted]
                if not every:
                    raise errors.subject_not_found(subject)
                if permanent and live:
                    raise errors.ApiError(
                        404, errors.SUBJECT_NOT_SOFT_DELETED,
                        f"Subject '{subject}' was not deleted first before being permanently deleted",
                    )
                if not permanent and not live:
                    raise errors.ApiError(404, errors.SUBJECT_SOFT_DELETED, f"Subject '{subject}' was soft deleted.")
                targets = every if permanent else live
                self._not_referenced(targets)
                max_id = self.state.max_id
            self._delete(targets, permanent, max_id)
            return [v.version for v in targets]

    def delete_version(self, subject: str, raw_version: str | int, permanent: bool) -> int:
        with self._write_lock:
            self.log.sync()
            with self.log.lock:
                self._writable(f"deleting a version of subject '{subject}'")
                # a number may name a soft-deleted version (a second soft delete is 40406); `latest` is the newest live one
                entry = self.version(subject, raw_version, deleted=permanent or _version_number(raw_version) != -1)
                if not permanent and entry.deleted:
                    raise errors.ApiError(
                        404, errors.VERSION_SOFT_DELETED, f"Subject '{subject}' Version {entry.version} was soft deleted. "
                        "Set permanent=true to delete permanently",
                    )
                self._not_referenced([entry])
                if permanent and not entry.deleted:
                    raise errors.ApiError(
                        404, errors.VERSION_NOT_SOFT_DELETED,
                        f"Subject '{subject}' Version {entry.version} was not deleted first before being permanently deleted",
                    )
                max_id = self.state.max_id
            self._delete([entry], permanent, max_id)
            return entry.version

    def _not_referenced(self, targets: list[Version]) -> None:
        """A version another live schema references stays (42206), as in Confluent's registry."""
        for entry in targets:
            users = self.state.referenced_by(entry)
            if users:
                raise errors.ApiError(
                    422, errors.REFERENCE_EXISTS,
                    f"One or more references exist to the schema {{subject={entry.subject}, version={entry.version}}}: "
                    f"schema ids {users[:10]}; delete those first",
                )

    def _delete(self, targets: list[Version], permanent: bool, max_id: int) -> None:
        records: list[tuple[dict[str, Any], dict[str, Any] | None]] = []
        if permanent:
            records.append(({"keytype": "MAX_ID"}, {"max_id": max_id}))
            for entry in targets:
                records.append(({"keytype": "DELETED", "claim": entry.claim}, None))
                records.append(({"keytype": "SCHEMA", "claim": entry.claim}, None))
        else:
            records += [({"keytype": "DELETED", "claim": entry.claim}, {"deleted": True}) for entry in targets]
        self.log.wait_applied(self.log.append(records))

    def set_level(self, subject: str | None, level: str) -> None:
        with self._write_lock:
            self.log.sync()
            with self.log.lock:
                self._writable("changing the compatibility level")
            self.log.wait_applied(self.log.append([({"keytype": "CONFIG", "subject": subject}, {"compatibilityLevel": level})]))

    def delete_level(self, subject: str) -> str:
        with self._write_lock:
            self.log.sync()
            with self.log.lock:
                self._writable("changing the compatibility level")
                previous = self.state.levels.get(subject)
            if previous is None:
                raise errors.ApiError(
                    404, errors.SUBJECT_CONFIG_NOT_FOUND,
                    f"Subject '{subject}' does not have subject-level compatibility configured",
                )
            self.log.wait_applied(self.log.append([({"keytype": "CONFIG", "subject": subject}, None)]))
            return previous

    def set_mode(self, mode: str) -> None:
        """READWRITE or READONLY for every subject (the one write READONLY still allows)."""
        with self._write_lock:
            self.log.wait_applied(self.log.append([({"keytype": "MODE", "subject": None}, {"mode": mode})]))
