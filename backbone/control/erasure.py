"""Right to erasure: one person's data removed from every copy the backbone keeps, the audit trail intact.

`backbone erase --subject ID --reason TEXT` (the app layer, an operator holding no pseudonym key)
runs `erase()`:
1. an erasure request to the processors (`backbone.control.erasure_requests`): a processor, which
   holds the domain keys, publishes the erasure record on the compacted `erasures` topic, keyed by
   the subject's oversight token (never the id): every processor worker reads the topic
   (`processors.erasure.ErasureTable`) and denies the subject's future events `erased`, except under
   an agreement that survives erasure; and it answers with the rows to delete (step 5);
2. the subject's consent records on `consent.changes` are tombstoned (they hold the raw id);
3. the keys of the processor's DLQ entries are destroyed (`backbone.kafka.dlq_keys`): the subject's,
   found by the SDK's topic key of the subject and by every other raw topic key the operator names
   (a provider that keys otherwise), and every key past the DLQ retention (unkeyed entries, everyone's):
   the original bytes of those entries can no longer be decrypted (crypto-shredding);
4. the subject's fraud alerts on `alerts.fraud` are tombstoned (keyed by the alert id, from kind,
   pseudonym and period, found in the recipient databases' alert tables before their rows go);
5. every row about the subject in every recipient database is deleted: rows are found through the
   columns that hold the subject's pseudonym (the charter says which: the event's subject field
   where an agreement pseudonymises it), under every key id of the domain still in the processor's
   keyring (rows carry tokens of whichever key was active), or the clear id where an identified
   agreement keeps it (`row_targets`, computed by the processor); then each table's deleted rows
   are rewritten away on disk (`APPLY DELETED MASK`);
5b. the stores the app layer keeps about people by oversight token (`also`: the portal's grievances,
   `app.portal.grievance_book.forget`), each given every oversight token of the subject;
6. an `erase` record on `audit.operations` (who, why, rows removed per database, keys destroyed).

The audit trail holds oversight tokens only, no personal data: it is not touched, so it stays
verifiable, and `backbone audit subject` still lists the past disclosures.

Pure planning (`row_targets`, `token_under_key`) is apart from I/O (`delete_rows`, `publish`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from backbone.audit import operations
from backbone.clickhouse.cluster import Cluster, cluster_of, local_table, on_cluster
from backbone.errors import BackboneError, KafkaUnavailableError
from backbone.kafka.topics import ALERTS_TOPIC, CONSENT_TOPIC, ERASURES_TOPIC, Topics, subject_partition
from backbone.keys.keyring import OVERSIGHT_DOMAIN, KeyKind, Keyring
from backbone.keys.provider import is_token_provider
from backbone.keys.pseudonym import encrypt_function, token_function
from backbone.policy import names
from backbone.policy.agreements import Charter
from backbone.settings import Settings

log = logging.getLogger(__name__)

# Tables a sink keeps beside the event tables whose `subject` column is a subject's pseudonym.
SUBJECT_TABLES: tuple[str, ...] = names.RESERVED_TABLES
SUBJECT_COLUMN = "subject"


class ErasureError(BackboneError):
    """An erasure could not be completed; the message says which step and what to do."""


# --- tokens under a chosen key --------------------------------------------------------------------
class _OneKey:
    """A keyring view whose only "active" key is one chosen key id: the pseudonym functions then make
    tokens under that key, byte for byte as they did while it was active."""

    def __init__(self, keyring: Keyring, kind: KeyKind, owner: str, key_id: str) -> None:
        self._key = (key_id, keyring.key_by_id(kind, owner, key_id))

    def active_key(self, kind: KeyKind, owner: str) -> tuple[str, bytes]:
        return self._key


def key_ids(keyring: Keyring, kind: KeyKind, owner: str) -> list[str]:
    """Every key id of one domain or provider still in the keyring, oldest first."""
    return [info.key_id for info in keyring.keys() if info.kind == kind and info.owner == owner]


def token_function_under_key(keyring: Keyring, domain: str, key_id: str) -> Callable[[Any], str]:
    """value -> its pseudonym in `domain` under key `key_id` (active or not)."""
    if is_token_provider(keyring):
        return token_function(keyring, domain, key_id)[0]
    return token_function(_OneKey(keyring, "domain", domain, key_id), domain)[0]  # type: ignore[arg-type]


def token_under_key(keyring: Keyring, domain: str, key_id: str, value: Any) -> str:
    """The pseudonym `value` had in `domain` while key `key_id` was active."""
    return token_function_under_key(keyring, domain, key_id)(value)


def tokens_in_domain(keyring: Keyring, domain: str, value: Any) -> list[str]:
    """`value`'s pseudonym in `domain` under every key id of the domain still in the keyring."""
    return [token_under_key(keyring, domain, key_id, value) for key_id in key_ids(keyring, "domain", domain)]


def encryptions(keyring: Keyring, provider: str, domain: str, field_name: str, value: Any) -> list[str]:
    """`value` as the `encrypt` treatment released it for (provider, domain, field), under every
    key of the provider (AES-SIV is deterministic, so the stored token is found by equality)."""
    found = []
    for key_id in key_ids(keyring, "provider", provider):
        if is_token_provider(keyring):
            found.append(encrypt_function(keyring, provider, domain, field_name, key_id)[0](value))
            continue
        view = _OneKey(keyring, "provider", provider, key_id)
        found.append(encrypt_function(view, provider, domain, field_name)[0](value))  # type: ignore[arg-type]
    return found


def oversight_tokens(keyring: Keyring, subject: str) -> list[str]:
    """The subject's oversight tokens, the active key's first (how the topic keys the erasure)."""
    _, active = token_function(keyring, OVERSIGHT_DOMAIN)
    ids = [active] + [key_id for key_id in key_ids(keyring, "domain", OVERSIGHT_DOMAIN) if key_id != active]
    return [token_under_key(keyring, OVERSIGHT_DOMAIN, key_id, subject) for key_id in ids]


# --- the erasure record ---------------------------------------------------------------------------
@dataclass(slots=True, frozen=True)
class ErasureRecord:
    """What `erasures` holds about one erased subject: tokens, never the id."""

    token: str  # the oversight token under the active key: the record's Kafka key
    tokens: tuple[str, ...]  # the oversight tokens under every oversight key id (rotations)
    at: datetime
    by: str
    action_id: str
    dlq_handles: tuple[str, ...] = ()  # the subject's DLQ key handles (`backbone.kafka.dlq.subject_handle`)

    def to_json(self) -> bytes:
        return json.dumps({
            "kind": "erasure", "token": self.token, "tokens": list(self.tokens), "at": self.at.isoformat(),
            "by": self.by, "action_id": self.action_id, "dlq_handles": list(self.dlq_handles),
        }).encode()

    @classmethod
    def from_json(cls, value: bytes) -> ErasureRecord:
        """Parse a record; `ValueError` when it is not one (never quoting its content)."""
        try:
            data = json.loads(value)
            token = data["token"]
            tokens = tuple(str(item) for item in data.get("tokens") or [token])
            return cls(str(token), tokens, datetime.fromisoformat(data["at"]), str(data["by"]), str(data.get("action_id", "")),
                       tuple(str(item) for item in data.get("dlq_handles") or ()))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ValueError("not an erasure record (JSON with token, tokens, at, by)") from None


def ensure_topic(settings: Settings) -> None:
    """The compacted `erasures` topic. Never tombstone it: compaction would then forget an erasure."""
    Topics(settings).ensure(ERASURES_TOPIC, partitions=1, config={"cleanup.policy": "compact"})


def _produce(settings: Settings, topic: str, records: Iterable[tuple[bytes, bytes | None]], what: str, *,
             partition: int = -1) -> int:
    producer = Producer(settings.producer_config(**{"linger.ms": 0}))
    failures: list[str] = []

    def delivered(error: KafkaError | None, message: Message) -> None:
        if error is not None:
            failures.append(error.str())

    count = 0
    for key, value in records:
        producer.produce(topic, value, key, partition=partition, on_delivery=delivered)
        producer.poll(0)
        count += 1
    if producer.flush(settings.kafka_timeout_s * 3) or failures:
        raise KafkaUnavailableError(f"{what} on {topic} not acknowledged by Kafka at {settings.kafka_bootstrap}"
                                    f"{' (' + failures[0] + ')' if failures else ''}; run the erasure again (it is idempotent)")
    return count


def publish(settings: Settings, record: ErasureRecord) -> None:
    """Publish the erasure on `erasures` and wait for the cluster to acknowledge it."""
    ensure_topic(settings)
    _produce(settings, ERASURES_TOPIC, [(record.token.encode(), record.to_json())], "the erasure record")


def forget_consent(settings: Settings, subject_key: bytes, purposes: Iterable[str]) -> int:
    """Tombstones for the subject's consent records (keyed `<subject key>:<purpose>`, holding the raw id)
    on the partition the producers put them on (the subject key's): compaction then removes them; a
    worker reads a tombstone as a withdrawal (fail closed)."""
    partition = subject_partition(subject_key, Topics(settings).describe(CONSENT_TOPIC).partitions)
    return _produce(settings, CONSENT_TOPIC, [(subject_key + b":" + p.encode(), None) for p in purposes], "consent tombstones",
                    partition=partition)


def alert_keys(client: Any, targets: Iterable[RowTarget]) -> list[bytes]:
    """The `alerts.fraud` keys (alert ids) of the alerts the targets' alert tables hold about the
    subject: raised (`alerts`) or published (`alerts_published`); tables not there yet are skipped."""
    wanted = [t for t in targets if t.table in SUBJECT_TABLES and t.column == SUBJECT_COLUMN and t.values]
    if not wanted:
        return []
    existing = {tuple(row) for row in client.query("SELECT database, name FROM system.tables WHERE database IN {d:Array(String)}",
                                                   parameters={"d": sorted({t.database for t in wanted})}).result_rows}
    found: set[str] = set()
    for target in wanted:
        if (target.database, target.table) in existing:
            rows = client.query(f"SELECT DISTINCT kind, subject, period FROM {_quote(target.database)}.{_quote(target.table)} "
                                "WHERE subject IN {v:Array(String)}", parameters={"v": list(target.values)}).result_rows
            found.update(names.alert_id(str(kind), str(subject), str(period)) for kind, subject, period in rows)
    return [alert.encode() for alert in sorted(found)]


def forget_alerts(settings: Settings, keys: Iterable[bytes]) -> int:
    """Tombstones for the subject's alerts on `alerts.fraud` (compacted: `alerts_topic_config`)."""
    chosen = list(keys)
    return _produce(settings, ALERTS_TOPIC, [(key, None) for key in chosen], "alert tombstones") if chosen else 0


# --- rows in the recipient databases --------------------------------------------------------------
@dataclass(slots=True, frozen=True)
class RowTarget:
    """Rows to delete: `column IN values` in one table of one recipient database."""

    database: str
    table: str
    column: str
    values: tuple[str, ...]


def row_targets(charter: Charter, keyring: Keyring, subject: str, database_prefix: str = "") -> list[RowTarget]:
    """Where the subject's rows are, from the charter alone: for every agreement version (any status:
    rows of past versions remain), the event's subject field where the agreement releases it
    pseudonymised (every key of its domain), encrypted (every key of its provider) or in clear; and
    each recipient database's alert tables by the subject's pseudonyms in its domains. A subject
    field masked or dropped holds nothing to find the rows by (masking is not reversible)."""
    wanted: dict[tuple[str, str, str], list[str]] = {}
    domains: dict[str, set[str]] = {}

    def add(database: str, table: str, column: str, values: Iterable[str]) -> None:
        bucket = wanted.setdefault((database, table, column), [])
        bucket.extend(value for value in values if value not in bucket)

    for agreement in charter.agreements:
        database = f"{database_prefix}{names.sanitise(agreement.recipient)}"
        for event_type in agreement.event_types:
            schema = charter.catalog.events.get(event_type)
            subject_field = schema.subject_field if schema is not None else None
            treatment = agreement.fields.get(subject_field) if subject_field else None
            if treatment is None:
                continue
            table = names.table_name(event_type)
            if treatment.name == "pseudonymise" and agreement.domain:
                domains.setdefault(database, set()).add(agreement.domain)
                add(database, table, subject_field, tokens_in_domain(keyring, agreement.domain, subject))  # type: ignore[arg-type]
            elif treatment.name == "encrypt":
                bound = agreement.domain or f"@{agreement.recipient}"
                add(database, table, subject_field, encryptions(keyring, agreement.provider, bound, subject_field, subject))  # type: ignore[arg-type]
            elif treatment.name == "keep":
                add(database, table, subject_field, [subject])  # type: ignore[arg-type]
    for database, used in domains.items():
        tokens = [token for domain in sorted(used) for token in tokens_in_domain(keyring, domain, subject)]
        for table in SUBJECT_TABLES:
            add(database, table, SUBJECT_COLUMN, tokens)
    return [RowTarget(d, t, c, tuple(values)) for (d, t, c), values in sorted(wanted.items())]


def _quote(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def delete_sql(target: RowTarget, cluster: Cluster | None = None) -> str:
    """The lightweight `DELETE` of a target's rows (`{values:Array(String)}` bound); on a cluster
    `ON CLUSTER`, in the shards' local tables (a `Distributed` table takes no `DELETE`)."""
    name = f"{_quote(target.database)}.{_quote(local_table(cluster, target.table))}"
    return f"DELETE FROM {name}{on_cluster(cluster)} WHERE {_quote(target.column)} IN {{values:Array(String)}}"


def purge_sql(database: str, table: str, cluster: Cluster | None = None) -> str:
    """Rewrite a table's parts without its deleted rows, so the bytes leave the disk too."""
    name = f"{_quote(database)}.{_quote(local_table(cluster, table))}"
    return f"ALTER TABLE {name}{on_cluster(cluster)} APPLY DELETED MASK SETTINGS mutations_sync = 2"


def delete_rows(client: Any, targets: Iterable[RowTarget], purge: bool = True, cluster: Cluster | None = None) -> dict[str, int]:
    """Delete the targets' rows (ClickHouse lightweight `DELETE`), then rewrite each touched table's
    parts without them (`APPLY DELETED MASK`, when `purge`) so the bytes leave the disk, not only the
    results. Tables or columns that do not exist (nothing landed yet) are skipped. Returns rows
    removed per database (every copy counted, duplicates not yet merged included). On a `cluster`
    both run `ON CLUSTER` (`delete_sql`, `purge_sql`); rows are counted through the table itself."""
    chosen = list(targets)
    databases = sorted({target.database for target in chosen})
    existing = set()
    if databases:
        existing = {tuple(row) for row in client.query(
            "SELECT database, table, name FROM system.columns WHERE database IN {d:Array(String)}",
            parameters={"d": databases}).result_rows}
    removed: dict[str, int] = {database: 0 for database in databases}
    touched: list[tuple[str, str]] = []
    for target in chosen:
        if (target.database, target.table, target.column) not in existing or not target.values:
            continue
        name = f"{_quote(target.database)}.{_quote(target.table)}"
        where = f"{_quote(target.column)} IN {{values:Array(String)}}"
        parameters = {"values": list(target.values)}
        count = int(client.query(f"SELECT count() FROM {name} WHERE {where}", parameters=parameters).result_rows[0][0])
        if not count:
            continue
        client.command(delete_sql(target, cluster), parameters=parameters)
        removed[target.database] += count
        if (target.database, target.table) not in touched:
            touched.append((target.database, target.table))
    if purge:
        for database, table in touched:
            client.command(purge_sql(database, table, cluster))
    return removed


@dataclass(slots=True, frozen=True)
class RecordedErasure:
    """An `erase` operation as the audit database holds it."""

    at: datetime
    actor: str
    outcome: str
    reason: str
    rows: str  # rows removed in all, as recorded


def recorded_erasures(client: Any, database_prefix: str, token: str) -> list[RecordedErasure]:
    """The erasures of the subject with oversight token `token` landed in `<prefix>audit.operations`
    (for `backbone audit subject`: past disclosures, then the erasure), oldest first."""
    database = f"{database_prefix}{names.AUDIT}"
    present = client.query("SELECT count() FROM system.tables WHERE database = {d:String} AND name = 'operations'",
                           parameters={"d": database}).result_rows[0][0]
    if not present:
        return []
    rows = client.query(
        f"SELECT at, actor, outcome, ifNull(reason, ''), details['rows_total'] FROM {_quote(database)}.`operations` FINAL "
        "WHERE action = 'erase' AND target = {t:String} ORDER BY at", parameters={"t": token}).result_rows
    return [RecordedErasure(at, actor, outcome, reason, total) for at, actor, outcome, reason, total in rows]


# --- the whole erasure ----------------------------------------------------------------------------
@dataclass
class ErasureReport:
    """What one erasure did: the oversight token it concerned and what it removed."""

    token: str
    rows: dict[str, int] = field(default_factory=dict)  # database -> rows removed
    dlq_keys: int = 0  # the subject's DLQ keys destroyed
    expired_dlq_keys: int = 0  # DLQ keys past the DLQ retention destroyed (anyone's)
    consent_records: int = 0  # consent tombstones written
    alerts: int = 0  # fraud alert tombstones written
    others: dict[str, int] = field(default_factory=dict)  # an `also` store -> its records removed or redacted
    seconds: dict[str, float] = field(default_factory=dict)

    def details(self) -> dict[str, str]:
        found = {f"rows.{database}": str(count) for database, count in sorted(self.rows.items())}
        return {**found, "rows_total": str(sum(self.rows.values())), "dlq_keys_destroyed": str(self.dlq_keys),
                "expired_dlq_keys_destroyed": str(self.expired_dlq_keys), "alerts_removed": str(self.alerts),
                "consent_records_removed": str(self.consent_records),
                **{f"{name}_removed": str(count) for name, count in sorted(self.others.items())},
                **{f"seconds.{step}": f"{value:.3f}" for step, value in self.seconds.items()}}


def erase(settings: Settings, charter: Charter, client: Any, subject: str, reason: str, *,
          subject_key: bytes | None = None, topic_keys: Iterable[bytes] = (), actor: str | None = None,
          answer_timeout_s: float = 60.0, also: Mapping[str, Callable[[Settings, tuple[str, ...], str], int]] | None = None) -> ErasureReport:
    """Erase one subject everywhere (the steps in this module's doc) and record it on `audit.operations`.

    Needs no key: a processor computes the subject's tokens (`erasure_requests`) and answers within
    `answer_timeout_s`. `subject_key` is the producers' topic key of the subject (the keyed hash its
    raw events and consent records carry): with it, the subject's consent records and DLQ keys are
    found too. `topic_keys` are the subject's other raw topic keys (a provider that keys by something
    else): the DLQ keys of entries under those are destroyed too. `also` names the app layer's stores
    of people by oversight token: each is called with the settings, the subject's oversight tokens and the actor.
    Idempotent: running it again removes whatever landed meanwhile. Raises `ErasureError` after
    recording the outcome `failed` when a step fails."""
    from backbone.control import erasure_requests
    from backbone.kafka import dlq

    subject = subject.strip()
    if not subject:
        raise ErasureError("--subject must name the person to erase")
    if not reason.strip():
        raise ErasureError("--reason must say why (the request's reference); it is recorded in the audit trail")
    who = actor or operations.actor(settings)
    handles = tuple(dict.fromkeys(dlq.subject_handle(key) for key in (subject_key, *topic_keys) if key))
    action = operations.OperatorAction("erase", who, "", "done", reason.strip())
    report = ErasureReport("")
    target = f"request {action.action_id}"  # what the trail names until a processor says the subject's token
    step = "asking a processor to compute the subject's tokens"
    try:
        started = time.perf_counter()
        erasure_requests.request(settings, erasure_requests.ErasureRequest(action.action_id, subject, action.at, who, handles))
        work = erasure_requests.await_work(settings, action.action_id, answer_timeout_s)
        report.token = target = work.token
        report.seconds["publish"] = time.perf_counter() - started
        if subject_key:
            step = "removing consent records"
            report.consent_records = forget_consent(settings, subject_key, charter.catalog.purposes)
        step = "destroying DLQ keys"
        started = time.perf_counter()
        report.dlq_keys = dlq.shred(settings, handles)
        report.expired_dlq_keys = dlq.expire(settings)
        report.seconds["dlq"] = time.perf_counter() - started
        targets = list(work.targets)
        step = "removing fraud alerts"  # before the rows: they are how the alerts are found again
        report.alerts = forget_alerts(settings, alert_keys(client, targets))
        step = "deleting rows"
        started = time.perf_counter()
        report.rows = delete_rows(client, targets, cluster=cluster_of(settings))
        report.seconds["rows"] = time.perf_counter() - started
        for name, forget in (also or {}).items():
            step = f"removing {name}"
            report.others[name] = forget(settings, work.tokens, who)
    except Exception as exc:
        operations.record(settings, operations.OperatorAction(
            "erase", who, target, "failed", reason.strip(), {**report.details(), "failed_step": step, "error": type(exc).__name__},
            action_id=action.action_id, at=action.at))
        # Our own errors say what to fix; others (ClickHouse's) may quote the values: their type only.
        cause = str(exc) if isinstance(exc, BackboneError) else type(exc).__name__
        raise ErasureError(f"erasure failed while {step} ({cause}); fix the cause and run `backbone erase` again:"
                           " it is idempotent") from None
    operations.record(settings, operations.OperatorAction("erase", who, target, "done", reason.strip(), report.details(),
                                                          action_id=action.action_id, at=action.at))
    return report
