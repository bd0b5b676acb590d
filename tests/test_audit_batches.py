"""Many events' audit records in one Kafka record (`backbone.audit.batches`): the trail they make is
the one records sent one by one made. The same rows land, the same leaves verify, a tampered record
inside a batch is named, receipts still verify offline, and a trail written one record per Kafka
record before batching still reads and verifies beside batched records."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import Message
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from backbone.audit import log
from backbone.audit.batches import MAX_MESSAGE_BYTES, RECORDS_PER_MESSAGE, Unpacker, pack
from backbone.audit.log import CheckpointCodec, RecordCodec
from backbone.audit.receipts import verify_receipt
from backbone.events.catalog import AUDIT_CHECKPOINT, AUDIT_EVENT, Catalog, load_catalog
from backbone.events.serde import LocalSchemas, encoder_for, registry_client, schema_source
from backbone.kafka.topics import AUDIT_TOPIC, CHECKPOINTS_TOPIC
from backbone.keys.keyring import Keyring
from backbone.settings import PROJECT_ROOT, load_settings
from consumers.audit import disclosures
from consumers.audit_kafka import add_messages
from consumers.audit_trail import ClickHouseTrail, Trail, verify_trail
from consumers.clickhouse_target import ClickHouseTarget
from consumers.plans import audit_plan, checkpoints_plan
from processors.checkpoints import Checkpointer, WriterSlot
from processors.router import UNPLACED
from tests.test_audit_log import record


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog(PROJECT_ROOT / "schemas")


@pytest.fixture(scope="module")
def keyring() -> Keyring:
    return Keyring.generate(signers=["processor"])


@dataclass
class Written:
    """What a worker's data plane sends for some batches: every placed record (in order) and the checkpoints."""

    records: list[bytes]
    checkpoints: list[bytes]
    writer: str
    schemas: object


def write(catalog: Catalog, keyring: Keyring, directory: Path, schemas, batches: list[int], seed: int = 5) -> Written:  # noqa: ANN001
    """Records placed and sealed as the data plane places and seals them, `batches` records per checkpoint."""
    audit_schema = catalog.internal_schema(AUDIT_EVENT)
    encode = encoder_for(schemas, f"{AUDIT_TOPIC}-value", audit_schema)
    checkpoint_id = schemas.register(f"{CHECKPOINTS_TOPIC}-value", catalog.internal_schema(AUDIT_CHECKPOINT))
    codecs = RecordCodec.for_audit_schema(audit_schema), CheckpointCodec(catalog.internal_schema(AUDIT_CHECKPOINT))
    checkpointer = Checkpointer(WriterSlot.take(directory), *codecs, checkpoint_id, keyring)
    rng = random.Random(seed)
    records, checkpoints = [], []
    for size in batches:
        records += [checkpointer.place(encode({**record(rng, 1 + i % 3), **UNPLACED})) for i in range(size)]
        checkpoints.append(checkpointer.seal().value)
    return Written(records, checkpoints, checkpointer.writer, schemas)


def kafka_trail(catalog: Catalog, written: Written, messages: list[bytes]) -> Trail:
    """The trail `backbone audit verify --from-kafka` reads from these messages."""
    codec = CheckpointCodec(catalog.internal_schema(AUDIT_CHECKPOINT))
    trail = Trail()
    for value in written.checkpoints:
        trail.checkpoints[written.writer].append(codec.decode(value[5:]))
    add_messages(trail, Unpacker(written.schemas.schema), messages)
    return trail


def verify(catalog: Catalog, keyring: Keyring, trail: Trail) -> log.Report:
    codec, checkpoint_codec = RecordCodec.for_audit_schema(catalog.internal_schema(AUDIT_EVENT)), CheckpointCodec(
        catalog.internal_schema(AUDIT_CHECKPOINT))
    return verify_trail(trail, codec, checkpoint_codec, log.public_key_map(keyring.public_keys()))


# --- pure: packing -----------------------------------------------------------------------------
@hypothesis_settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=3000), max_size=300), st.integers(1, 100), st.integers(1, 20_000))
def test_packing_keeps_every_record_in_order_within_the_limits(records: list[bytes], per_message: int, max_bytes: int) -> None:
    messages = list(pack(records, per_message, max_bytes))
    assert b"".join(messages) == b"".join(records)
    sizes = iter(len(r) for r in records)
    for message in messages:  # each message is whole records: at most per_message, at most max_bytes unless one record alone
        taken, length = 0, 0
        while length < len(message):
            length += next(sizes)
            taken += 1
        assert length == len(message) and taken <= per_message and (length <= max_bytes or taken == 1)


def test_batches_split_back_into_the_records_placed(catalog: Catalog, keyring: Keyring, tmp_path: Path) -> None:
    written = write(catalog, keyring, tmp_path, LocalSchemas(), [300, 7])
    messages = list(pack(written.records))
    assert len(messages) == -(-307 // RECORDS_PER_MESSAGE)  # one produce call per RECORDS_PER_MESSAGE events
    assert all(len(m) <= MAX_MESSAGE_BYTES for m in messages)
    unpack = Unpacker(written.schemas.schema)
    assert [value for m in messages for value, _ in unpack(m)] == written.records
    assert [r["leaf"] for r in unpack.records(messages[1])] == list(range(RECORDS_PER_MESSAGE, 2 * RECORDS_PER_MESSAGE))


def test_bytes_that_are_not_whole_records_are_refused_without_quoting_them(catalog: Catalog, keyring: Keyring, tmp_path: Path) -> None:
    written = write(catalog, keyring, tmp_path, LocalSchemas(), [3])
    unpack = Unpacker(written.schemas.schema)
    batch = b"".join(written.records)
    for bad in (batch[:-4], batch + b"\x00\x00", b"", b"\x07" + batch[1:]):
        with pytest.raises(log.AuditLogError) as raised:
            unpack(bad)
        assert written.writer not in str(raised.value)


# --- pure: verifying from Kafka ----------------------------------------------------------------
def test_batched_records_verify_as_records_sent_one_by_one_and_old_single_records_beside_them(
        catalog: Catalog, keyring: Keyring, tmp_path: Path) -> None:
    written = write(catalog, keyring, tmp_path, LocalSchemas(), [150, 90, 200])
    one_by_one = verify(catalog, keyring, kafka_trail(catalog, written, written.records))
    batched = verify(catalog, keyring, kafka_trail(catalog, written, list(pack(written.records))))
    # a trail written before the upgrade (checkpoint 0, one record per message), batched after it
    mixed = verify(catalog, keyring, kafka_trail(catalog, written, [*written.records[:150], *pack(written.records[150:])]))
    for report in (one_by_one, batched, mixed):
        assert report.ok, report.failures
        assert (report.checkpoints, report.records) == (3, 440)
    assert batched.decisions == one_by_one.decisions == mixed.decisions


def test_a_tampered_record_inside_a_batch_is_named_with_its_checkpoint(catalog: Catalog, keyring: Keyring, tmp_path: Path) -> None:
    written = write(catalog, keyring, tmp_path, LocalSchemas(), [100, 100])
    unpack = Unpacker(written.schemas.schema)
    encode = encoder_for(written.schemas, f"{AUDIT_TOPIC}-value", catalog.internal_schema(AUDIT_EVENT))
    messages = [*pack(written.records[:100]), *pack(written.records[100:])]  # per checkpoint, as the data plane packs
    target = next(i for i, m in enumerate(messages) if unpack.records(m)[0]["checkpoint"] == 1)
    records = unpack.records(messages[target])
    victim = records[len(records) // 2]  # in the middle of the batch
    victim["decisions"][0]["outcome"] = "no_agreement" if victim["decisions"][0]["outcome"] == "permit" else "permit"
    messages[target] = b"".join(encode(r) for r in records)
    report = verify(catalog, keyring, kafka_trail(catalog, written, messages))
    assert [(f.kind, f.writer, f.sequence) for f in report.failures] == [(log.EDITED_RECORD, written.writer, 1)]
    assert report.checkpoints == 1  # checkpoint 0 still holds


# --- landing: the same rows, verified, with receipts -------------------------------------------
@dataclass
class Landed:
    one_by_one: str  # database prefixes
    batched: str
    written: Written
    landed: dict[str, int]  # rows the target reported landed in the audit table, per prefix


@pytest.fixture(scope="module")
def landed(catalog: Catalog, keyring: Keyring, kafka_bootstrap: str, schema_registry_url: str, clickhouse_client,  # noqa: ANN001
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Landed]:
    settings = load_settings(kafka_bootstrap=kafka_bootstrap, data_dir=tmp_path_factory.mktemp("batches"),
                             schema_registry_url=schema_registry_url)
    registry = registry_client(settings)
    written = write(catalog, keyring, tmp_path_factory.mktemp("writer"), schema_source(registry), [120, 80])
    one_by_one, batched = (f"b{uuid.uuid4().hex[:8]}_" for _ in range(2))
    prefixes = {one_by_one: written.records, batched: list(pack(written.records))}
    counted: dict[str, int] = {}
    for prefix, values in prefixes.items():
        mine = settings.model_copy(update={"clickhouse_database_prefix": prefix})
        for plan, topic, messages in ((audit_plan(mine, catalog), AUDIT_TOPIC, values),
                                      (checkpoints_plan(mine, catalog), CHECKPOINTS_TOPIC, written.checkpoints)):
            target = ClickHouseTarget(mine, plan, clickhouse_client, registry)
            target.setup()
            done = target.write([Message(topic=topic, value=v, key=b"", partition=0, offset=n) for n, v in enumerate(messages)])
            assert not done.rejected
            if topic == AUDIT_TOPIC:
                counted[prefix] = done.landed
    yield Landed(one_by_one, batched, written, counted)


def _rows(client, prefix: str) -> list[tuple]:  # noqa: ANN001
    columns = "* EXCEPT (_landed_at)"
    return client.query(f"SELECT {columns} FROM {prefix}audit.events ORDER BY writer, checkpoint, leaf").result_rows


def test_batched_records_land_as_exactly_the_rows_records_sent_one_by_one_gave(landed: Landed, clickhouse_client) -> None:  # noqa: ANN001
    rows = _rows(clickhouse_client, landed.batched)
    assert len(rows) == 200 and rows == _rows(clickhouse_client, landed.one_by_one)
    # the sink counts rows, not Kafka records: 4 batched messages (64 + 64 + 64 + 8 records) are 200 rows landed
    assert landed.landed == {landed.one_by_one: 200, landed.batched: 200}
    decisions = "SELECT * EXCEPT (_landed_at) FROM {}audit.decisions ORDER BY event_id, recipient"
    assert clickhouse_client.query(decisions.format(landed.batched)).result_rows == \
        clickhouse_client.query(decisions.format(landed.one_by_one)).result_rows


def test_a_landed_batched_trail_verifies_and_gives_receipts_that_verify_offline(
        landed: Landed, catalog: Catalog, keyring: Keyring, clickhouse_client) -> None:  # noqa: ANN001
    keys = log.public_key_map(keyring.public_keys())
    trail = ClickHouseTrail(clickhouse_client, landed.batched, catalog)
    report = trail.verify(keys)
    assert report.ok and (report.checkpoints, report.records) == (2, 200), report.failures
    event_id, token = clickhouse_client.query(
        f"SELECT toString(event_id), subject_token FROM {landed.batched}audit.decisions WHERE decision = 'permit' LIMIT 1").result_rows[0]
    recipient = clickhouse_client.query(
        f"SELECT recipient FROM {landed.batched}audit.decisions WHERE event_id = toUUID({{e:String}}) AND decision = 'permit' LIMIT 1",
        parameters={"e": event_id}).result_rows[0][0]
    receipt = trail.receipt(event_id, recipient, keys)
    assert verify_receipt(receipt, CheckpointCodec(catalog.internal_schema(AUDIT_CHECKPOINT)), pinned=keys) == []
    assert disclosures(clickhouse_client, landed.batched, token) == disclosures(clickhouse_client, landed.one_by_one, token) != []
