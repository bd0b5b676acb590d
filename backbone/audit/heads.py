"""Where each writer's chain ends, as known apart from the trail being verified, and the check that
the trail reaches it: a trail cut short (a writer deleted whole, its newest checkpoints deleted, every
operator action with its checkpoints, or everything) holds no gap, fork or bad root, so only a head
recorded elsewhere tells it from a trail that was never longer.

Heads come from the chain heads on Kafka (`consumers.audit_heads`), the writers' own state in
`<data dir>/audit-writers/` (`writer_state_heads`), and a verifier's record (`--expect-head
WRITER=SEQ[:HASH]`, e.g. printed by an earlier `backbone audit verify`, or a receipt's checkpoint).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from backbone.audit.log import AuditLogError, CheckpointCodec, Failure
from backbone.errors import BackboneError
from backbone.keys.keyring import PublicKey

WRITERS_DIR = "audit-writers"  # under the data dir: one `<writer>.json` (chain state) and `.lock` per processor writer
MISSING_WRITER = "missing_writer"  # a writer with a known head has no checkpoint in the trail
MISSING_CHECKPOINTS = "missing_checkpoints"  # the trail ends before a writer's known head
OTHER_HEAD = "other_head"  # the trail's checkpoint at a known head's sequence is another one
EMPTY_TRAIL = "empty_trail"  # recipient databases hold shared rows, the trail no decision
HEADS_IN_TRANSIT = "not_landed_yet"  # a warning: checkpoints on Kafka the audit sink has not consumed yet
_EXPECTED = re.compile(r"^(?P<writer>[A-Za-z0-9_.-]{1,64})=(?P<sequence>\d{1,18})(?::(?P<hash>[0-9a-fA-F]{8,64}))?$")


@dataclass(slots=True, frozen=True)
class Head:
    """A writer's chain reaches at least checkpoint `sequence` (whose hash, when known, is `hash`),
    as `source` says (e.g. "on Kafka")."""

    writer: str
    sequence: int
    hash: str | None
    source: str

    def __str__(self) -> str:
        return f"{self.writer}={self.sequence}" + (f":{self.hash}" if self.hash else "")


def parse_expected(text: str) -> Head:
    """`WRITER=SEQ[:HASH]` (HASH: the checkpoint's hash, hex, at least its first 8 digits)."""
    found = _EXPECTED.match(text.strip())
    if found is None:
        raise BackboneError(f"--expect-head {text[:80]!r}: expected WRITER=SEQ or WRITER=SEQ:HASH (e.g. operations=2:9f3c...), "
                            "as `backbone audit verify` prints each writer's head")
    digest = found["hash"]
    return Head(found["writer"], int(found["sequence"]), digest.lower() if digest else None, "expected (--expect-head)")


def writer_state_heads(data_dir: Path, codec: CheckpointCodec, keys: Mapping[str, PublicKey]) -> tuple[list[Head], list[str]]:
    """The heads the processor writers on this host recorded (`processors.checkpoints`), and why a
    state was not used. A state not marked clean may name a checkpoint still in flight (sealed
    before its batch is produced), so its head is the one before it, whose hash it names."""
    heads: list[Head] = []
    unused: list[str] = []
    directory = Path(data_dir) / WRITERS_DIR
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        try:
            state = json.loads(path.read_text())
            checkpoint = codec.decode(base64.b64decode(state["checkpoint"], validate=True))
        except (OSError, ValueError, KeyError, TypeError, AuditLogError) as exc:
            unused.append(f"writer state {path} is unreadable ({type(exc).__name__})")
            continue
        problem = codec.signature_problem(checkpoint, keys)
        if problem:
            unused.append(f"writer state {path}: its checkpoint {problem}")
            continue
        source = f"in the writer's state ({path.name})"
        if state.get("clean"):
            heads.append(Head(checkpoint.writer, checkpoint.sequence, codec.hash(checkpoint), source))
        elif checkpoint.sequence > 0:
            heads.append(Head(checkpoint.writer, checkpoint.sequence - 1, checkpoint.previous, source))
    return heads, unused


def check_heads(chains: Mapping[str, Mapping[int, str]], heads: Iterable[Head], trail: str) -> list[Failure]:
    """Whether the trail (`chains`: per writer, the hash of each checkpoint that holds) reaches every
    head, and holds the very checkpoint a head names by hash; one failure per writer and reason,
    naming the writer, the head's source and what is missing. `trail` names it ("landed trail")."""
    failures: list[Failure] = []
    by_writer: dict[str, list[Head]] = {}
    for head in heads:
        by_writer.setdefault(head.writer, []).append(head)
    for writer, known in sorted(by_writer.items()):
        chain = chains.get(writer, {})
        highest = max(known, key=lambda h: h.sequence)
        end = max(chain, default=None)
        if end is None:
            failures.append(Failure(MISSING_WRITER, writer, None, f"head {highest.source} is checkpoint {highest.sequence}, the {trail} "
                                                                  f"holds none of its checkpoints: {highest.sequence + 1} missing"))
        elif end < highest.sequence:
            missing = highest.sequence - end
            failures.append(Failure(MISSING_CHECKPOINTS, writer, None, f"head {highest.source} is checkpoint {highest.sequence}, the "
                                                                       f"{trail} ends at {end}: {missing} checkpoint(s) missing"))
        for head in known:
            held = chain.get(head.sequence)
            if head.hash and held is not None and not held.startswith(head.hash):
                failures.append(Failure(OTHER_HEAD, writer, head.sequence, f"the checkpoint {head.source} has hash {head.hash[:16]}…, "
                                                                           f"the {trail} holds another one ({held[:16]}…)"))
    return failures
