"""The processor's transform of each raw event: decode, decide for every possible recipient, encode
the released records, write an audit record per event, and send what cannot be decided on to the
DLQ with its original bytes and a reason. `Router.route` takes one message; `Router.route_many`
(the data plane's) a batch, a stage at a time, with the same outputs.

Pure of Kafka I/O (it returns `Output`s), so the data plane, the benchmark's bare loop and the
tests all run exactly this code.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime

from fastavro import parse_schema

from backbone.errors import (
    BadMagicByte,
    CorruptMessage,
    RegistryError,
    SerdeError,
    TruncatedMessage,
    UnknownSchemaId,
)
from backbone.events.catalog import AUDIT_EVENT, Catalog
from backbone.events.decoder import CompiledDecoder, compile_decoder
from backbone.events.serde import HEADER_SIZE, MAGIC, Decoder, Encoder, SchemaSource, schema_source
from backbone.kafka import dlq
from backbone.kafka.topics import AUDIT_TOPIC, QUALITY_MARKS_TOPIC, QUALITY_TOPIC, dlq_topic, raw_topic, shared_topic
from backbone.keys.keyring import OVERSIGHT_DOMAIN, Keyring
from backbone.keys.pseudonym import token_function
from backbone.policy.decision import ConsentState, Decision
from backbone.policy.engine import PolicyEngine
from backbone.policy.released import released_timestamp_ms
from backbone.quality.checks import QualityMonitor
from backbone.quality.marks import mark_record
from backbone.quality.window import QUALITY_SEAL_TYPE, window_seal_id
from processors.audit_record import AuditRecordWriter
from processors.outputs import Headers, Output
from processors.quality_gate import QualityGate

log = logging.getLogger(__name__)

DLQ_TOPIC = dlq_topic(dlq.PROCESSOR)
AUDIT_SUBJECT = f"{AUDIT_TOPIC}-value"
# The only header on a shared record: which agreement released it, as id@version.
AGREEMENT_HEADER = "agreement"
# On a record an agreement with `on_quality_breach: flag` delivers although its own quality window
# is below the agreement's bar: `breach:<dimension>[,<dimension>]`.
QUALITY_HEADER = "quality"
PERMIT = "permit"  # the audit record's outcome of a permit; a denial's outcome is its reason code
# Audit records leave the router unplaced (their bytes end with `audit_log.EMPTY_POSITION`): the
# data plane gives each its writer, checkpoint and leaf when it seals the batch.
UNPLACED = {"writer": "", "checkpoint": 0, "leaf": 0}

_SERDE_REASONS: dict[type[SerdeError], str] = {
    BadMagicByte: "bad_magic_byte",
    TruncatedMessage: "truncated_message",
    CorruptMessage: "corrupt_message",
}


# What `Router.route_many` routes: (topic, key, value, headers, partition, offset) of a raw message
Item = tuple[str, bytes | None, bytes | None, Headers | None, int | None, int | None]

# `_new(Output, (five fields))`: an `Output` without the named tuple's keyword-parsing `__new__`,
# the cheapest way to build the one or two outputs of every event (all five fields always given)
_new = tuple.__new__


class Rejected(Exception):
    """An event the processor cannot decide on; `reason` is the DLQ reason code, `detail` a
    non-personal code for the `error.detail` header (a schema id)."""

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def _where(exc: BaseException) -> str:
    trace = exc.__traceback__
    while trace is not None and trace.tb_next is not None:
        trace = trace.tb_next
    return f"{trace.tb_frame.f_code.co_filename}:{trace.tb_lineno}" if trace else "?"


class Router:
    """Routes raw events to their shared, audit and DLQ outputs. Built once per worker.

    `schemas` is where writer schemas are looked up and the audit and recipient schemas are
    registered: the schema registry in the product, `LocalSchemas` offline. Building a Router asks
    it nothing; `prepare()` registers up front what the first events would otherwise register.
    """

    def __init__(self, catalog: Catalog, engine: PolicyEngine, schemas: SchemaSource, keyring: Keyring) -> None:
        self.catalog = catalog
        self.engine = engine
        self.schemas = schema_source(schemas)
        self.decoder = Decoder(self.schemas)
        # Generated decoders per writer schema id (None: a schema left to fastavro), the fast path
        # of `_read`; `self.decoder` stays the reference and the source of every decode error.
        self._decoders: dict[int, CompiledDecoder | None] = {}
        self._audit_avro = catalog.internal_schema(AUDIT_EVENT)
        self._audit: Encoder | None = None
        self._audit_record: AuditRecordWriter | None = None
        self.keyring = keyring  # the data plane's checkpoints are signed with its signing key
        self._oversight, _ = token_function(keyring, OVERSIGHT_DOMAIN)
        self._topics = {raw_topic(event_type): event_type for event_type in catalog.events}
        self._subject_fields = {t: s.subject_field for t, s in catalog.events.items()}
        self._purposes = frozenset(catalog.purposes)
        self._encoders: dict[tuple[str, int, str], Encoder] = {}
        # (agreement id, version, event type) -> what its permits are released with (`_release`)
        self._releases: dict[tuple[str | None, int | None, str], tuple[Encoder, str, Headers, bool]] = {}
        self._headers: dict[tuple[str | None, int | None], Headers] = {}
        self._subjects_configured: set[str] = set()
        self.counts: Counter[str] = Counter()
        # decisions by (recipient, outcome: permit or the denial's reason), read by backbone.telemetry.metrics
        self.decided: Counter[tuple[str, str]] = Counter()
        self._quality: QualityMonitor | None = None
        self.worker_id = uuid.uuid4().hex[:12]  # names this worker's quality windows
        self.gate = QualityGate(self)  # agreements that require quality: records wait for their window

    @property
    def quality(self) -> QualityMonitor | None:
        """Data-quality checks on the raw record, before any treatment (None: no quality rules)."""
        return self._quality

    @quality.setter
    def quality(self, monitor: QualityMonitor | None) -> None:
        # Consistency rules name subjects by their oversight pseudonym: no national id in the marks.
        if monitor is not None:
            monitor.bind(self._subject_fields, self._oversight)
        self._quality = monitor

    def prepare(self) -> None:
        """Register the audit schema and the recipient schemas of the agreements in force now
        (start-up), not on the first event."""
        self._audit_writer()
        now = datetime.now(UTC)
        for agreement in self.engine.charter.agreements:
            if not agreement.in_force_at(now):
                continue
            for event_type in agreement.event_types:
                self._encoder(agreement.id, agreement.version, event_type, agreement.recipient)

    def _encoder(self, agreement_id: str, version: int, event_type: str, recipient: str) -> Encoder:
        key = (agreement_id, version, event_type)
        encoder = self._encoders.get(key)
        if encoder is None:
            avro = self.engine.recipient_schema(agreement_id, event_type, version)
            subject = f"{shared_topic(recipient, event_type)}-value"
            if subject not in self._subjects_configured:
                # A new agreement version may release other fields: each record names its writer
                # schema, so recipients read every version; the registry must not refuse the change.
                self.schemas.set_compatibility(subject, "NONE")
                self._subjects_configured.add(subject)
            encoder = Encoder(self.schemas.register(subject, avro), parse_schema(avro), avro)
            self._encoders[key] = encoder
        return encoder

    def _audit_encoder(self) -> Encoder:
        if self._audit is None:
            avro = self._audit_avro
            self._audit = Encoder(self.schemas.register(AUDIT_SUBJECT, avro), parse_schema(avro), avro)
        return self._audit

    def _audit_writer(self) -> AuditRecordWriter:
        if self._audit_record is None:
            self._audit_record = AuditRecordWriter.for_schema(self._audit_encoder(), self._audit_avro)
        return self._audit_record

    def route(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers | None,
              consent: ConsentState, now: datetime, *, partition: int | None = None,
              offset: int | None = None) -> list[Output]:
        """Every output for one raw message (`partition` and `offset` say where it was read, for
        the DLQ headers). Registry outages raise (retry later); bad input goes to the DLQ."""
        routed, unavailable = self.route_many([(topic, key, value, headers, partition, offset)], consent, now)
        if unavailable is not None:
            raise unavailable
        return routed[0]

    def route_many(self, items: Sequence[Item], consent: ConsentState, now: datetime) -> tuple[list[list[Output]], RegistryError | None]:
        """`route` of each (topic, key, value, headers, partition, offset), in order, a stage at a
        time: every event read and admitted, then named (its oversight pseudonym), then decided,
        then checked for quality and its outputs made. The same outputs as a `route` per message,
        for about a quarter less CPU: each stage's code stays hot across the batch, where one event
        after another through every stage ran it cold (`python -m bench.router`: `router_many`).
        Only the last stage changes state (quality windows, counts), in the messages' order, as
        `route` does. Returns the outputs of the messages routed, in order, and the registry outage
        that stopped the rest (None: all routed): those are to be read again."""
        routed: list[list[Output] | None] = []
        admitted: list[tuple[int, dict, str]] = []
        unavailable: RegistryError | None = None
        for index, (topic, key, value, headers, partition, offset) in enumerate(items):
            try:
                record, event_type = self._admit(topic, value)
            except Rejected as rejected:
                routed.append([self._dead_letter(rejected.reason, key, value, headers, topic, partition, offset, rejected.detail)])
                continue
            except RegistryError as exc:
                unavailable = exc
                break
            except Exception as exc:  # noqa: BLE001 - fail closed: nothing half-decided leaves the processor
                routed.append([self._failed(exc, items[index])])
                continue
            routed.append(None)
            admitted.append((index, record, event_type))
        # The subject's oversight pseudonym, for the audit record and the quality monitor's consistency marks
        subject_fields, oversight = self._subject_fields, self._oversight
        named: list[tuple[int, dict, str, str | None]] = []
        for index, record, event_type in admitted:
            try:
                subject_field = subject_fields[event_type]
                subject = record.get(subject_field) if subject_field else None
                named.append((index, record, event_type, oversight(subject) if subject else None))
            except Exception as exc:  # noqa: BLE001
                routed[index] = [self._failed(exc, items[index])]
        decide = self.engine.decide
        decided: list[tuple[int, dict, str, str | None, list[Decision]]] = []
        for index, record, event_type, token in named:
            try:
                decided.append((index, record, event_type, token, decide(record, consent, now)))
            except Exception as exc:  # noqa: BLE001
                routed[index] = [self._failed(exc, items[index])]
        quality, counts = self._quality, self.counts
        for index, record, event_type, token, decisions in decided:
            item = items[index]
            try:
                if quality is not None:
                    quality.observe(event_type, record, now, token)
                routed[index] = self._outputs(record, event_type, item[1], decisions, now, token, item[2])
            except RegistryError as exc:  # registering a new agreement version's schema: this one and the rest wait
                return routed[:index], exc  # type: ignore[return-value] - every message before it has its outputs
            except Exception as exc:  # noqa: BLE001
                routed[index] = [self._failed(exc, item)]
                continue
            counts["events"] += 1
        return routed, unavailable  # type: ignore[return-value] - every admitted message has its outputs now

    def _failed(self, exc: Exception, item: Item) -> Output:
        topic, key, value, headers, partition, offset = item
        if self.counts["dlq.transform_failed"] < 5:  # the type and place only: values may be personal
            log.error("event from %s could not be transformed (%s at %s); sent to %s", topic, type(exc).__name__,
                      _where(exc), DLQ_TOPIC)
        return self._dead_letter("transform_failed", key, value, headers, topic, partition, offset, type(exc).__name__)

    def _admit(self, topic: str, value: bytes | None) -> tuple[dict, str]:
        if value is None:
            raise Rejected("empty_value")
        try:
            record = self._read(value)
        except RegistryError:
            raise
        except UnknownSchemaId:
            raise Rejected("unknown_schema_id", str(int.from_bytes(value[1:HEADER_SIZE], "big"))) from None
        except SerdeError as exc:
            raise Rejected(_SERDE_REASONS.get(type(exc), "undecodable")) from None
        event_type = record.get("event_type")
        if event_type not in self.catalog.events or self._topics.get(topic) != event_type:
            raise Rejected("unknown_event_type")
        governance = record.get("governance")
        if not isinstance(governance, dict) or "lawful_basis" not in governance:
            raise Rejected("missing_governance")
        purposes = governance.get("purposes")
        if not purposes or not isinstance(purposes, list):
            raise Rejected("invalid_governance")
        if not self._purposes.issuperset(purposes):
            raise Rejected("unknown_purpose")
        return record, event_type

    def _read(self, value: bytes) -> dict:
        """The event's record, read by the generated decoder of its writer schema (the record fastavro
        reads, ~1.6x as fast: `bench.router`); bytes it has any doubt about are read again by the
        serde decoder, which gives the record or the error it always gave."""
        if len(value) > HEADER_SIZE and value[0] == MAGIC:
            schema_id = int.from_bytes(value[1:HEADER_SIZE], "big")
            try:
                decode = self._decoders[schema_id]
            except KeyError:
                decode = self._compile_decoder(schema_id)
            if decode is not None:
                try:
                    record, end = decode(value, HEADER_SIZE)
                except Exception:  # noqa: BLE001 - doubtful bytes: the serde decoder decides and names the error
                    pass
                else:
                    if end == len(value):
                        return record
        return self.decoder(value).record

    def _compile_decoder(self, schema_id: int) -> CompiledDecoder | None:
        # The serde decoder looks the id up first: registry outages and unknown ids raise as they always did.
        self.decoder.schema(schema_id)
        decode = self._decoders[schema_id] = compile_decoder(self.schemas.schema(schema_id))
        return decode

    def _outputs(self, record: dict, event_type: str, key: bytes | None, decisions: list[Decision], now: datetime,
                 subject_token: str | None, value: bytes | None = None) -> list[Output]:
        event_id = str(record["event_id"])  # fastavro reads the uuid logical type as uuid.UUID
        releases, decided = self._releases, self.decided
        outputs: list[Output] = []
        audited = decisions  # as decided after the quality gate: a waiting permit is audited as the denial it is for now
        waiting: list[str] = []  # recipients whose agreements require quality: the record waits for its window
        permits = denials = 0
        for position, decision in enumerate(decisions):
            if not decision.permitted:
                denials += 1
                decided[(decision.recipient, decision.reason or "denied")] += 1
                continue
            release = releases.get((decision.agreement_id, decision.agreement_version, event_type))
            if release is None:
                release = self._release(decision, event_type)
            if release[3]:  # the agreement requires quality: the gate says whether the record waits
                gated, waits = self.gate.decide(decision, event_type)
                if waits:
                    waiting.append(gated.recipient)
                if gated is not decision:
                    if audited is decisions:
                        audited = list(decisions)  # the engine's list stays as the engine made it
                    audited[position] = decision = gated
                    if not decision.permitted:
                        denials += 1
                        decided[(decision.recipient, decision.reason or "denied")] += 1
                        continue
            # the released record, as `shared_output` makes it (inline: no second look-up, no call per permit)
            permits += 1
            decided[(decision.recipient, PERMIT)] += 1
            released = decision.record
            pseudonym = decision.key
            outputs.append(_new(Output, (release[1], pseudonym.encode() if pseudonym else None, release[0](released), release[2],
                                    released_timestamp_ms(released.get("occurred_at")))))
        counts = self.counts
        if permits:
            counts["permit"] += permits
        if denials:
            counts["deny"] += denials
        if waiting and value is not None:
            outputs.append(self.gate.pending_output(event_type, value, waiting, now, record, subject_token))
        # One audit record per event, carrying every decision: the audit trail's cost is per event,
        # not per decision (bench.router measures both designs); written from cached parts
        # (`processors.audit_record`), byte for byte what the audit schema's encoder writes.
        audit = self._audit_record or self._audit_writer()
        outputs.append(_new(Output, (AUDIT_TOPIC, event_id.encode(), audit(event_id, event_type, record["provider"], subject_token,
                                                                     now, audited), None, 0)))
        return outputs

    def shared_output(self, decision: Decision, event_type: str, flag: bytes | None = None) -> Output:
        """A permitted record for the recipient's shared topic (`flag`: the quality header's value)."""
        release = self._releases.get((decision.agreement_id, decision.agreement_version, event_type))
        if release is None:
            release = self._release(decision, event_type)
        encoder, topic, headers, _ = release
        if flag is not None:  # a new list: the cached one is shared by every record of the version
            headers = [*headers, (QUALITY_HEADER, flag)]
        self.counts["permit"] += 1
        self.decided[(decision.recipient, PERMIT)] += 1
        # Keyed by the subject's pseudonym in the agreement's domain, never the raw topic key
        # (every producer can recompute that); the one header names the agreement only.
        return Output(topic, decision.key.encode() if decision.key else None, encoder(decision.record),
                      headers, released_timestamp_ms(decision.record.get("occurred_at")))

    def _release(self, decision: Decision, event_type: str) -> tuple[Encoder, str, Headers, bool]:
        """What every permit of one agreement version for one event type is released with, looked
        up once: (the recipient schema's encoder, the shared topic, the headers (one list per
        agreement version, shared by its records, never changed), whether it requires quality)."""
        agreement_id, version = decision.agreement_id, decision.agreement_version
        encoder = self._encoder(agreement_id, version, event_type, decision.recipient)  # type: ignore[arg-type]
        headers = self._headers.get((agreement_id, version))
        if headers is None:
            headers = self._headers[(agreement_id, version)] = [(AGREEMENT_HEADER, f"{agreement_id}@{version}".encode())]
        release = self._releases[(agreement_id, version, event_type)] = (
            encoder, shared_topic(decision.recipient, event_type), headers, bool(self.gate.bars(decision)[0]))
        return release

    def quality_outputs(self, now: datetime, everything: bool = False) -> list[Output]:
        """Each quality window closed by `now`: its record for `quality.windows` and the audit record
        that seals it (the window's bytes hashed into the event id), so a provider cannot dispute a
        scorecard later: `backbone audit verify` checks every landed window against its seal."""
        if self.quality is None:
            return []
        outputs: list[Output] = []
        audit = self._audit or self._audit_encoder()
        for window in self.quality.closed(now, everything=everything):
            value = window.to_bytes()
            outputs.append(Output(QUALITY_TOPIC, f"{window.event_type}|{window.hour}|{self.worker_id}".encode(), value))
            outputs.append(Output(AUDIT_TOPIC, window.event_type.encode(), audit({
                "event_id": window_seal_id(value), "event_type": QUALITY_SEAL_TYPE, "provider": window.provider,
                "subject_token": None, "decided_at": now, "decisions": [], **UNPLACED})))
            self.counts["quality.windows"] += 1
            self.gate.closed(window)
            breach = self.gate.hourly_breach(window, now)
            if breach is not None:
                outputs.append(breach)
        # consistency marks made in this batch (a registered death, by pseudonym): kept for a restart
        outputs.extend(Output(QUALITY_MARKS_TOPIC, *mark_record(*mark)) for mark in self.quality.take_marks())
        outputs += self.gate.close(now, everything)  # the gate's own windows, when shorter than the hour
        return outputs

    def _dead_letter(self, reason: str, key: bytes | None, value: bytes | None, headers: Headers | None, topic: str,
                     partition: int | None, offset: int | None, detail: str | None = None) -> Output:
        self.counts[f"dlq.{reason}"] += 1
        contract = dlq.headers(dlq.PROCESSOR, reason, topic, partition=partition, offset=offset, detail=detail,
                               original=headers)
        sealer = getattr(self, "dlq_sealer", None)  # the processor app's: raw bytes encrypted per subject (erasure)
        if sealer is not None and value:
            value, seal_id = sealer.seal(key, value)
            contract.append((dlq.SEALED, seal_id.encode()))
        return Output(DLQ_TOPIC, key, value if value is not None else b"", contract)
