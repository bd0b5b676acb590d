"""Receipts: one audit record's proof of sealing that a third party checks offline with only the
public signing key (`backbone audit receipt`, `backbone audit verify-receipt`).

A receipt carries the record as JSON and as the exact bytes its leaf hashes, the record schema,
its RFC 9162 audit path, the signed checkpoint (JSON and Avro) and the public key. It holds the
whole audit record of the event (every recipient's decision and event id, the subject's oversight
pseudonym): hand it only to whom may see that.
"""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from backbone.audit.log import (
    AuditLogError,
    Checkpoint,
    CheckpointCodec,
    RecordCodec,
    inclusion_proof,
    leaf_hash,
    merkle_root,
    root_from_proof,
)
from backbone.keys.keyring import PublicKey

RECEIPT_FORMAT = "backbone-audit-receipt/1"
MAX_COPY_CHOICES = 4096  # ways of picking among conflicting copies tried before giving up (fail closed)


def sealed_leaves(checkpoint: Checkpoint, found: Mapping[int, Collection[bytes]], index: int, leaf: bytes) -> list[bytes]:
    """The leaves `checkpoint` sealed with `leaf` at `index`, chosen among the copies found at each
    leaf (a row inserted later at a sealed position is a second copy there): the choice that
    reproduces the signed root. A forged copy beside someone else's record does not stop that
    record's receipt; a forged record itself has none. `AuditLogError` when no choice (or too
    many to try) reproduces the root."""
    if not 0 <= index < checkpoint.records or any(not 0 <= i < checkpoint.records for i in found):
        raise AuditLogError(f"checkpoint {checkpoint.sequence} of writer {checkpoint.writer} seals {checkpoint.records} "
                            "records; the rows found name other leaves")
    choices = [sorted(found.get(i, ())) if i != index else [leaf] for i in range(checkpoint.records)]
    if not all(choices):
        raise AuditLogError(f"records of checkpoint {checkpoint.sequence} of writer {checkpoint.writer} are missing")
    ways = 1
    for copies in choices:
        ways *= len(copies)
    if ways > MAX_COPY_CHOICES:
        raise AuditLogError(f"checkpoint {checkpoint.sequence} of writer {checkpoint.writer}: {ways} ways to pick among "
                            "conflicting copies of its records, too many to try: the trail table was tampered with")
    for leaves in itertools.product(*choices):
        if merkle_root(leaves).hex() == checkpoint.root:
            return list(leaves)
    raise AuditLogError(f"the record at leaf {index} of checkpoint {checkpoint.sequence} of writer {checkpoint.writer} "
                        "is not the one it sealed")


def jsonable(value: Any) -> Any:
    """A decoded Avro value as JSON: UUIDs as text, times as ISO 8601 (UTC)."""
    if isinstance(value, dict):
        return {key: jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def make_receipt(*, recipient: str, content: bytes, codec: RecordCodec, leaves: Sequence[bytes], index: int,
                 checkpoint: Checkpoint, checkpoint_codec: CheckpointCodec, key: PublicKey) -> dict[str, Any]:
    """A self-contained receipt: the record (bytes and JSON), its audit path, the signed checkpoint
    and the public key, enough to check offline that the record was sealed."""
    record = jsonable(codec.read_content(content))
    decision = next((entry for entry in record.get("decisions", []) if entry.get("recipient") == recipient), None)
    if decision is None:
        raise AuditLogError(f"the record of event {record.get('event_id')} holds no decision for {recipient!r}")
    return {
        "format": RECEIPT_FORMAT,
        "recipient": recipient,
        "decision": decision,
        "record": record,
        "record_avro": base64.b64encode(content).decode("ascii"),
        "record_schema": codec.schema,
        "position": {"writer": checkpoint.writer, "checkpoint": checkpoint.sequence, "leaf": index},
        "proof": [node.hex() for node in inclusion_proof(leaves, index)],
        "checkpoint": jsonable(checkpoint.to_record()),
        "checkpoint_avro": base64.b64encode(checkpoint_codec.encode(checkpoint)).decode("ascii"),
        "public_key": key.to_json(),
    }


def verify_receipt(receipt: Mapping[str, Any], checkpoint_codec: CheckpointCodec,
                   pinned: Mapping[str, PublicKey] | None = None) -> list[str]:
    """Every reason the receipt does not hold (empty: it holds). With `pinned` keys the receipt's
    key must be one of them; without, the key it carries is trusted as given."""
    try:
        if receipt.get("format") != RECEIPT_FORMAT:
            return [f"not a {RECEIPT_FORMAT} receipt"]
        codec = RecordCodec(receipt["record_schema"])
        content = base64.b64decode(receipt["record_avro"], validate=True)
        checkpoint = checkpoint_codec.decode(base64.b64decode(receipt["checkpoint_avro"], validate=True))
        position = receipt["position"]
        key = PublicKey.from_json(receipt["public_key"])
        proof = [bytes.fromhex(node) for node in receipt["proof"]]
    except Exception as exc:  # noqa: BLE001 - an altered receipt fails in many ways
        return [f"the receipt is malformed ({type(exc).__name__})"]
    problems = []
    if jsonable(checkpoint.to_record()) != receipt["checkpoint"]:
        problems.append("the checkpoint shown differs from the checkpoint signed")
    if pinned is not None and (key.key_id not in pinned or pinned[key.key_id].public != key.public):
        problems.append(f"key {key.key_id} is not one of the published signing keys given")
    problem = checkpoint_codec.signature_problem(checkpoint, {key.key_id: key})
    if problem:
        problems.append(problem)
    if codec.fingerprint != checkpoint.schema:
        problems.append("the record schema is not the one the checkpoint names")
    try:
        if jsonable(codec.read_content(content)) != receipt["record"]:
            problems.append("the record shown differs from the record sealed")
    except Exception:  # noqa: BLE001 - altered bytes fail in many ways
        problems.append("the sealed record bytes do not decode")
    if next((e for e in receipt["record"].get("decisions", []) if e.get("recipient") == receipt["recipient"]), None) != receipt["decision"]:
        problems.append(f"the decision shown is not the record's decision for {receipt['recipient']}")
    if (position.get("writer"), position.get("checkpoint")) != (checkpoint.writer, checkpoint.sequence):
        problems.append("the position names another checkpoint")
    try:
        root = root_from_proof(leaf_hash(content), int(position["leaf"]), checkpoint.records, proof)
        if root.hex() != checkpoint.root:
            problems.append("the inclusion proof does not lead to the checkpoint's root: the record is not the one sealed")
    except AuditLogError as exc:
        problems.append(str(exc))
    return problems


def dumps(receipt: Mapping[str, Any]) -> str:
    return json.dumps(receipt, indent=2, sort_keys=True)
