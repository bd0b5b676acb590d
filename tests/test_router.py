"""The processor's per-event routing as a specification, with no broker and no registry: the demo
charter, a keyring made for it, and schemas registered in `LocalSchemas`."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from fastavro import parse_schema

from backbone.errors import RegistryUnavailable, SchemaIncompatible, UnknownSchemaId
from backbone.events.catalog import AUDIT_EVENT, Catalog, load_catalog
from backbone.events.serde import Decoder, Encoder, LocalSchemas, encoder_for
from backbone.kafka import dlq
from backbone.kafka.topics import AUDIT_TOPIC, raw_topic, shared_topic
from backbone.keys.keyring import Keyring
from backbone.policy.agreements import RELEASED_HEADER, Charter, load_agreements
from backbone.policy.decision import NoConsent
from backbone.policy.engine import PolicyEngine
from backbone.settings import PROJECT_ROOT
from processors.router import DLQ_TOPIC, Output, Router
from producers.synthetic.samples import sample_event

NOW = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)
TAX = "tax.income_declared"
WELFARE = "welfare.benefit_claimed"
FRAUD_PURPOSE = "fraud_prevention_and_detection"


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog(PROJECT_ROOT / "schemas")


@pytest.fixture(scope="module")
def charter(catalog: Catalog) -> Charter:
    return load_agreements(PROJECT_ROOT / "agreements", catalog)


@pytest.fixture(scope="module")
def keyring(charter: Charter) -> Keyring:
    return Keyring.for_charter(charter)


@pytest.fixture
def schemas() -> LocalSchemas:
    return LocalSchemas()


@pytest.fixture
def router(catalog: Catalog, charter: Charter, keyring: Keyring, schemas: LocalSchemas) -> Router:
    return Router(catalog, PolicyEngine(charter, keyring), schemas, keyring)


def event(catalog: Catalog, event_type: str, seed: int = 1, **fields: Any) -> dict[str, Any]:
    record = sample_event(catalog.events[event_type], random.Random(seed))
    record["event_id"] = str(uuid.uuid4())
    return {**record, **fields}


def encode(schemas: LocalSchemas, catalog: Catalog, event_type: str, record: dict[str, Any]) -> bytes:
    """`record` as an agency producer writes it: Confluent wire format under `raw.<type>-value`."""
    schema = catalog.events[event_type]
    return encoder_for(schemas, f"{raw_topic(event_type)}-value", schema.avro)(record)


def route(router: Router, topic: str, value: bytes | None, key: bytes | None = b"subject-key",
          headers: list[tuple[str, bytes]] | None = None, **where: int) -> list[Output]:
    return router.route(topic, key, value, headers, NoConsent(), NOW, **where)


def audit_records(schemas: LocalSchemas, outputs: list[Output]) -> list[dict[str, Any]]:
    """The decisions of the audit output, one dict per recipient as the `audit.decisions` view shows them."""
    decode = Decoder(schemas)
    events = [decode(output.value).record for output in outputs if output.topic == AUDIT_TOPIC]
    assert len(events) <= 1, "one audit record per event"
    return [
        {**{k: v for k, v in event.items() if k != "decisions"}, **entry,
         "decision": "permit" if entry["outcome"] == "permit" else "deny",
         "reason": None if entry["outcome"] == "permit" else entry["outcome"]}
        for event in events for entry in event["decisions"]
    ]


# -- permitted and denied events --------------------------------------------------------------


def test_permitted_event_is_shared_with_only_the_released_fields(
    router: Router, schemas: LocalSchemas, catalog: Catalog, charter: Charter
) -> None:
    record = event(catalog, TAX)
    outputs = route(router, raw_topic(TAX), encode(schemas, catalog, TAX, record))

    shared = [output for output in outputs if output.topic == shared_topic("fraud", TAX)]
    assert len(shared) == 1
    headers = dict(shared[0].headers or [])
    agreement_id, version = headers["agreement"].decode().split("@")
    agreement = charter.get(agreement_id, int(version))
    released = Decoder(schemas)(shared[0].value).record
    assert set(released) == set(RELEASED_HEADER) | set(agreement.released_names())
    assert "name" not in released and "governance" not in released
    assert released["national_id"] != record["national_id"]  # pseudonymised in the fraud domain
    assert record["bank_account"].encode() not in shared[0].value
    # keyed by the subject's pseudonym in the fraud domain, never by the raw topic key
    assert shared[0].key == released["national_id"].encode() != b"subject-key"
    assert list(headers) == ["agreement"]


def test_every_decision_has_one_audit_record_without_personal_data(
    router: Router, schemas: LocalSchemas, catalog: Catalog
) -> None:
    record = event(catalog, TAX)
    outputs = route(router, raw_topic(TAX), encode(schemas, catalog, TAX, record))

    audit = audit_records(schemas, outputs)
    by_recipient = {entry["recipient"]: entry for entry in audit}
    assert len(by_recipient) == len(audit)  # one per decision
    assert by_recipient["fraud"]["decision"] == "permit" and by_recipient["fraud"]["reason"] is None
    assert by_recipient["statistics"]["decision"] == "deny"
    assert by_recipient["statistics"]["reason"] == "agreement_inactive"  # tax-to-statistics is a draft
    for entry in audit:
        assert str(entry["event_id"]) == record["event_id"]
        assert entry["subject_token"] and entry["subject_token"] != record["national_id"]
    for output in outputs:
        if output.topic == AUDIT_TOPIC:
            assert output.key == record["event_id"].encode()
            assert record["national_id"].encode() not in output.value
            assert record["name"].encode() not in output.value


def test_the_decision_counts_metrics_read_are_the_audited_outcomes(
    router: Router, schemas: LocalSchemas, catalog: Catalog
) -> None:
    """`router.decided` (the metrics' decisions by recipient and outcome) and `counts` are tallied
    in the hot path apart from the audit record: they must say what the audit trail says."""
    from collections import Counter

    audited: Counter[tuple[str, str]] = Counter()
    shared = 0
    for seed, event_type in enumerate([TAX, WELFARE, TAX, WELFARE, TAX] * 4):
        outputs = route(router, raw_topic(event_type), encode(schemas, catalog, event_type, event(catalog, event_type, seed)))
        audited.update((entry["recipient"], entry["outcome"]) for entry in audit_records(schemas, outputs))
        shared += sum(1 for output in outputs if output.topic.startswith("shared."))

    assert router.decided == audited
    assert router.counts["permit"] == shared == audited.total() - router.counts["deny"] > 0
    assert router.counts["deny"] > 0 and router.counts["events"] == 20


def test_denied_event_yields_audit_records_only(router: Router, schemas: LocalSchemas, catalog: Catalog) -> None:
    governance = {"lawful_basis": "legal_obligation", "purposes": ["official_statistics"], "consent_id": None}
    record = event(catalog, TAX, governance=governance)
    outputs = route(router, raw_topic(TAX), encode(schemas, catalog, TAX, record))

    assert outputs and {output.topic for output in outputs} == {AUDIT_TOPIC}
    reasons = {entry["recipient"]: entry["reason"] for entry in audit_records(schemas, outputs)}
    assert reasons["fraud"] == "purpose_not_permitted"
    assert all(entry["decision"] == "deny" for entry in audit_records(schemas, outputs))


def test_consent_based_sharing_without_consent_is_denied(router: Router, schemas: LocalSchemas, catalog: Catalog) -> None:
    governance = {"lawful_basis": "consent", "purposes": ["scientific_research"], "consent_id": "c-1"}
    record = event(catalog, WELFARE, governance=governance, benefit_type="income_support")
    outputs = route(router, raw_topic(WELFARE), encode(schemas, catalog, WELFARE, record))

    assert {output.topic for output in outputs} == {AUDIT_TOPIC}
    reasons = {entry["recipient"]: entry["reason"] for entry in audit_records(schemas, outputs)}
    assert reasons["research"] == "consent_missing"


# -- bad input goes to the DLQ ----------------------------------------------------------------


def bare_event(schemas: LocalSchemas) -> bytes:
    """An event without governance, under a schema of its own."""
    bare = {"type": "record", "name": "Bare", "namespace": "tests", "fields": [
        {"name": "event_id", "type": "string"}, {"name": "event_type", "type": "string"}]}
    encode_bare = Encoder(schemas.register("tests.bare-value", bare), parse_schema(bare))
    return encode_bare({"event_id": str(uuid.uuid4()), "event_type": TAX})


BAD_INPUT = {
    "bad_magic_byte": lambda schemas, catalog: (raw_topic(TAX), b"\x07not avro at all"),
    "truncated_message": lambda schemas, catalog: (raw_topic(TAX), b"\x00\x00"),
    "unknown_schema_id": lambda schemas, catalog: (raw_topic(TAX), b"\x00\x00\x0f\x42\x3f\x02"),
    "corrupt_message": lambda schemas, catalog: (raw_topic(TAX), encode(schemas, catalog, TAX, event(catalog, TAX)) + b"\x00"),
    "empty_value": lambda schemas, catalog: (raw_topic(TAX), None),
    "unknown_event_type": lambda schemas, catalog: (raw_topic(TAX), encode(schemas, catalog, WELFARE, event(catalog, WELFARE))),
    "missing_governance": lambda schemas, catalog: (raw_topic(TAX), bare_event(schemas)),
    "unknown_purpose": lambda schemas, catalog: (raw_topic(TAX), encode(schemas, catalog, TAX, event(
        catalog, TAX, governance={"lawful_basis": "legal_obligation", "purposes": ["marketing"], "consent_id": None}))),
}


@pytest.mark.parametrize("reason", sorted(BAD_INPUT))
def test_bad_input_goes_to_the_dlq_with_its_original_bytes_and_the_contract_headers(
    reason: str, router: Router, schemas: LocalSchemas, catalog: Catalog
) -> None:
    topic, value = BAD_INPUT[reason](schemas, catalog)
    original = [("trace", reason.encode())]
    outputs = route(router, topic, value, key=b"k-" + reason.encode(), headers=original, partition=3, offset=41)

    assert len(outputs) == 1
    letter = outputs[0]
    assert letter.topic == DLQ_TOPIC == "dlq.processor"
    assert letter.key == b"k-" + reason.encode()
    assert letter.value == (value if value is not None else b"")
    assert letter.headers is not None and letter.headers[: len(original)] == original
    contract = dict(letter.headers[len(original):])
    assert contract[dlq.STAGE] == dlq.PROCESSOR.encode()
    assert contract[dlq.REASON] == reason.encode() and reason in dlq.REASONS
    assert contract[dlq.SOURCE_TOPIC] == topic.encode()
    assert contract[dlq.SOURCE_PARTITION] == b"3"
    assert contract[dlq.SOURCE_OFFSET] == b"41"
    assert set(contract) <= set(dlq.CONTRACT_HEADERS)
    assert router.counts[f"dlq.{reason}"] == 1


def test_an_unknown_schema_id_is_named_in_the_dlq_detail(router: Router) -> None:
    [letter] = route(router, raw_topic(TAX), b"\x00\x00\x0f\x42\x3f\x02")
    assert dict(letter.headers or [])[dlq.DETAIL] == str(0x0F423F).encode()


def test_dlq_headers_leave_out_partition_and_offset_when_not_known(router: Router) -> None:
    [letter] = route(router, raw_topic(TAX), b"\x07junk", headers=None)
    assert [name for name, _ in letter.headers or []] == [dlq.STAGE, dlq.REASON, dlq.SOURCE_TOPIC]


def test_bad_input_does_not_stop_the_next_event(router: Router, schemas: LocalSchemas, catalog: Catalog) -> None:
    route(router, raw_topic(TAX), b"\x07junk")
    outputs = route(router, raw_topic(TAX), encode(schemas, catalog, TAX, event(catalog, TAX)))
    assert shared_topic("fraud", TAX) in {output.topic for output in outputs}
    assert router.counts["events"] == 1 and router.counts["dlq.bad_magic_byte"] == 1


def test_a_batch_routed_a_stage_at_a_time_gives_what_routing_each_event_gives(
        catalog: Catalog, charter: Charter, keyring: Keyring, schemas: LocalSchemas) -> None:
    """`route_many` (the data plane's) against `route` per message on twin routers: the same outputs,
    byte for byte and in order, bad input and a failing transform among good events, and the same counts."""
    rng = random.Random(5)
    items = []
    for index in range(60):
        event_type = rng.choice([TAX, WELFARE, "registry.address_changed"])
        items.append((raw_topic(event_type), f"k{index}".encode(), encode(schemas, catalog, event_type, event(catalog, event_type, seed=index)),
                      None, index % 3, 100 + index))
    for index, reason in enumerate(sorted(BAD_INPUT)):
        topic, value = BAD_INPUT[reason](schemas, catalog)
        items.insert(7 * index + 3, (topic, f"bad-{reason}".encode(), value, [("trace", b"x")], 1, 9))
    one, many = (Router(catalog, PolicyEngine(charter, keyring), schemas, keyring) for _ in range(2))
    for router in (one, many):  # a transform that fails for one event only: it goes to the DLQ, the rest is decided
        router._oversight = lambda subject, pseudonym=router._oversight: 1 / 0 if subject == "boom" else pseudonym(subject)  # noqa: SLF001
    items.append((raw_topic(TAX), b"boom", encode(schemas, catalog, TAX, event(catalog, TAX, national_id="boom")), None, 0, 1))
    expected = [one.route(topic, key, value, headers, NoConsent(), NOW, partition=partition, offset=offset)
                for topic, key, value, headers, partition, offset in items]
    routed, unavailable = many.route_many(items, NoConsent(), NOW)
    assert unavailable is None and routed == expected
    assert many.counts == one.counts and many.decided == one.decided
    assert many.counts["events"] == 60 and many.counts["dlq.transform_failed"] == 1
    assert sum(n for name, n in many.counts.items() if name.startswith("dlq.")) == len(BAD_INPUT) + 1


# -- the schema source ------------------------------------------------------------------------


class OutageSchemas(LocalSchemas):
    """Local schemas behind a registry that stops answering when `down` is set."""

    down = False

    def _check(self) -> None:
        if self.down:
            raise RegistryUnavailable("schema registry at http://127.0.0.1:9 did not answer (ConnectError)")

    def register(self, subject: str, avro: dict[str, Any]) -> int:
        self._check()
        return super().register(subject, avro)

    def set_compatibility(self, subject: str, level: str) -> None:
        self._check()
        super().set_compatibility(subject, level)

    def schema(self, schema_id: int) -> dict[str, Any]:
        self._check()
        return super().schema(schema_id)


def test_a_router_is_built_without_asking_its_schema_source(catalog: Catalog, charter: Charter, keyring: Keyring) -> None:
    schemas = OutageSchemas()
    schemas.down = True
    Router(catalog, PolicyEngine(charter, keyring), schemas, keyring)  # does not raise
    assert schemas.subjects() == []


def test_prepare_registers_the_audit_and_recipient_schemas(router: Router, schemas: LocalSchemas, catalog: Catalog) -> None:
    router.prepare()
    assert f"{AUDIT_TOPIC}-value" in schemas.subjects()
    assert f"{shared_topic('fraud', TAX)}-value" in schemas.subjects()
    [audit_id] = schemas.versions(f"{AUDIT_TOPIC}-value")
    assert schemas.schema(audit_id) == catalog.internal_schema(AUDIT_EVENT)


def test_a_registry_outage_raises_instead_of_dead_lettering(catalog: Catalog, charter: Charter, keyring: Keyring) -> None:
    schemas = OutageSchemas()
    router = Router(catalog, PolicyEngine(charter, keyring), schemas, keyring)
    value = encode(schemas, catalog, TAX, event(catalog, TAX))
    schemas.down = True
    with pytest.raises(RegistryUnavailable):  # writer schema look-up
        route(router, raw_topic(TAX), value)
    schemas.down = False
    router.decoder(value)  # the writer schema is cached now
    schemas.down = True
    with pytest.raises(RegistryUnavailable):  # registering the audit and recipient schemas
        route(router, raw_topic(TAX), value)
    assert not any(name.startswith("dlq.") for name in router.counts)


def test_a_registry_outage_in_a_batch_returns_what_was_routed_before_it_and_the_rest_is_read_again(
        catalog: Catalog, charter: Charter, keyring: Keyring) -> None:
    schemas = OutageSchemas()
    router = Router(catalog, PolicyEngine(charter, keyring), schemas, keyring)
    tax, claim = (encode(schemas, catalog, t, event(catalog, t)) for t in (TAX, WELFARE))
    router.prepare()
    router.route(raw_topic(TAX), b"z", tax, None, NoConsent(), NOW)  # the tax events' writer schema is cached, the claims' is not
    batch = [(raw_topic(TAX), b"a", tax, None, 0, 1), (raw_topic(TAX), b"b", b"\x07junk", None, 0, 2),
             (raw_topic(WELFARE), b"c", claim, None, 0, 3), (raw_topic(TAX), b"d", tax, None, 0, 4)]
    schemas.down = True
    routed, unavailable = router.route_many(batch, NoConsent(), NOW)  # the claim's writer schema cannot be read
    assert isinstance(unavailable, RegistryUnavailable) and len(routed) == 2
    assert shared_topic("fraud", TAX) in {o.topic for o in routed[0]} and [o.topic for o in routed[1]] == [DLQ_TOPIC]
    assert router.counts["events"] == 2
    schemas.down = False
    routed, unavailable = router.route_many(batch[2:], NoConsent(), NOW)  # read again once the registry answers
    assert unavailable is None and len(routed) == 2 and router.counts["events"] == 4
    # an outage while registering a schema the outputs need: the messages before it stay routed
    fresh = Router(catalog, PolicyEngine(charter, keyring), schemas, keyring)
    fresh._read(tax)  # noqa: SLF001 - its writer schema read, nothing registered yet
    schemas.down = True
    routed, unavailable = fresh.route_many([(raw_topic(TAX), b"b", b"\x07junk", None, 0, 2), (raw_topic(TAX), b"a", tax, None, 0, 1),
                                            (raw_topic(TAX), b"d", tax, None, 0, 4)], NoConsent(), NOW)
    assert isinstance(unavailable, RegistryUnavailable) and [[o.topic for o in r] for r in routed] == [[DLQ_TOPIC]]
    assert fresh.counts["events"] == 0 and not any(name.startswith("dlq.transform") for name in fresh.counts)


def test_local_schemas_give_one_id_per_schema_and_refuse_incompatible_changes(catalog: Catalog) -> None:
    schemas = LocalSchemas()
    tax = catalog.events[TAX].avro
    first = schemas.register("a-value", tax)
    assert schemas.register("b-value", tax) == first == schemas.register("a-value", tax)
    assert schemas.schema(first) == tax
    changed = {"type": "record", "name": "Other", "fields": [{"name": "n", "type": "int"}]}
    with pytest.raises(SchemaIncompatible):
        schemas.register("a-value", changed)
    schemas.set_compatibility("a-value", "NONE")
    second = schemas.register("a-value", changed)
    assert second != first and schemas.versions("a-value") == [first, second]
    with pytest.raises(UnknownSchemaId):
        schemas.schema(second + 100)
