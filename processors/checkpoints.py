"""The processor's side of the verifiable audit trail: each batch's audit records are placed in a
Merkle tree and sealed by one signed checkpoint on `audit.checkpoints` (`backbone.audit.log`).

The writer is a stable id per worker, kept with its chain state in `<data dir>/audit-writers/`
and held by an exclusive lock while the worker runs: workers sharing a data directory take
different ids, a restarted worker takes its chain up where it left it. The state (last sequence,
its hash, the signed checkpoint itself) is written, synced, before any record of the batch it
seals is produced, so a sequence is never used twice. A worker that stopped uncleanly publishes
its last checkpoint again (it may not have reached the broker) and names it `interrupted` in its
next checkpoint: that batch's records may be incomplete, and its events were decided again.
A worker with a stable writer id (`BACKBONE_AUDIT_WRITER`) that finds no state rebuilds it from
`audit.checkpoints` (`processors.writer_rebuild`): a rescheduled pod on a fresh volume continues its chain.

With `BACKBONE_AUDIT_TSA_URL` set, a `processors.timestamps.Timestamper` thread, started and
stopped with the writer, has its newest checkpoint timestamped by that TSA every interval.

Each checkpoint also names the newest checkpoint of the operators' `operations` chain the worker has
read (`processors.anchors`): the operators' trail is anchored under the processors' key.

Cost per batch: one Merkle root, one Ed25519 signature, one small synced file write (~2 ms on the
development machine's disk); per record one SHA-256 and a few bytes appended (~1-2 µs).
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from backbone.audit.heads import WRITERS_DIR
from backbone.audit.log import (
    EMPTY_POSITION,
    AuditLogError,
    Checkpoint,
    CheckpointCodec,
    RecordCodec,
    position_suffix,
    public_key_map,
)
from backbone.events.catalog import AUDIT_CHECKPOINT, AUDIT_EVENT, Catalog
from backbone.events.serde import HEADER_SIZE, MAGIC
from backbone.files.private import private_directory
from backbone.kafka.topics import CHECKPOINTS_TOPIC, Topics
from backbone.keys.keyring import PROCESSOR_SIGNER, Keyring, ensure_signer
from backbone.settings import Settings
from processors.timestamps import Timestamper
from processors.writer_rebuild import rebuilt_state

log = logging.getLogger(__name__)

CHECKPOINTS_SUBJECT = f"{CHECKPOINTS_TOPIC}-value"
_LEAF_PREFIX = hashlib.sha256(b"\x00")  # RFC 9162's leaf prefix, copied per record
# The Avro bytes of leaf indexes up to a large batch, made once: the last bytes of every placed record
_LEAF_INDEXES = tuple(position_suffix("", 0, index)[2:] for index in range(16_384))


@dataclass(slots=True, frozen=True)
class Sealed:
    """A batch's checkpoint, ready to produce."""

    key: bytes
    value: bytes
    checkpoint: Checkpoint


class WriterSlot:
    """One writer id and its chain state in the data directory, locked by this process."""

    def __init__(self, directory: Path, writer: str, lock_fd: int) -> None:
        self.directory = directory
        self.writer = writer
        self._lock_fd = lock_fd
        self.path = directory / f"{writer}.json"

    @classmethod
    def take(cls, data_dir: Path, stable: str | None = None) -> WriterSlot:
        """The first writer id in `data_dir` no running worker holds, or a new one; with a `stable`
        id (`BACKBONE_AUDIT_WRITER`), the first of `stable`, `stable.1`, ... no running worker holds."""
        directory = private_directory(Path(data_dir)) / WRITERS_DIR
        directory.mkdir(mode=0o700, exist_ok=True)
        if stable is not None:
            for n in range(1024):
                slot = cls._try(directory, stable if n == 0 else f"{stable}.{n}")
                if slot is not None:
                    return slot
            raise AuditLogError(f"every audit writer id {stable}, {stable}.1, ... is held; stop a worker or set another BACKBONE_AUDIT_WRITER")
        for lock in sorted(directory.glob("*.lock")):
            slot = cls._try(directory, lock.stem)
            if slot is not None:
                return slot
        while True:
            slot = cls._try(directory, f"w{uuid.uuid4().hex[:10]}")
            if slot is not None:
                return slot

    @classmethod
    def _try(cls, directory: Path, writer: str) -> WriterSlot | None:
        fd = os.open(directory / f"{writer}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return cls(directory, writer, fd)

    def load(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise AuditLogError(f"audit writer state {self.path} is unreadable ({type(exc).__name__}); "
                                "move it away to start a new writer (its chain stays verifiable)") from None

    def save(self, state: dict[str, Any]) -> None:
        """Write and sync the state; the old one stays until the new one is complete."""
        temporary = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, json.dumps(state).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, self.path)

    def release(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing the descriptor drops the lock
            self._lock_fd = -1


def ensure_signing_key(settings: Settings, keyring: Keyring) -> Keyring:
    """`keyring` if it holds the processors' signing key; else the keyring file with one added."""
    return ensure_signer(settings, keyring, PROCESSOR_SIGNER)


class Checkpointer:
    """Places each audit record of a batch and seals the batch. Not thread-safe: the data plane's."""

    def __init__(self, slot: WriterSlot, codec: RecordCodec, checkpoint_codec: CheckpointCodec, schema_id: int,
                 keyring: Keyring, operations_head: Callable[[], tuple[int, str] | None] | None = None,
                 stable: bool = False) -> None:
        self.slot = slot
        self.writer = slot.writer
        # A stable writer (its state may be rebuilt from Kafka) has each checkpoint acknowledged
        # before producing the records it seals (`processors.writer_rebuild`).
        self.checkpoint_first = stable
        self.codec = codec
        self.checkpoint_codec = checkpoint_codec
        self._header = bytes([MAGIC]) + schema_id.to_bytes(4, "big")
        self._key_id, self._key = keyring.signing_key(PROCESSOR_SIGNER)
        self._writer_bytes = position_suffix(self.writer, 0, 0)[:-2]  # the writer field's Avro bytes
        self.sequence = 0
        self.previous = ""
        self.interrupted: int | None = None
        self.republish: Sealed | None = None
        self._leaves: list[bytes] = []
        self._head = b""
        # The newest checkpoint sealed (or, at start, the last one of the chain): what the
        # timestamper, on its own thread, has timestamped (one attribute, replaced whole).
        self.last: Checkpoint | None = None
        self.timestamper: Timestamper | None = None
        # The operators' chain head this worker has read (`processors.anchors`), named in each checkpoint.
        self.operations_head = operations_head
        state = slot.load()
        if state is not None:
            last = self.last = self.checkpoint_codec.decode(base64.b64decode(state["checkpoint"]))
            self.sequence = last.sequence + 1
            self.previous = self.checkpoint_codec.hash(last)
            if not state.get("clean"):
                # The batch of `last` was in flight when the worker stopped: publish its checkpoint
                # again (identical bytes) and say so in the next one.
                self.interrupted = last.sequence
                self.republish = Sealed(self.writer.encode(), self._header + self.checkpoint_codec.encode(last), last)
        self._begin()

    @classmethod
    def open(cls, settings: Settings, catalog: Catalog, keyring: Keyring, register: Any,
             operations_head: Callable[[], tuple[int, str] | None] | None = None) -> Checkpointer:
        """The worker's writer: its slot, the signing key, the checkpoint schema registered
        (`register(subject, schema) -> id`) and the topic created; each checkpoint anchors
        `operations_head()`, the operators' chain head."""
        keyring = ensure_signing_key(settings, keyring)
        schema = catalog.internal_schema(AUDIT_CHECKPOINT)
        Topics(settings).ensure(CHECKPOINTS_TOPIC)
        schema_id = register(CHECKPOINTS_SUBJECT, schema)
        slot = WriterSlot.take(settings.data_dir, settings.audit_writer)
        try:
            checkpoint_codec = CheckpointCodec(schema)
            if settings.audit_writer is not None and slot.load() is None:
                rebuilt = rebuilt_state(settings, slot.writer, checkpoint_codec, public_key_map(keyring.public_keys()))
                if rebuilt is not None:
                    slot.save(rebuilt)
            made = cls(slot, RecordCodec.for_audit_schema(catalog.internal_schema(AUDIT_EVENT)), checkpoint_codec,
                       schema_id, keyring, operations_head, stable=settings.audit_writer is not None)
        except BaseException:
            slot.release()
            raise
        log.info("audit writer %s: next checkpoint %d%s", made.writer, made.sequence,
                 f" (checkpoint {made.interrupted} was in flight at the last stop)" if made.interrupted is not None else "")
        if settings.audit_tsa_url is not None:
            try:
                made.timestamper = Timestamper.open(settings, catalog, register, lambda: made.last, made.checkpoint_codec).start()
            except BaseException:
                made.close(clean=False)
                raise
        return made

    def _begin(self) -> None:
        self._leaves = []
        self._head = self._writer_bytes + position_suffix("", self.sequence, 0)[1:-1]

    def place(self, value: bytes) -> bytes:
        """The audit record `value` (as the router encoded it) at the next leaf of this batch."""
        if value[-3:] != EMPTY_POSITION:
            raise AuditLogError("an audit record reached the data plane already placed")
        leaves = self._leaves
        index = len(leaves)
        digest = _LEAF_PREFIX.copy()  # SHA-256(0x00 || content), the content hashed in place, not copied
        digest.update(memoryview(value)[HEADER_SIZE:-3])
        leaves.append(digest.digest())
        if index < len(_LEAF_INDEXES):
            return value[:-3] + self._head + _LEAF_INDEXES[index]
        return value[:-3] + self._head + position_suffix("", 0, index)[2:]

    @property
    def pending(self) -> int:
        return len(self._leaves)

    def seal(self, now: datetime | None = None) -> Sealed:
        """Sign the batch's checkpoint and record it in the writer state (synced) before any of
        its records is produced; the next batch starts."""
        checkpoint = self.checkpoint_codec.seal(
            writer=self.writer, sequence=self.sequence, leaves=self._leaves, previous=self.previous,
            schema=self.codec.fingerprint, key_id=self._key_id, key=self._key, interrupted=self.interrupted,
            now=now or datetime.now(UTC), anchor=self.operations_head() if self.operations_head is not None else None)
        body = self.checkpoint_codec.encode(checkpoint)
        self.slot.save({"writer": self.writer, "sequence": checkpoint.sequence, "checkpoint": base64.b64encode(body).decode(),
                        "clean": False})
        self.previous = self.checkpoint_codec.hash(checkpoint)
        self.last = checkpoint
        self.sequence += 1
        self.interrupted = None
        self._begin()
        return Sealed(self.writer.encode(), self._header + body, checkpoint)

    def close(self, clean: bool) -> None:
        """Release the writer; `clean` when every sealed batch was acknowledged and committed."""
        if self.timestamper is not None:
            self.timestamper.stop()
            self.timestamper = None
        try:
            state = self.slot.load()
            if clean and state is not None and not state.get("clean"):
                self.slot.save({**state, "clean": True})
        finally:
            self.slot.release()
