"""The verifiable audit log as a specification, with no broker and no ClickHouse: Merkle trees as
RFC 9162 defines them, checkpoints signed and chained per writer, every kind of tampering named,
receipts checked offline, and the data plane's placement of records byte for byte."""

from __future__ import annotations

import copy
import json
import random
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from io import BytesIO
from pathlib import Path

import pytest
from fastavro import parse_schema, schemaless_reader

from backbone.audit import log
from backbone.audit.log import CheckpointCodec, RecordCodec, inclusion_proof, leaf_hash, merkle_root, root_from_proof
from backbone.audit.receipts import MAX_COPY_CHOICES, make_receipt, sealed_leaves, verify_receipt
from backbone.events.catalog import AUDIT_CHECKPOINT, AUDIT_EVENT, Catalog, load_catalog
from backbone.events.serde import HEADER_SIZE, LocalSchemas
from backbone.keys.keyring import Keyring
from backbone.settings import PROJECT_ROOT
from consumers.audit_trail import Trail, verify_trail
from processors.checkpoints import Checkpointer, WriterSlot

OUTCOMES = ["permit", "no_agreement", "purpose_not_permitted", "consent_missing", "condition_false"]
T0 = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog(PROJECT_ROOT / "schemas")


@pytest.fixture(scope="module")
def codecs(catalog: Catalog) -> tuple[RecordCodec, CheckpointCodec]:
    return RecordCodec.for_audit_schema(catalog.internal_schema(AUDIT_EVENT)), CheckpointCodec(catalog.internal_schema(AUDIT_CHECKPOINT))


@pytest.fixture(scope="module")
def keyring() -> Keyring:
    return Keyring.generate(signers=["processor"])


@pytest.fixture(scope="module")
def keys(keyring: Keyring) -> dict:
    return log.public_key_map(keyring.public_keys())


def record(rng: random.Random, decisions: int = 2) -> dict:
    return {
        "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)), "event_type": "tax.income_declared", "provider": "tax",
        "subject_token": f"k1.{rng.getrandbits(64):x}", "decided_at": T0 + timedelta(milliseconds=rng.randrange(10**6)),
        "decisions": [{"recipient": f"agency{i}", "agreement_id": f"a-{i}", "agreement_version": 1, "outcome": rng.choice(OUTCOMES),
                       "key_ids": ["k1"], "recipient_event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4))}
                      for i in range(decisions)],
    }


def seal_trail(codecs, keyring: Keyring, batches: list[int], writer: str = "w1", seed: int = 1) -> Trail:
    """A trail as the processor writes it: `batches` records per checkpoint, chained."""
    codec, checkpoint_codec = codecs
    key_id, key = keyring.signing_key()
    rng = random.Random(seed)
    trail, previous = Trail(), ""
    for sequence, size in enumerate(batches):
        contents = [codec.content(record(rng, 1 + i % 3)) for i in range(size)]
        checkpoint = checkpoint_codec.seal(writer=writer, sequence=sequence, leaves=[leaf_hash(c) for c in contents], previous=previous,
                                           schema=codec.fingerprint, key_id=key_id, key=key, now=T0)
        previous = checkpoint_codec.hash(checkpoint)
        trail.checkpoints[writer].append(checkpoint)
        for index, content in enumerate(contents):
            trail.add((writer, sequence), index, content, 1 + index % 3)
    return trail


def verify(trail: Trail, codecs, keys) -> log.Report:
    return verify_trail(trail, codecs[0], codecs[1], keys)


def kinds(report: log.Report) -> set[str]:
    return {failure.kind for failure in report.failures}


# --- Merkle trees ------------------------------------------------------------------------------
def test_merkle_roots_match_the_certificate_transparency_test_vectors() -> None:
    leaves = [leaf_hash(bytes.fromhex(h)) for h in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                                                    "606162636465666768696a6b6c6d6e6f")]
    assert merkle_root(leaves[:1]).hex() == "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    assert merkle_root(leaves[:3]).hex() == "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77"
    assert merkle_root(leaves[:7]).hex() == "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c"
    assert merkle_root(leaves).hex() == "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"


def _rfc_root(leaves: list[bytes]) -> bytes:
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return log.node_hash(_rfc_root(leaves[:k]), _rfc_root(leaves[k:]))


def test_every_leaf_of_every_tree_size_has_an_inclusion_proof_to_the_rfc_root() -> None:
    for size in range(1, 70):
        leaves = [leaf_hash(str(i).encode()) for i in range(size)]
        root = merkle_root(leaves)
        assert root == _rfc_root(leaves)
        for index in range(size):
            assert root_from_proof(leaves[index], index, size, inclusion_proof(leaves, index)) == root


def test_an_inclusion_proof_fails_for_another_leaf_position_or_a_smaller_tree() -> None:
    leaves = [leaf_hash(str(i).encode()) for i in range(13)]
    root, proof = merkle_root(leaves), inclusion_proof(leaves, 5)
    assert root_from_proof(leaves[6], 5, 13, proof) != root
    assert root_from_proof(leaves[5], 4, 13, proof) != root
    with pytest.raises(log.AuditLogError):  # a tree of 6 is shallower than the proof is long
        root_from_proof(leaves[5], 5, 6, proof)


# --- checkpoints and chains --------------------------------------------------------------------
def test_an_untampered_trail_of_100k_decisions_verifies(codecs, keyring: Keyring, keys) -> None:
    trail = seal_trail(codecs, keyring, [5000] * 10 + [1000])
    report = verify(trail, codecs, keys)
    assert report.ok, report.failures
    assert (report.checkpoints, report.records) == (11, 51_000)
    assert report.decisions >= 100_000


def test_an_edited_record_is_named(codecs, keyring, keys) -> None:
    trail = seal_trail(codecs, keyring, [20, 20])
    trail.leaves[("w1", 1)][7] = {leaf_hash(codecs[0].content(record(random.Random(99))))}
    report = verify(trail, codecs, keys)
    assert [(f.kind, f.sequence) for f in report.failures] == [(log.EDITED_RECORD, 1)]
    assert report.checkpoints == 1


def test_a_deleted_record_is_named_with_its_leaf(codecs, keyring, keys) -> None:
    trail = seal_trail(codecs, keyring, [20])
    del trail.leaves[("w1", 0)][13]
    [failure] = verify(trail, codecs, keys).failures
    assert (failure.kind, failure.sequence) == (log.MISSING_RECORD, 0) and "leaf 13" in failure.detail


def test_two_swapped_records_are_named_reordered(codecs, keyring, keys) -> None:
    trail = seal_trail(codecs, keyring, [20])
    found = trail.leaves[("w1", 0)]
    found[3], found[4] = found[4], found[3]
    assert kinds(verify(trail, codecs, keys)) == {log.REORDERED}


def test_a_forged_record_is_named_beside_or_over_a_sealed_one(codecs, keyring, keys) -> None:
    forged = leaf_hash(codecs[0].content(record(random.Random(5))))
    beside = seal_trail(codecs, keyring, [20])
    beside.add(("w1", 0), 20, b"forged", 1)
    assert kinds(verify(beside, codecs, keys)) == {log.EXTRA_RECORD}
    over = seal_trail(codecs, keyring, [20])
    over.leaves[("w1", 0)][2].add(forged)
    assert kinds(verify(over, codecs, keys)) == {log.CONFLICTING_RECORD}
    elsewhere = seal_trail(codecs, keyring, [20])
    elsewhere.add(("w1", 7), 0, b"forged", 1)
    elsewhere.add(("", 0), 0, b"unsealed", 1)
    assert kinds(verify(elsewhere, codecs, keys)) == {log.ORPHAN_RECORDS, log.UNSEALED_RECORDS}


def test_a_dropped_checkpoint_is_a_gap_and_leaves_its_records_orphaned(codecs, keyring, keys) -> None:
    trail = seal_trail(codecs, keyring, [5, 5, 5, 5])
    trail.checkpoints["w1"] = [c for c in trail.checkpoints["w1"] if c.sequence != 2]
    report = verify(trail, codecs, keys)
    assert kinds(report) == {log.GAP, log.ORPHAN_RECORDS}
    assert any(f.kind == log.GAP and f.sequence == 2 for f in report.failures)


def test_a_checkpoint_resigned_with_another_key_is_a_forged_signature(codecs, keyring, keys) -> None:
    trail = seal_trail(codecs, keyring, [5, 5])
    intruder = Keyring.generate(signers=["processor"])
    _, key = intruder.signing_key()
    original = trail.checkpoints["w1"][1]
    for key_id in (original.key_id, "k99"):  # under the published key's id, and under its own
        resigned = codecs[1].seal(writer="w1", sequence=1, leaves=[leaf_hash(b"x")], previous=original.previous,
                                  schema=original.schema, key_id=key_id, key=key)
        trail.checkpoints["w1"][1] = resigned
        [failure] = [f for f in verify(trail, codecs, keys).failures if f.kind == log.FORGED_SIGNATURE]
        assert failure.sequence == 1


def test_an_edited_checkpoint_field_breaks_its_signature(codecs, keyring, keys) -> None:
    trail = seal_trail(codecs, keyring, [5])
    checkpoint = trail.checkpoints["w1"][0]
    trail.checkpoints["w1"][0] = log.Checkpoint(**{**checkpoint.to_record(), "records": 4})
    assert log.FORGED_SIGNATURE in kinds(verify(trail, codecs, keys))


def test_two_checkpoints_of_one_sequence_are_a_fork_and_a_wrong_link_a_broken_chain(codecs, keyring, keys) -> None:
    key_id, key = keyring.signing_key()
    trail = seal_trail(codecs, keyring, [5, 5, 5])
    other = codecs[1].seal(writer="w1", sequence=1, leaves=[leaf_hash(b"x")], previous=trail.checkpoints["w1"][1].previous,
                           schema=codecs[0].fingerprint, key_id=key_id, key=key)
    trail.checkpoints["w1"].append(other)
    assert log.FORK in kinds(verify(trail, codecs, keys))
    relinked = seal_trail(codecs, keyring, [5, 5])
    relinked.checkpoints["w1"][1] = codecs[1].seal(writer="w1", sequence=1, leaves=[], previous="00" * 32,
                                                   schema=codecs[0].fingerprint, key_id=key_id, key=key)
    assert log.BROKEN_CHAIN in kinds(verify(relinked, codecs, keys))


def test_identical_copies_of_records_and_checkpoints_count_once(codecs, keyring, keys) -> None:
    trail = seal_trail(codecs, keyring, [10, 10])
    trail.checkpoints["w1"].append(trail.checkpoints["w1"][0])
    for index, hashes in list(trail.leaves[("w1", 1)].items()):
        trail.leaves[("w1", 1)][index] = set(hashes) | set(hashes)
    report = verify(trail, codecs, keys)
    assert report.ok and report.checkpoints == 2


def test_records_missing_from_an_interrupted_batch_are_a_warning_not_a_failure(codecs, keyring, keys) -> None:
    key_id, key = keyring.signing_key()
    trail = seal_trail(codecs, keyring, [10])
    del trail.leaves[("w1", 0)][4]
    first = trail.checkpoints["w1"][0]
    trail.checkpoints["w1"].append(codecs[1].seal(writer="w1", sequence=1, leaves=[], previous=codecs[1].hash(first),
                                                  schema=codecs[0].fingerprint, key_id=key_id, key=key, interrupted=0))
    report = verify(trail, codecs, keys)
    assert report.ok and [w.kind for w in report.warnings] == [log.INTERRUPTED]


def test_rotated_signing_keys_keep_old_checkpoints_verifiable(codecs) -> None:
    keyring = Keyring.generate(signers=["processor"])
    trail = seal_trail(codecs, keyring, [5])
    keyring.rotate("signing", "processor")
    report = verify(trail, codecs, log.public_key_map(keyring.public_keys()))
    assert report.ok and report.checkpoints == 1


# --- receipts ----------------------------------------------------------------------------------
def _receipt(codecs, keyring: Keyring) -> dict:
    codec, checkpoint_codec = codecs
    key_id, key = keyring.signing_key()
    contents = [codec.content(record(random.Random(i), 3)) for i in range(11)]
    leaves = [leaf_hash(c) for c in contents]
    checkpoint = checkpoint_codec.seal(writer="w1", sequence=4, leaves=leaves, previous="ab" * 32, schema=codec.fingerprint,
                                       key_id=key_id, key=key)
    [public] = keyring.public_keys()
    return json.loads(json.dumps(make_receipt(recipient="agency1", content=contents[6], codec=codec, leaves=leaves, index=6,
                                              checkpoint=checkpoint, checkpoint_codec=checkpoint_codec, key=public)))


def test_a_receipt_verifies_offline_with_only_the_public_key(codecs, keyring, keys) -> None:
    receipt = _receipt(codecs, keyring)
    assert verify_receipt(receipt, codecs[1]) == []
    assert verify_receipt(receipt, codecs[1], pinned=keys) == []
    assert receipt["decision"]["recipient"] == "agency1"


def test_a_receipt_whose_record_was_altered_fails(codecs, keyring) -> None:
    receipt = _receipt(codecs, keyring)
    shown = copy.deepcopy(receipt)
    shown["record"]["decisions"][1]["outcome"] = "permit" if shown["record"]["decisions"][1]["outcome"] != "permit" else "no_agreement"
    assert any("record shown differs" in p for p in verify_receipt(shown, codecs[1]))
    sealed = copy.deepcopy(receipt)
    body = bytearray(__import__("base64").b64decode(sealed["record_avro"]))
    body[-5] ^= 1
    sealed["record_avro"] = __import__("base64").b64encode(bytes(body)).decode()
    assert verify_receipt(sealed, codecs[1])
    moved = copy.deepcopy(receipt)
    moved["position"]["leaf"] = 5
    assert any("inclusion proof" in p for p in verify_receipt(moved, codecs[1]))


def test_a_receipt_signed_by_an_unpublished_key_fails_against_the_published_keys(codecs, keys) -> None:
    receipt = _receipt(codecs, Keyring.generate(signers=["processor"]))
    assert verify_receipt(receipt, codecs[1]) == []  # consistent in itself
    assert any("not one of the published" in p for p in verify_receipt(receipt, codecs[1], pinned=keys))


def test_copies_inserted_at_other_leaves_do_not_stop_a_sealed_records_receipt_and_a_forged_copy_gets_none(codecs, keyring, keys) -> None:
    trail = seal_trail(codecs, keyring, [11])
    position, codec = ("w1", 0), codecs[0]
    [checkpoint] = trail.checkpoints["w1"]
    sealed = [next(iter(trail.leaves[position][i])) for i in range(11)]
    rng = random.Random(7)
    for index in (2, 6, 9):  # someone with write access to the table puts a second record at three sealed positions
        trail.add(position, index, codec.content(record(rng)), 1)
    assert log.CONFLICTING_RECORD in kinds(verify(trail, codecs, keys))  # the trail says it was tampered with ...
    for index in (0, 6, 10):  # ... and each sealed record, beside a forged copy or one itself, still has its receipt
        leaves = sealed_leaves(checkpoint, trail.leaves[position], index, sealed[index])
        assert leaves == sealed and merkle_root(leaves).hex() == checkpoint.root
    forged = next(iter(trail.leaves[position][6] - {sealed[6]}))
    with pytest.raises(log.AuditLogError, match="not the one it sealed"):
        sealed_leaves(checkpoint, trail.leaves[position], 6, forged)
    with pytest.raises(log.AuditLogError, match="missing"):  # a deleted neighbour: no proof can be made
        sealed_leaves(checkpoint, {i: h for i, h in trail.leaves[position].items() if i != 3}, 0, sealed[0])
    crowded = {i: {sealed[i]} | {leaf_hash(codec.content(record(rng))) for _ in range(3)} for i in range(11)}
    assert 4 ** 10 > MAX_COPY_CHOICES
    with pytest.raises(log.AuditLogError, match="too many to try"):  # so many copies that trying them all is refused, not slow
        sealed_leaves(checkpoint, crowded, 0, sealed[0])


# --- the data plane's side ---------------------------------------------------------------------
def test_placed_records_keep_the_routers_bytes_and_their_leaf_is_the_canonical_encoding(catalog, codecs, keyring, tmp_path: Path) -> None:
    from backbone.events.serde import encoder_for
    from processors.router import UNPLACED

    schemas = LocalSchemas()
    audit_schema = catalog.internal_schema(AUDIT_EVENT)
    encode = encoder_for(schemas, "audit.decisions-value", audit_schema)
    checkpointer = Checkpointer(WriterSlot.take(tmp_path), codecs[0], codecs[1], 7, keyring)
    rng = random.Random(3)
    records = [record(rng, 1 + i % 4) for i in range(300)]
    placed = [checkpointer.place(encode({**r, **UNPLACED})) for r in records]
    sealed = checkpointer.seal()
    parsed = parse_schema(audit_schema)
    leaves = []
    for index, (value, original) in enumerate(zip(placed, records, strict=True)):
        decoded = schemaless_reader(BytesIO(value[HEADER_SIZE:]), parsed, None)
        assert (decoded["writer"], decoded["checkpoint"], decoded["leaf"]) == (checkpointer.writer, 0, index)
        content = log.content_of(value[HEADER_SIZE:], decoded)
        assert content == codecs[0].content({k: v for k, v in decoded.items() if k not in log.POSITION_FIELDS})
        leaves.append(leaf_hash(content))
    assert sealed.checkpoint.root == merkle_root(leaves).hex() and sealed.checkpoint.records == 300
    assert sealed.value[:HEADER_SIZE] == b"\x00\x00\x00\x00\x07"


def test_a_writer_keeps_its_chain_across_restarts_and_workers_sharing_a_data_dir_get_their_own(codecs, keyring, tmp_path: Path) -> None:
    first = Checkpointer(WriterSlot.take(tmp_path), codecs[0], codecs[1], 1, keyring)
    second = Checkpointer(WriterSlot.take(tmp_path), codecs[0], codecs[1], 1, keyring)
    assert first.writer != second.writer
    chain = defaultdict(list)
    for checkpointer in (first, second):
        for _ in range(3):
            checkpointer.place(b"\x00" * HEADER_SIZE + b"\x02x" + log.EMPTY_POSITION)
            chain[checkpointer.writer].append(checkpointer.seal().checkpoint)
    writer = first.writer
    first.close(clean=True)
    again = Checkpointer(WriterSlot.take(tmp_path), codecs[0], codecs[1], 1, keyring)
    assert (again.writer, again.sequence, again.republish, again.interrupted) == (writer, 3, None, None)
    again.place(b"\x00" * HEADER_SIZE + b"\x02x" + log.EMPTY_POSITION)
    chain[writer].append(again.seal().checkpoint)
    again.slot.release()  # a crash: no clean close
    after_crash = Checkpointer(WriterSlot.take(tmp_path), codecs[0], codecs[1], 1, keyring)
    assert after_crash.writer == writer and after_crash.interrupted == 3 and after_crash.republish.checkpoint == chain[writer][-1]
    after_crash.place(b"\x00" * HEADER_SIZE + b"\x02x" + log.EMPTY_POSITION)
    resumed = after_crash.seal().checkpoint
    assert resumed.interrupted == 3
    chain[writer].append(resumed)
    good, _, failures = log.check_chain(codecs[1], writer, chain[writer], log.public_key_map(keyring.public_keys()))
    assert failures == [] and sorted(good) == [0, 1, 2, 3, 4]


def test_a_processor_adds_the_signing_key_to_a_keyring_made_without_one(tmp_path: Path) -> None:
    from backbone.keys.master import encode_master_key, new_master_key
    from backbone.settings import load_settings
    from processors.checkpoints import ensure_signing_key

    master = new_master_key()
    settings = load_settings(data_dir=tmp_path, keyring_path=tmp_path / "keyring.json", master_key=encode_master_key(master))
    Keyring.generate(domains=["oversight"]).save(settings.keyring_path, master)
    old = Keyring.load(settings.keyring_path, master)
    updated = ensure_signing_key(settings, old)
    [public] = Keyring.load(settings.keyring_path, master).public_keys()
    assert updated.signing_key()[0] == public.key_id
    assert ensure_signing_key(settings, updated) is updated  # once is enough
