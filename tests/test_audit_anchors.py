"""Nobody seals their own record alone (issue 26), on the real pipeline: operators record their
actions from a keyring of their own (their signing keys, the shared operations key, the domain and
provider keys: everything but the processors' signing key) while a processor worker decides events.
An operator who deletes a middle action (the suspension of `tax-to-fraud`, or a re-identification)
from the operator topics, re-seals every later action with the key of its actor and renumbers, then
has the audit sinks land the rewritten topics, is named by `backbone audit verify` from the audit
database and from the topics: the processors' checkpoints anchored each action. Before anchoring,
this rewrite verified ("audit trail verified", exit 0). The untouched trail verifies, the newest
action (sealed after the last anchor) is reported as not yet anchored."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import Producer

from app.local import worker_environment
from backbone.audit import anchors, operations
from backbone.audit.log import CheckpointCodec, RecordCodec, Report, leaf_hash, public_key_map
from backbone.events.catalog import AUDIT_CHECKPOINT, AUDIT_EVENT, OPERATOR_ACTION, Catalog, load_catalog
from backbone.events.serde import HEADER_SIZE, Decoder, encoder_for, registry_client
from backbone.kafka.topics import AUDIT_TOPIC, CHECKPOINTS_TOPIC, OPERATIONS_CHECKPOINTS_TOPIC, OPERATIONS_TOPIC, Topics
from backbone.keys.keyring import OPERATIONS_SIGNER, PROCESSOR_SIGNER, Keyring, operator_signer
from backbone.keys.master import encode_master_key, new_master_key
from backbone.settings import PROJECT_ROOT, Settings
from consumers.audit_trail import Trail, verify_trail
from consumers.sink import Sink, audit_plan, checkpoints_plan, operations_plan
from tests.cli import run_backbone
from tests.pipeline import AuditRecords, Worker, land, private_stack, read_all, read_topic
from tests.test_processor_workers import produce_synthetic

pytestmark = pytest.mark.integration

ACTIONS = (  # each anchored by a processor checkpoint before the next is recorded
    operations.OperatorAction("reidentify", "oversight-1", "tax key k4 for fraud.bank_account", "revealed", "case 17",
                              {"token_sha256": "ab" * 32, "domain": "fraud"}),
    operations.OperatorAction("agreement_status", "operator-1", "tax-to-fraud@1", "done", "investigation", {"status": "suspended"}),
    operations.OperatorAction("erase", "oversight-1", "subject token", "done", "request 9", {"rows_deleted": "12"}),
)
LATE = operations.OperatorAction("dlq_replay", "operator-1", "dlq.processor", "done", None, {"entries": "3"})  # after the last anchor
OPERATOR_TOPICS = (OPERATIONS_TOPIC, OPERATIONS_CHECKPOINTS_TOPIC)


@dataclass
class Anchored:
    settings: Settings  # the processors' (and the verifier's, with the audit database)
    operator: Settings  # an operator's host: a keyring of its own
    catalog: Catalog
    keys: Path  # the public keys published before the rewrite
    originals: dict[str, list[tuple[bytes | None, bytes]]]  # the operator topics as the actions were recorded


def _operator_keyring(settings: Settings, path: Path) -> None:
    """The keyring every operator held, without the processors' signing key (which stays on the
    processor hosts): the domain and provider keys and the shared operations key."""
    data = json.loads(Path(settings.keyring_path).read_text())
    data["keys"] = [key for key in data["keys"] if (key["kind"], key["owner"]) != ("signing", PROCESSOR_SIGNER)]
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    path.chmod(0o600)


def _decide(settings: Settings, sent: set[str], seed: int, events: int = 20) -> None:
    """A wave of events, decided and audited."""
    sent |= set(produce_synthetic(settings, events=events, seed=seed))
    records = AuditRecords(settings)
    audited = read_topic(settings, AUDIT_TOPIC, lambda m: len(records.event_ids(m)) >= len(sent), timeout=90)
    assert len(records.event_ids(audited)) >= len(sent)


def _decide_until_anchored(settings: Settings, catalog: Catalog, sequence: int, sent: set[str]) -> None:
    """Small waves of events until a processor checkpoint anchors operations checkpoint `sequence` (bounded)."""
    codec = CheckpointCodec(catalog.internal_schema(AUDIT_CHECKPOINT))

    def anchor_in(messages: list) -> bool:
        return any(codec.decode(m.value()[HEADER_SIZE:]).operations_checkpoint == sequence for m in messages)

    for attempt in range(6):
        _decide(settings, sent, seed=1000 + 10 * sequence + attempt)
        if anchor_in(read_topic(settings, CHECKPOINTS_TOPIC, anchor_in, timeout=2)):  # (returns once one is read)
            return
    raise AssertionError(f"no processor checkpoint anchored operations checkpoint {sequence}")


def _land(settings: Settings, catalog: Catalog, client) -> None:  # noqa: ANN001
    land([Sink(settings, plan, client, registry_client(settings))
          for plan in (audit_plan(settings, catalog), operations_plan(settings, catalog), checkpoints_plan(settings, catalog))])


def _published(*environments: dict[str, str], path: Path) -> Path:
    """`backbone audit keys --output` on each host, published together."""
    entries = []
    for n, env in enumerate(environments):
        out = path.with_name(f"keys-{n}.json")
        result = run_backbone("audit", "keys", "--output", str(out), env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        entries += json.loads(out.read_text())["keys"]
    path.write_text(json.dumps({"format": "backbone-audit-keys/1", "keys": entries}))
    return path


def _all(settings: Settings, topic: str) -> list[tuple[bytes | None, bytes]]:
    return [(m.key(), m.value()) for m in read_all(settings, topic)]


@pytest.fixture(scope="module")
def anchored(tmp_path_factory: pytest.TempPathFactory, clickhouse_dsn: str, clickhouse_client) -> Iterator[Anchored]:  # noqa: ANN001
    base_dir = tmp_path_factory.mktemp("audit-anchors")
    with private_stack(base_dir, partitions=3) as base:
        settings = base.model_copy(update={"clickhouse_dsn": clickhouse_dsn, "clickhouse_database_prefix": f"t{uuid.uuid4().hex[:8]}_",
                                           "sink_batch_rows": 500, "sink_batch_seconds": 0.3})
        operator_dir = base_dir / "operator-host"
        operator = settings.model_copy(update={"data_dir": operator_dir, "keyring_path": operator_dir / "keyring.json",
                                               "identity": "operator-1"})
        _operator_keyring(settings, operator.keyring_path)
        catalog = load_catalog(settings.schemas_dir)
        sent: set[str] = set()
        worker = Worker(settings, "worker").start()
        try:
            _decide(settings, sent, seed=1, events=100)
            for sequence, action in enumerate(ACTIONS):
                operations.record(operator, action)
                _decide_until_anchored(settings, catalog, sequence, sent)
        finally:
            worker.stop()
        operations.record(operator, LATE)
        keys = _published(worker_environment(settings), worker_environment(operator, keyring_path=str(operator.keyring_path)),
                          path=base_dir / "published-keys.json")
        originals = {topic: _all(settings, topic) for topic in OPERATOR_TOPICS}
        assert len(originals[OPERATIONS_TOPIC]) == len(originals[OPERATIONS_CHECKPOINTS_TOPIC]) == len(ACTIONS) + 1
        _land(settings, catalog, clickhouse_client)
        yield Anchored(settings, operator, catalog, keys, originals)


def _verify(backbone_cli, anchored: Anchored, settings: Settings, *args: str):  # noqa: ANN001, ANN202
    """`backbone audit verify` as a verifier on the processors' host runs it (in-process: chDB is this process's)."""
    environment = {k: v for k, v in worker_environment(settings).items() if k.startswith("BACKBONE_")}
    return backbone_cli("audit", "verify", "--keys", str(anchored.keys), *args, **environment)


def test_the_untouched_trail_verifies_and_the_newest_action_is_not_anchored_yet(anchored: Anchored, backbone_cli) -> None:  # noqa: ANN001
    for args in ((), ("--from-kafka",)):
        result = _verify(backbone_cli, anchored, anchored.settings, *args)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "audit trail verified" in result.stdout and f"{len(ACTIONS) + 1} operator actions" in result.stdout
        assert f"warning writer operations checkpoint {len(ACTIONS)}: not anchored:" in result.stdout, result.stdout
        assert "anchor mismatch" not in result.stdout


# --- the rewrite, with every key the operator holds --------------------------------------------
def _replace_topics(settings: Settings, contents: dict[str, list[tuple[bytes | None, bytes]]]) -> None:
    topics = Topics(settings)
    for topic in OPERATOR_TOPICS:
        topics.delete(topic)
    topics.ensure(OPERATIONS_TOPIC)
    topics.ensure(OPERATIONS_CHECKPOINTS_TOPIC, partitions=1)
    producer = Producer(settings.producer_config())
    for topic, messages in contents.items():
        for key, value in messages:
            producer.produce(topic, value, key)
    assert producer.flush(30) == 0


def _rewritten(anchored: Anchored, deleted: int) -> dict[str, list[tuple[bytes | None, bytes]]]:
    """The operator topics without action `deleted`: the actions before it as they were, every later one
    re-sealed and renumbered under the key its actor's own signature needs (or else the shared operations
    key), from the operator's keyring."""
    settings, catalog, originals = anchored.settings, anchored.catalog, anchored.originals
    keyring = Keyring.open(anchored.operator)
    owners = {info.owner for info in keyring.keys() if info.kind == "signing"}
    schema = catalog.internal_schema(OPERATOR_ACTION)
    codec, checkpoint_codec = RecordCodec.for_audit_schema(schema), CheckpointCodec(catalog.internal_schema(AUDIT_CHECKPOINT))
    decode = Decoder(registry_client(settings))
    encode = encoder_for(registry_client(settings), f"{OPERATIONS_TOPIC}-value", schema)
    actions = {decode(value).record["checkpoint"]: (key, value) for key, value in originals[OPERATIONS_TOPIC]}
    checkpoints = {checkpoint_codec.decode(value[HEADER_SIZE:]).sequence: (key, value) for key, value in originals[OPERATIONS_CHECKPOINTS_TOPIC]}
    assert decode(actions[deleted][1]).record["action"] == ACTIONS[deleted].action
    kept_records = [actions[n] for n in range(deleted)]
    kept_checkpoints = [checkpoints[n] for n in range(deleted)]
    previous = checkpoint_codec.hash(checkpoint_codec.decode(checkpoints[deleted - 1][1][HEADER_SIZE:])) if deleted else ""
    header = checkpoints[0][1][:HEADER_SIZE]
    for sequence in range(deleted, len(actions) - 1):
        action = decode(actions[sequence + 1][1]).record
        content = {name: action[name] for name in (item["name"] for item in codec.schema["fields"])}
        owner = operator_signer(action["actor"]) if operator_signer(action["actor"]) in owners else OPERATIONS_SIGNER
        key_id, key = keyring.signing_key(owner)
        checkpoint = checkpoint_codec.seal(writer=operations.OPERATIONS_WRITER, sequence=sequence, leaves=[leaf_hash(codec.content(content))],
                                           previous=previous, schema=codec.fingerprint, key_id=key_id, key=key)
        previous = checkpoint_codec.hash(checkpoint)
        kept_checkpoints.append((b"operations", header + checkpoint_codec.encode(checkpoint)))
        kept_records.append((str(action["action_id"]).encode(), encode({**content, "writer": operations.OPERATIONS_WRITER,
                                                                        "checkpoint": sequence, "leaf": 0})))
    return {OPERATIONS_CHECKPOINTS_TOPIC: kept_checkpoints, OPERATIONS_TOPIC: kept_records}


@pytest.mark.parametrize("deleted", [1, 0], ids=["the suspension of tax-to-fraud", "a re-identification"])
def test_an_operator_rewriting_the_operator_trail_with_every_key_they_hold_is_named(anchored: Anchored, clickhouse_client,  # noqa: ANN001
                                                                                    backbone_cli, deleted: int) -> None:
    _replace_topics(anchored.settings, _rewritten(anchored, deleted))
    try:
        # the operator has the audit sinks land the rewritten topics as the trail (a fresh audit database)
        relanded = anchored.settings.model_copy(update={"clickhouse_database_prefix": f"t{uuid.uuid4().hex[:8]}_"})
        _land(relanded, anchored.catalog, clickhouse_client)
        for args in ((), ("--from-kafka",)):
            result = _verify(backbone_cli, anchored, relanded, *args)
            assert result.returncode == 1, result.stdout + result.stderr
            failed = f"FAILED writer operations checkpoint {deleted}: anchor mismatch: "
            assert failed in result.stdout, result.stdout
            line = next(line for line in result.stdout.splitlines() if failed in line)
            assert "anchored by processor writer w" in line and f"holds {ACTIONS[deleted + 1].action} by" in line, line
    finally:
        _replace_topics(anchored.settings, anchored.originals)


# --- the checks themselves, without any part -----------------------------------------------------
def _codecs() -> tuple[RecordCodec, CheckpointCodec, dict]:
    catalog = load_catalog(PROJECT_ROOT / "schemas")
    return (RecordCodec.for_audit_schema(catalog.internal_schema(OPERATOR_ACTION)),
            CheckpointCodec(catalog.internal_schema(AUDIT_CHECKPOINT)), catalog.internal_schema(AUDIT_CHECKPOINT))


def _chain(keyring: Keyring, owners: list[str]) -> tuple[Trail, list[str]]:
    """An operations chain of one action per owner, each signed by that owner's key; (trail, hashes)."""
    codec, checkpoint_codec, _ = _codecs()
    trail, hashes, previous = Trail(), [], ""
    for sequence, owner in enumerate(owners):
        action = {"action_id": str(uuid.uuid4()), "action": "agreement_status", "actor": "operator-1", "at": 0,
                  "target": f"tax-to-fraud@{sequence}", "outcome": "done", "reason": None, "details": {}}
        content = codec.content(action)
        key_id, key = keyring.signing_key(owner)
        checkpoint = checkpoint_codec.seal(writer="operations", sequence=sequence, leaves=[leaf_hash(content)], previous=previous,
                                           schema=codec.fingerprint, key_id=key_id, key=key)
        previous = checkpoint_codec.hash(checkpoint)
        hashes.append(previous)
        trail.checkpoints["operations"].append(checkpoint)
        trail.add(("operations", sequence), 0, content, 0)
        trail.actions[sequence] = action
    return trail, hashes


def _verified(trail: Trail, keyring: Keyring) -> Report:
    codec, checkpoint_codec, _ = _codecs()
    decisions = RecordCodec.for_audit_schema(load_catalog(PROJECT_ROOT / "schemas").internal_schema(AUDIT_EVENT))
    return verify_trail(trail, decisions, checkpoint_codec, public_key_map(keyring.public_keys()), operations=codec)


def test_an_action_signed_with_a_key_not_registered_for_its_actor_fails_and_the_shared_key_is_a_warning() -> None:
    keyring = Keyring.generate(signers=[operator_signer("operator-1"), operator_signer("operator-2"), OPERATIONS_SIGNER, PROCESSOR_SIGNER])
    report = _verified(_chain(keyring, [operator_signer("operator-1")] * 2)[0], keyring)
    assert report.ok and not [w for w in report.warnings if w.kind == anchors.SHARED_SIGNER]
    report = _verified(_chain(keyring, [operator_signer("operator-1"), operator_signer("operator-2"), PROCESSOR_SIGNER,
                                        OPERATIONS_SIGNER])[0], keyring)
    assert {(f.kind, f.sequence) for f in report.failures} == {(anchors.WRONG_SIGNER, 1), (anchors.WRONG_SIGNER, 2)}
    assert "agreement_status by operator-1 on 'tax-to-fraud@1'" in str(report.failures[0])
    assert "of operator:operator-2, not a key registered for operator-1" in str(report.failures[0])
    assert [(w.kind, w.sequence) for w in report.warnings if w.kind == anchors.SHARED_SIGNER] == [(anchors.SHARED_SIGNER, 3)]


def test_the_operations_chain_must_hold_each_anchored_checkpoint_and_later_ones_are_not_anchored_yet() -> None:
    keyring = Keyring.generate(signers=[operator_signer("operator-1"), PROCESSOR_SIGNER])
    trail, hashes = _chain(keyring, [operator_signer("operator-1")] * 4)
    _, checkpoint_codec, _ = _codecs()
    key_id, key = keyring.signing_key(PROCESSOR_SIGNER)
    previous = ""
    for sequence, anchor in enumerate([None, (0, hashes[0]), (1, hashes[1]), (1, "ab" * 32)]):
        checkpoint = checkpoint_codec.seal(writer="w1", sequence=sequence, leaves=[], previous=previous, schema="s", key_id=key_id,
                                           key=key, anchor=anchor)
        previous = checkpoint_codec.hash(checkpoint)
        trail.checkpoints["w1"].append(checkpoint)
    found = {(f.kind, f.writer, f.sequence): f.detail for f in _verified(trail, keyring).failures + _verified(trail, keyring).warnings
             if f.kind in (anchors.ANCHOR_MISMATCH, anchors.NOT_ANCHORED)}
    assert found.keys() == {(anchors.ANCHOR_MISMATCH, "operations", 1), (anchors.NOT_ANCHORED, "operations", 2)}
    assert found[(anchors.ANCHOR_MISMATCH, "operations", 1)].startswith("anchored by processor writer w1 in its checkpoint 3 as abababab")
    assert "the trail holds agreement_status by operator-1 on 'tax-to-fraud@1'" in found[(anchors.ANCHOR_MISMATCH, "operations", 1)]
    assert found[(anchors.NOT_ANCHORED, "operations", 2)].startswith("checkpoint(s) 2-3 were sealed after the newest anchor (checkpoint 1)")


def test_a_checkpoint_sealed_before_anchors_existed_reads_signs_and_hashes_as_it_did() -> None:
    _, checkpoint_codec, schema = _codecs()
    before = {**schema, "fields": [f for f in schema["fields"] if f["name"] not in ("operations_checkpoint", "operations_hash")]}
    old_codec = CheckpointCodec(before)
    keyring = Keyring.generate(signers=[PROCESSOR_SIGNER])
    key_id, key = keyring.signing_key(PROCESSOR_SIGNER)
    old = old_codec.seal(writer="w1", sequence=0, leaves=[b"\x00" * 32], previous="", schema="s", key_id=key_id, key=key)
    read = checkpoint_codec.decode(old_codec.encode(old))
    assert read == old and read.operations_checkpoint is None
    assert checkpoint_codec.hash(read) == old_codec.hash(old)
    assert checkpoint_codec.signature_problem(read, public_key_map(keyring.public_keys())) is None
    anchored = checkpoint_codec.seal(writer="w1", sequence=1, leaves=[], previous="", schema="s", key_id=key_id, key=key, anchor=(4, "cd" * 32))
    assert checkpoint_codec.decode(checkpoint_codec.encode(anchored)) == anchored


def test_keys_operator_add_creates_the_operators_own_key_and_audit_keys_publishes_it(tmp_path: Path) -> None:
    env = {"BACKBONE_DATA_DIR": str(tmp_path), "BACKBONE_MASTER_KEY": encode_master_key(new_master_key()),
           "BACKBONE_KEYRING_PATH": str(tmp_path / "operator" / "keyring.json")}
    added = run_backbone("keys", "operator", "add", "alice@tax.example", env=env)
    assert added.returncode == 0, added.stderr
    assert re.search(r"operator alice@tax.example: signing key k\d+-[0-9a-f]{8} created in keyring", added.stdout), added.stdout
    again = run_backbone("keys", "operator", "add", "alice@tax.example", env=env)
    assert again.returncode == 0 and "already has signing key" in again.stdout
    published = tmp_path / "keys.json"
    assert run_backbone("audit", "keys", "--output", str(published), env=env).returncode == 0
    assert [k["owner"] for k in json.loads(published.read_text())["keys"]] == ["operator:alice@tax.example"]
    refused = run_backbone("keys", "operator", "add", "alice smith", env=env)
    assert refused.returncode == 1 and refused.stderr.strip().splitlines() == [
        "error: invalid operator identity 'alice smith': letters, digits, @ . _ - (as BACKBONE_IDENTITY)"]
