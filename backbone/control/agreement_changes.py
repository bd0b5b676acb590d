"""Agreement changes in flight: the compacted `agreements.changes` topic.

Two kinds of record, both keyed so compaction keeps the latest of each:
- an agreement version's text (`agreements apply`), YAML of the whole version, keyed `id@version`;
- a status change (`agreements suspend|revoke|activate`), a small JSON record keyed
  `status:id@version`: `{"kind": "status", "id", "version", "status", "at", "by"}`.

A status change applies on top of whatever text of that version is current (the file's, or a later
`apply`), so a suspension survives a new text, a schema change or a restart. Records apply in log
order. Fail closed: a record that cannot be applied (a text that no longer validates, a status for
a version nobody knows, bytes that are not a record) denies the agreement version it concerns
(`agreement_inactive`), is logged, and is listed by `problems()` and `backbone status`; it is never
skipped in silence.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import yaml
from confluent_kafka import Message, Producer

from backbone.errors import AgreementError, KafkaUnavailableError
from backbone.events.catalog import Catalog
from backbone.kafka.compacted import CompactedTopicReader
from backbone.kafka.topics import AGREEMENTS_TOPIC, Topics
from backbone.policy.agreements import STATUSES, Agreement, Charter, parse_agreement, to_yaml
from backbone.policy.rules import check_agreement
from backbone.settings import Settings

log = logging.getLogger(__name__)

STATUS_PREFIX = "status:"
APPROVED_BY_HEADER = "approved_by"
UNIDENTIFIED = "unidentified"


def ensure_topic(settings: Settings) -> None:
    Topics(settings).ensure(AGREEMENTS_TOPIC, partitions=1, config={"cleanup.policy": "compact"})


@dataclass(slots=True, frozen=True)
class StatusChange:
    """One status change of one agreement version, and who made it when."""

    id: str
    version: int
    status: str
    at: datetime
    by: str

    @property
    def key(self) -> str:
        return f"{self.id}@{self.version}"

    def to_json(self) -> bytes:
        return json.dumps({"kind": "status", "id": self.id, "version": self.version, "status": self.status,
                           "at": self.at.isoformat(), "by": self.by}).encode()


def parse_change(value: bytes, catalog: Catalog, source: str = AGREEMENTS_TOPIC) -> Agreement:
    """The agreement in one text record, validated like a file (`AgreementError` if not)."""
    try:
        data = yaml.safe_load(value.decode())
    except (UnicodeDecodeError, yaml.YAMLError):
        raise AgreementError(f"{source}: a record is not YAML text of an agreement") from None
    agreement, problems = parse_agreement(data, source)
    if agreement is None:
        raise AgreementError(problems)
    problems = check_agreement(agreement, catalog, source)
    if problems:
        raise AgreementError(problems)
    return agreement


def parse_status(value: bytes) -> StatusChange:
    """The status change in one `status:` record (`AgreementError` if it is not one)."""
    try:
        data = json.loads(value.decode())
        change = StatusChange(str(data["id"]), int(data["version"]), str(data["status"]),
                              datetime.fromisoformat(data["at"]), str(data.get("by") or UNIDENTIFIED))
    except (UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise AgreementError(f"{AGREEMENTS_TOPIC}: a status record is not JSON with id, version, status and at") from None
    if change.status not in STATUSES:
        raise AgreementError(f"{AGREEMENTS_TOPIC}: status {change.status!r} of {change.key} is none of {', '.join(STATUSES)}")
    return change


def _key_of(message_key: bytes | None) -> tuple[bool, str | None]:
    """(is a status record, `id@version` it concerns, or None when the key names none)."""
    text = (message_key or b"").decode(errors="replace")
    is_status = text.startswith(STATUS_PREFIX)
    key = text[len(STATUS_PREFIX):] if is_status else text
    name, at, version = key.rpartition("@")
    return is_status, key if name and at and version.isdigit() else None


def _produce(settings: Settings, records: list[tuple[bytes, bytes]], headers: list[tuple[str, bytes]] | None = None) -> None:
    ensure_topic(settings)
    producer = Producer(settings.producer_config())
    failures: list[str] = []

    def delivered(error, message: Message) -> None:  # noqa: ANN001
        if error is not None:
            failures.append(error.str())

    for key, value in records:
        producer.produce(AGREEMENTS_TOPIC, value, key, headers=headers, on_delivery=delivered)
    if producer.flush(settings.kafka_timeout_s) or failures:
        raise KafkaUnavailableError(f"agreement change not acknowledged by Kafka at {settings.kafka_bootstrap}: {failures[:1]}")


def publish(settings: Settings, agreements: list[Agreement], approved_by: str | None = None) -> None:
    """Publish agreement versions' text to `agreements.changes` and wait until the cluster has them.

    `approved_by` (who approved a change that widens disclosure) rides in an `approved_by` header of
    each record: the text stays the agreement as agreed, and readers that apply it ignore headers."""
    headers = [(APPROVED_BY_HEADER, approved_by.encode())] if approved_by else None
    _produce(settings, [(a.key.encode(), to_yaml(a).encode()) for a in agreements], headers)


def publish_status(settings: Settings, change: StatusChange) -> None:
    """Publish one status change and wait until the cluster has it."""
    _produce(settings, [(f"{STATUS_PREFIX}{change.key}".encode(), change.to_json())])


class AgreementFeed:
    """Applies `agreements.changes` records in log order to a charter's agreements, fail closed.

    `apply(agreement)` adds or replaces a version's text; `set_status(id, version, status)` changes
    one version's status (both the engine's, or anything that keeps a charter). The statuses of the
    status records are kept, so a later text of the same version gets its status overlaid.
    """

    def __init__(self, catalog: Catalog, known: Callable[[str], bool], apply: Callable[[Agreement], None],
                 set_status: Callable[[str, int, str], None]) -> None:
        self.catalog = catalog
        self.known = known
        self._apply = apply
        self._set_status = set_status
        self.statuses: dict[str, StatusChange] = {}
        # `id@version` (or the record key) -> why it is denied: a text that cannot be applied stays
        # denied until a text that can arrives; a bad status record until a good one does
        self._text_problems: dict[str, str] = {}
        self._status_problems: dict[str, str] = {}
        self._lock = threading.Lock()

    @property
    def problems(self) -> dict[str, str]:
        with self._lock:
            merged = dict(self._status_problems)
            for key, why in self._text_problems.items():
                merged[key] = f"{merged[key]}; {why}" if key in merged else why
            return merged

    def take(self, message: Message) -> None:
        self.take_record(message.key(), message.value())

    def take_record(self, key: bytes | None, value: bytes | None) -> None:
        is_status, concerned = _key_of(key)
        if not value:
            return  # a tombstone: compaction's deletion of an older record, nothing to apply
        try:
            if is_status:
                self._status(parse_status(value), concerned)
            else:
                self._text(parse_change(value, self.catalog), concerned)
        except AgreementError as exc:
            self._deny(concerned, (key or b"").decode(errors="replace"), exc,
                       self._status_problems if is_status else self._text_problems)

    def _status(self, change: StatusChange, concerned: str | None) -> None:
        if concerned != change.key:
            raise AgreementError(f"{AGREEMENTS_TOPIC}: status record keyed {concerned!r} names {change.key}")
        if not self.known(change.key):
            raise AgreementError(f"{AGREEMENTS_TOPIC}: status {change.status} for {change.key}, a version neither the files nor an apply define")
        with self._lock:
            self.statuses[change.key] = change
            self._status_problems.pop(change.key, None)
            held = change.key in self._text_problems
        # a version whose published text cannot be applied stays denied whatever its status says
        self._set_status(change.id, change.version, "suspended" if held else change.status)
        log.info("agreement %s is now %s (by %s)%s", change.key, change.status, change.by,
                 "; still denied: its published text cannot be applied" if held else "")

    def _text(self, agreement: Agreement, concerned: str | None) -> None:
        if concerned != agreement.key:
            raise AgreementError(f"{AGREEMENTS_TOPIC}: record keyed {concerned!r} holds {agreement.key}")
        overlay = self.statuses.get(agreement.key)
        if overlay is not None:
            agreement = agreement.model_copy(update={"status": overlay.status})
        self._apply(agreement)
        with self._lock:
            self._text_problems.pop(agreement.key, None)
        log.info("agreement %s is now %s", agreement.key, agreement.status)

    def _deny(self, concerned: str | None, record_key: str, error: AgreementError, problems: dict[str, str]) -> None:
        why = "; ".join(error.problems)
        with self._lock:
            problems[concerned or record_key or "(no key)"] = why
        if concerned is not None and self.known(concerned):
            name, _, version = concerned.rpartition("@")
            self._set_status(name, int(version), "suspended")
            log.error("agreement change for %s cannot be applied, so %s is denied (agreement_inactive): %s", concerned, concerned, why)
        else:
            log.error("agreement change record %s cannot be applied and concerns no known version: %s", record_key, why)


def published(settings: Settings, charter: Charter, timeout: float | None = None) -> tuple[dict[str, Agreement], AgreementFeed]:
    """Every agreement version as the processors see it now (files, then the topic in log order),
    and the feed that applied the topic (its `statuses` and `problems`)."""
    ensure_topic(settings)
    versions: dict[str, Agreement] = {a.key: a for a in charter.agreements}

    def apply(agreement: Agreement) -> None:
        versions[agreement.key] = agreement

    def set_status(agreement_id: str, version: int, status: str) -> None:
        key = f"{agreement_id}@{version}"
        versions[key] = versions[key].model_copy(update={"status": status})

    feed = AgreementFeed(charter.catalog, lambda key: key in versions, apply, set_status)
    reader = CompactedTopicReader(settings, AGREEMENTS_TOPIC, feed.take, "agreements-reader")
    reader.start()
    try:
        reader.wait_caught_up(timeout or settings.kafka_timeout_s * 2)
    finally:
        reader.stop()
    return versions, feed


def current(settings: Settings, charter: Charter, agreement_id: str, version: int | None) -> Agreement:
    """The version to change, as the processors see it (highest version by default)."""
    versions, _ = published(settings, charter)
    candidates = {k: a for k, a in versions.items() if a.id == agreement_id}
    if not candidates:
        raise AgreementError(f"no agreement {agreement_id!r} in the charter or on {AGREEMENTS_TOPIC}")
    if version is None:
        return max(candidates.values(), key=lambda a: a.version)
    key = f"{agreement_id}@{version}"
    if key not in candidates:
        raise AgreementError(f"agreement {agreement_id!r} has no version {version}")
    return candidates[key]


def change_status(settings: Settings, charter: Charter, agreement_id: str, version: int | None, status: str) -> Agreement:
    """Publish a status change of one version (the highest by default), by `BACKBONE_IDENTITY`."""
    if status not in STATUSES:
        raise AgreementError(f"unknown status {status!r}; use one of {', '.join(STATUSES)}")
    from backbone.audit import operations

    target = current(settings, charter, agreement_id, version)
    by = settings.identity or UNIDENTIFIED
    publish_status(settings, StatusChange(target.id, target.version, status, datetime.now(UTC), by))
    # the change of the control plane is itself a record of the operator's audit trail
    operations.record(settings, operations.OperatorAction("agreement_status", by, target.key, "done", None,
                                                          {"status": status, "previous": target.status}))
    return target.model_copy(update={"status": status})


def feed(settings: Settings, catalog: Catalog, apply: Callable[[Agreement], None],
         set_status: Callable[[str, int, str], None], known: Callable[[str], bool]) -> tuple[CompactedTopicReader, AgreementFeed]:
    """A reader that applies every record of the topic to the engine (`apply`, `set_status`)."""
    ensure_topic(settings)
    agreement_feed = AgreementFeed(catalog, known, apply, set_status)
    return CompactedTopicReader(settings, AGREEMENTS_TOPIC, agreement_feed.take, "agreements-feed"), agreement_feed
