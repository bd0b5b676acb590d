"""The verifiable audit log: canonical record encoding, Merkle trees, signed checkpoints, chain and
record verification (receipts: `backbone.audit.receipts`). Pure code (no Kafka, no ClickHouse): the processor seals with it,
`backbone audit verify` and `verify-receipt` check with it, tests run it at any size.

- A record's leaf is SHA-256(0x00 || content), content being the Avro binary body of the audit
  record up to its position fields (`writer`, `checkpoint`, `leaf`, last in the schema): the
  processor hashes the body it sends, and anyone can recompute it from the landed columns.
  Positions are not in the leaf: the tree authenticates the order, the checkpoint the writer and
  sequence.
- One Merkle tree per batch (RFC 9162 §2.1: node SHA-256(0x01 || left || right); a tree of n
  leaves splits at the largest power of two below n), one checkpoint per batch, signed with
  Ed25519 over the Avro body of its fields before `signature`, chained by the SHA-256 of that
  body (`previous`); `leaves` (SHA-256 of the sorted leaf hashes) tells a reordering from an edit.
"""

from __future__ import annotations

import base64
import copy
import hashlib
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime, timedelta
from io import BytesIO
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import to_parsing_canonical_form

from backbone.errors import BackboneError
from backbone.keys.keyring import PublicKey

POSITION_FIELDS = ("writer", "checkpoint", "leaf")
# Anchor of the operators' chain in processor checkpoints (`backbone.audit.anchors`), added later: a
# checkpoint without one is signed, hashed and read as before they existed, so old checkpoints verify.
ANCHOR_FIELDS = ("operations_checkpoint", "operations_hash")
SIGNATURE_FIELD = "signature"
SIGNING_CONTEXT = b"backbone audit checkpoint v1\x00"  # signatures over checkpoints only, never reusable elsewhere
_sha256 = hashlib.sha256


class AuditLogError(BackboneError):
    """A record, checkpoint or receipt that cannot be encoded or read as the log defines it."""


# --- Merkle trees (RFC 9162) ------------------------------------------------------------------
def leaf_hash(content: bytes) -> bytes:
    return _sha256(b"\x00" + content).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return _sha256(b"\x01" + left + right).digest()


def _levels(leaves: Sequence[bytes]) -> list[list[bytes]]:
    """Every level of the tree, leaves first. An odd last node moves up unpaired: the same tree as
    RFC 9162's split at the largest power of two."""
    level = list(leaves)
    levels = [level]
    while len(level) > 1:
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
        levels.append(level)
    return levels


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """The tree hash of leaf hashes `leaves` (SHA-256 of nothing for an empty tree)."""
    return _levels(leaves)[-1][0] if leaves else _sha256(b"").digest()


def inclusion_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """RFC 9162 audit path of leaf `index`, lowest sibling first."""
    if not 0 <= index < len(leaves):
        raise AuditLogError(f"leaf {index} is not in a tree of {len(leaves)} leaves")
    proof = []
    for level in _levels(leaves)[:-1]:
        sibling = index ^ 1
        if sibling < len(level):
            proof.append(level[sibling])
        index >>= 1
    return proof


def root_from_proof(leaf: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes:
    """The root an inclusion proof leads to (RFC 9162 §2.1.3.2); a malformed proof raises."""
    if not 0 <= index < size:
        raise AuditLogError(f"leaf {index} is not in a tree of {size} leaves")
    fn, sn, root = index, size - 1, leaf
    for sibling in proof:
        if sn == 0:
            raise AuditLogError("the inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            root = node_hash(sibling, root)
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            root = node_hash(root, sibling)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise AuditLogError("the inclusion proof is shorter than the tree is deep")
    return root


def leaves_digest(leaves: Iterable[bytes]) -> bytes:
    """SHA-256 of the leaf hashes in sorted order: the same for any order of the same records."""
    return _sha256(b"".join(sorted(leaves))).digest()


# --- canonical encoding -----------------------------------------------------------------------
def _varint(value: int) -> bytes:
    zigzag = (value << 1) ^ (value >> 63)
    out = bytearray()
    while zigzag > 0x7F:
        out.append((zigzag & 0x7F) | 0x80)
        zigzag >>= 7
    out.append(zigzag)
    return bytes(out)


def position_suffix(writer: str, checkpoint: int, leaf: int) -> bytes:
    """The Avro bytes of the position fields, which end every audit record's body."""
    name = writer.encode()
    return _varint(len(name)) + name + _varint(checkpoint) + _varint(leaf)


EMPTY_POSITION = position_suffix("", 0, 0)  # what the router writes before the data plane places the record


def schema_fingerprint(schema: Mapping[str, Any]) -> str:
    """Hex SHA-256 of a schema's parsing canonical form."""
    return _sha256(to_parsing_canonical_form(parse_schema(copy.deepcopy(dict(schema)))).encode()).hexdigest()


def _write(parsed: Any, record: Mapping[str, Any]) -> bytes:
    buffer = BytesIO()
    schemaless_writer(buffer, parsed, record)
    return buffer.getvalue()


def _read(parsed: Any, body: bytes) -> dict[str, Any]:
    buffer = BytesIO(body)
    record = schemaless_reader(buffer, parsed, None)
    if buffer.tell() != len(body):
        raise AuditLogError(f"{len(body) - buffer.tell()} trailing bytes after the record")
    return record


def content_schema(audit_schema: Mapping[str, Any]) -> dict[str, Any]:
    """The audit schema without its position fields, which must be its last fields."""
    names = [item["name"] for item in audit_schema["fields"]]
    if tuple(names[-len(POSITION_FIELDS):]) != POSITION_FIELDS:
        raise AuditLogError(f"the audit schema must end with the fields {', '.join(POSITION_FIELDS)}: the leaf is the body before them")
    return {**copy.deepcopy(dict(audit_schema)), "fields": copy.deepcopy(audit_schema["fields"][:-len(POSITION_FIELDS)])}


def content_of(body: bytes, record: Mapping[str, Any]) -> bytes:
    """The content (leaf bytes) of a whole audit record body, given the record it decodes to."""
    suffix = position_suffix(record["writer"], record["checkpoint"], record["leaf"])
    if not body.endswith(suffix):
        raise AuditLogError("the record body does not end with its position fields")
    return body[:len(body) - len(suffix)]


class RecordCodec:
    """The canonical encoding of audit records' content under one schema, built once."""

    def __init__(self, schema: Mapping[str, Any]) -> None:
        self.schema = copy.deepcopy(dict(schema))
        self.fingerprint = schema_fingerprint(self.schema)
        self._content = parse_schema(copy.deepcopy(self.schema))

    @classmethod
    def for_audit_schema(cls, audit_schema: Mapping[str, Any]) -> RecordCodec:
        return cls(content_schema(audit_schema))

    def content(self, record: Mapping[str, Any]) -> bytes:
        """The bytes a record's leaf hashes; a value the schema refuses raises `AuditLogError`."""
        try:
            return _write(self._content, record)
        except Exception as exc:  # noqa: BLE001 - fastavro raises many types; values may be personal
            raise AuditLogError(f"record does not encode with the audit schema ({type(exc).__name__})") from None

    def read_content(self, content: bytes) -> dict[str, Any]:
        return _read(self._content, content)


# --- checkpoints ------------------------------------------------------------------------------
@dataclass(slots=True, frozen=True)
class Checkpoint:
    """One writer's signed statement about one batch (`schemas/backbone.AuditCheckpoint.avsc`)."""

    writer: str
    sequence: int
    key_id: str
    records: int
    root: str
    leaves: str
    previous: str
    created_at: datetime
    schema: str
    interrupted: int | None = None
    operations_checkpoint: int | None = None
    operations_hash: str | None = None
    signature: str = ""

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Checkpoint:
        values = {item.name: record[item.name] for item in fields(cls) if item.name in record}
        created = values["created_at"]
        if isinstance(created, int):
            values["created_at"] = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=created)
        return cls(**values)

    def to_record(self) -> dict[str, Any]:
        record = asdict(self)
        return record if self.anchored else {k: v for k, v in record.items() if k not in ANCHOR_FIELDS}

    @property
    def anchored(self) -> bool:
        return self.operations_checkpoint is not None or self.operations_hash is not None


class CheckpointCodec:
    """Avro bodies of checkpoints: the signed body (every field before `signature`) and the whole."""

    def __init__(self, checkpoint_schema: Mapping[str, Any]) -> None:
        names = [item["name"] for item in checkpoint_schema["fields"]]
        if names[-1] != SIGNATURE_FIELD:
            raise AuditLogError("the checkpoint schema must end with its signature field")
        def parsed(fields: list[Any]) -> Any:
            return parse_schema({**copy.deepcopy(dict(checkpoint_schema)), "fields": copy.deepcopy(fields)})

        self._unsigned, self._full = parsed(checkpoint_schema["fields"][:-1]), parsed(checkpoint_schema["fields"])
        before = [item for item in checkpoint_schema["fields"] if item["name"] not in ANCHOR_FIELDS]  # the body before anchors
        self._unsigned_before, self._full_before = parsed(before[:-1]), parsed(before)

    def signed_body(self, checkpoint: Checkpoint) -> bytes:
        return _write(self._unsigned if checkpoint.anchored else self._unsigned_before, checkpoint.to_record())

    def encode(self, checkpoint: Checkpoint) -> bytes:
        return _write(self._full, checkpoint.to_record())

    def decode(self, body: bytes) -> Checkpoint:
        """A checkpoint body, written with this schema or the one before anchors (which never reads as this one)."""
        try:
            return Checkpoint.from_record(_read(self._full, body))
        except Exception as exc:  # noqa: BLE001 - fastavro raises many types
            try:
                return Checkpoint.from_record(_read(self._full_before, body))
            except Exception:  # noqa: BLE001
                raise AuditLogError(str(exc) if isinstance(exc, AuditLogError) else f"not a checkpoint body ({type(exc).__name__})") from None

    def hash(self, checkpoint: Checkpoint) -> str:
        """The hex SHA-256 the writer's next checkpoint names as `previous`."""
        return _sha256(self.signed_body(checkpoint)).hexdigest()

    def seal(self, *, writer: str, sequence: int, leaves: Sequence[bytes], previous: str, schema: str,
             key_id: str, key: Ed25519PrivateKey, interrupted: int | None = None, now: datetime | None = None,
             anchor: tuple[int, str] | None = None) -> Checkpoint:
        """The signed checkpoint of one batch, whose records have leaf hashes `leaves` in order;
        `anchor`: the operations chain's head (sequence, hash) the writer had read."""
        now = now or datetime.now(UTC)
        unsigned = Checkpoint(writer, sequence, key_id, len(leaves), merkle_root(leaves).hex(), leaves_digest(leaves).hex(),
                              previous, now.replace(microsecond=now.microsecond // 1000 * 1000), schema, interrupted,
                              *(anchor or (None, None)))
        signature = key.sign(SIGNING_CONTEXT + self.signed_body(unsigned))
        return Checkpoint(**{**unsigned.to_record(), "signature": base64.b64encode(signature).decode("ascii")})

    def signature_problem(self, checkpoint: Checkpoint, keys: Mapping[str, PublicKey]) -> str | None:
        """Why the signature does not hold under the published keys, or None when it does."""
        key = keys.get(checkpoint.key_id)
        if key is None:
            return f"signed with key {checkpoint.key_id!r}, which is not a published signing key"
        try:
            signature = base64.b64decode(checkpoint.signature, validate=True)
            key.verifier().verify(signature, SIGNING_CONTEXT + self.signed_body(checkpoint))
        except (InvalidSignature, ValueError):
            return f"the signature does not verify under key {checkpoint.key_id}"
        return None


# --- verification -----------------------------------------------------------------------------
FORGED_SIGNATURE = "forged_signature"
FORK = "fork"
GAP = "gap"
BROKEN_CHAIN = "broken_chain"
MISSING_RECORD = "missing_record"
EXTRA_RECORD = "extra_record"
CONFLICTING_RECORD = "conflicting_record"
REORDERED = "reordered"
EDITED_RECORD = "edited_record"
ORPHAN_RECORDS = "orphan_records"
UNSEALED_RECORDS = "unsealed_records"
UNREADABLE_RECORD = "unreadable_record"
OTHER_SCHEMA = "other_schema"
INTERRUPTED = "interrupted"  # a warning: records of a batch in flight when its writer crashed
BAD_TIMESTAMP = "bad_timestamp"  # an RFC 3161 timestamp that does not hold for its checkpoint (`backbone.audit.timestamps`)
TIMESTAMP_AHEAD = "timestamp_ahead"  # a warning: a timestamp of a checkpoint not (yet) in the trail


@dataclass(slots=True, frozen=True)
class Failure:
    kind: str
    writer: str
    sequence: int | None
    detail: str

    def __str__(self) -> str:
        where = f"writer {self.writer or '(none)'}" + (f" checkpoint {self.sequence}" if self.sequence is not None else "")
        return f"{where}: {self.kind.replace('_', ' ')}: {self.detail}"


@dataclass
class Report:
    """What a verification found: verified checkpoints, records, decisions and operator actions, and every failure."""

    checkpoints: int = 0
    records: int = 0
    decisions: int = 0
    operations: int = 0  # operator actions among the records (the `operations` chain)
    writers: set[str] = field(default_factory=set)
    chains: dict[str, dict[int, str]] = field(default_factory=dict)  # per writer, the hash of each checkpoint that holds
    failures: list[Failure] = field(default_factory=list)
    warnings: list[Failure] = field(default_factory=list)
    # RFC 3161 timestamps (`backbone.audit.timestamps`): tokens that hold, the checkpoints they cover (a
    # timestamp of checkpoint n covers the writer's chain up to n), tokens not checked for want of
    # the TSA's certificates, and the latest time a TSA vouched for
    timestamps: int = 0
    timestamped: int = 0
    timestamps_unchecked: int = 0
    timestamped_until: datetime | None = None

    @property
    def ok(self) -> bool:
        return not self.failures

    def merge(self, other: Report) -> None:
        self.checkpoints += other.checkpoints
        self.records += other.records
        self.decisions += other.decisions
        self.operations += other.operations
        self.writers |= other.writers
        for writer, chain in other.chains.items():
            self.chains.setdefault(writer, {}).update(chain)
        self.failures += other.failures
        self.warnings += other.warnings
        self.timestamps += other.timestamps
        self.timestamped += other.timestamped
        self.timestamps_unchecked += other.timestamps_unchecked
        if other.timestamped_until is not None:
            self.timestamped_until = max(self.timestamped_until or other.timestamped_until, other.timestamped_until)


def _spans(numbers: Iterable[int]) -> str:
    """`[1, 2, 3, 7]` -> `1-3, 7` (at most ten spans)."""
    spans: list[list[int]] = []
    for n in sorted(numbers):
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    text = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in spans[:10])
    return text + (f" and {len(spans) - 10} more ranges" if len(spans) > 10 else "")


def check_chain(codec: CheckpointCodec, writer: str, checkpoints: Iterable[Checkpoint],
                keys: Mapping[str, PublicKey]) -> tuple[dict[int, Checkpoint], set[int], list[Failure]]:
    """One writer's chain: (checkpoints that hold by signature and link, sequences named as
    interrupted, failures). Identical copies count once; two different checkpoints of one sequence
    are a fork; a sequence absent below the highest one is a gap."""
    by_sequence: dict[int, dict[bytes, Checkpoint]] = {}
    for checkpoint in checkpoints:
        by_sequence.setdefault(checkpoint.sequence, {})[codec.encode(checkpoint)] = checkpoint
    failures: list[Failure] = []
    good: dict[int, Checkpoint] = {}
    hashes: dict[int, str] = {}
    for sequence, copies in sorted(by_sequence.items()):
        signed = []
        for checkpoint in copies.values():
            problem = codec.signature_problem(checkpoint, keys)
            if problem:
                failures.append(Failure(FORGED_SIGNATURE, writer, sequence, problem))
            else:
                signed.append(checkpoint)
        if len(copies) > 1:
            failures.append(Failure(FORK, writer, sequence, f"{len(copies)} different checkpoints claim this sequence"))
        elif signed:
            good[sequence] = signed[0]
            hashes[sequence] = codec.hash(signed[0])
    highest = max(by_sequence, default=-1)
    missing = [s for s in range(highest + 1) if s not in by_sequence]
    if missing:
        failures.append(Failure(GAP, writer, missing[0], f"checkpoint(s) {_spans(missing)} of the chain 0-{highest} are missing"))
    for sequence, checkpoint in list(good.items()):
        expected = "" if sequence == 0 else hashes.get(sequence - 1)
        if expected is not None and checkpoint.previous != expected:
            failures.append(Failure(BROKEN_CHAIN, writer, sequence, f"names previous {checkpoint.previous[:16] or '(none)'}…, "
                                                                   f"not the hash of checkpoint {sequence - 1}"))
            del good[sequence]
    interrupted = {c.interrupted for c in good.values() if c.interrupted is not None}
    return good, interrupted, failures


def check_records(checkpoint: Checkpoint, found: Mapping[int, Collection[bytes]], interrupted: bool = False) -> list[Failure]:
    """Whether the records found for a checkpoint (leaf index -> distinct leaf hashes seen there)
    reproduce its root; if not, why: missing, extra, conflicting, reordered or edited. A checkpoint
    the writer later named as interrupted may miss records (a warning, `INTERRUPTED`)."""
    writer, sequence, size = checkpoint.writer, checkpoint.sequence, checkpoint.records
    failures = []
    conflicting = [index for index, hashes in found.items() if len(hashes) > 1]
    if conflicting:
        failures.append(Failure(CONFLICTING_RECORD, writer, sequence, f"different records at leaf {_spans(conflicting)}"))
    extra = [index for index in found if not 0 <= index < size]
    if extra:
        failures.append(Failure(EXTRA_RECORD, writer, sequence, f"records at leaf {_spans(extra)} beyond the {size} it seals"))
    missing = size - sum(1 for index in found if 0 <= index < size)
    if missing:
        absent = [index for index in range(size) if index not in found]
        kind = INTERRUPTED if interrupted else MISSING_RECORD
        why = "; the batch was in flight when the writer stopped and was decided again later" if interrupted else ""
        failures.append(Failure(kind, writer, sequence, f"{missing} of {size} records absent (leaf {_spans(absent)}){why}"))
    if failures:
        return failures
    leaves = [next(iter(found[index])) for index in range(size)]
    if merkle_root(leaves).hex() == checkpoint.root:
        return []
    if leaves_digest(leaves).hex() == checkpoint.leaves:
        return [Failure(REORDERED, writer, sequence, "the same records in another order: the root differs")]
    return [Failure(EDITED_RECORD, writer, sequence, "a record differs from what was sealed: the root differs")]


def public_key_map(keys: Iterable[PublicKey]) -> dict[str, PublicKey]:
    return {key.key_id: key for key in keys}
