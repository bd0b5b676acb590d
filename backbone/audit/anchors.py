"""Nobody seals their own record alone: who signed each operator action, and where the operators'
`operations` chain is anchored out of their reach. Pure code, used by `backbone audit verify`.

- Signers. Each action's checkpoint must be signed with a key registered for the action's actor
  (owner `operator:<identity>`, `backbone.keys.keyring.operator_signer`, published with `backbone
  audit keys`): any other key fails (`wrong_signer`). The shared `operations` key of actions sealed
  before operators had keys of their own is a warning (`shared_signer`): it names no one.
- Anchors. Every processor writer's checkpoint names the newest checkpoint of the `operations` chain
  its worker had read on `audit.operations.checkpoints` (`operations_checkpoint`, `operations_hash`),
  under the processors' signing key, which operators do not hold. The operations chain must hold,
  at each anchored sequence, the checkpoint with the anchored hash; as the chain is hash-linked, an
  anchor vouches for every action up to it. A chain rewritten by someone holding operator keys only
  (an action deleted or edited, the later ones re-sealed and renumbered) differs from its anchors:
  named at each anchored sequence, with the processor checkpoint that anchored it and the action the
  trail holds there (`anchor_mismatch`). Actions sealed after the newest anchor rest on their
  signatures alone until a processor seals its next batch (`not_anchored`, a warning).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from backbone.audit.log import Checkpoint, Failure, Report, _spans
from backbone.keys.keyring import OPERATIONS_SIGNER, OPERATOR_SIGNER_PREFIX, PublicKey

OPERATIONS_WRITER = "operations"  # the operators' chain (`backbone.audit.operations`)
ANCHOR_MISMATCH = "anchor_mismatch"  # the operations chain is not the one a processor checkpoint anchored
NOT_ANCHORED = "not_anchored"  # a warning: operations checkpoints sealed after the newest anchor
WRONG_SIGNER = "wrong_signer"  # an action signed with a key not registered for its actor
SHARED_SIGNER = "shared_signer"  # a warning: actions signed with the shared operations key (before operators' own keys)


@dataclass(slots=True, frozen=True)
class Anchor:
    """Processor writer `writer`'s checkpoint `sequence` names operations checkpoint `anchored`, hash `hash`."""

    writer: str
    sequence: int
    anchored: int
    hash: str


def anchors_in(chains: Mapping[str, Mapping[int, Checkpoint]]) -> list[Anchor]:
    """The anchors in the processor writers' verified checkpoints, the first of each (sequence, hash)."""
    found: dict[tuple[int, str], Anchor] = {}
    for writer, chain in sorted(chains.items()):
        if writer == OPERATIONS_WRITER:
            continue
        for sequence, checkpoint in sorted(chain.items()):
            if checkpoint.operations_checkpoint is not None and checkpoint.operations_hash:
                key = (checkpoint.operations_checkpoint, checkpoint.operations_hash)
                found.setdefault(key, Anchor(writer, sequence, *key))
    return sorted(found.values(), key=lambda a: (a.anchored, a.writer, a.sequence))


def describe(action: Mapping[str, Any] | None) -> str:
    """An operator action as verify names it (no personal data: actions hold none)."""
    if not action:
        return "no action"
    return f"{action.get('action')} by {action.get('actor')} on {action.get('target')!r} (action {action.get('action_id')})"


def check_anchors(chain: Mapping[int, str], anchors: Iterable[Anchor],
                  actions: Mapping[int, Mapping[str, Any]]) -> tuple[list[Failure], list[Failure]]:
    """(failures, warnings) of the operations chain (`chain`: the hash of each verified checkpoint)
    against the processors' anchors; `actions`: the action the trail holds at each sequence."""
    failures: list[Failure] = []
    anchors = list(anchors)
    end = max(chain, default=None)
    for anchor in anchors:
        held = chain.get(anchor.anchored)
        if held == anchor.hash:
            continue
        if held is None:
            what = "the trail holds no verified checkpoint there" + (f" (its chain ends at {end})" if end is not None else "")
        else:
            what = f"the trail holds {describe(actions.get(anchor.anchored))} there, in another checkpoint ({held[:16]}…)"
        failures.append(Failure(ANCHOR_MISMATCH, OPERATIONS_WRITER, anchor.anchored,
                                f"anchored by processor writer {anchor.writer} in its checkpoint {anchor.sequence} as "
                                f"{anchor.hash[:16]}…; {what}: the operator actions up to it were rewritten"))
    highest = max((a.anchored for a in anchors), default=-1)
    later = sorted(s for s in chain if s > highest)
    warnings = []
    if later:
        since = f"after the newest anchor (checkpoint {highest})" if highest >= 0 else "while no processor checkpoint anchored the chain"
        warnings.append(Failure(NOT_ANCHORED, OPERATIONS_WRITER, later[0], f"checkpoint(s) {_spans(later)} were sealed {since}: "
                                                                           "they rest on the operators' signatures alone until a "
                                                                           "processor seals its next batch"))
    return failures, warnings


def check_signers(chain: Mapping[int, Checkpoint], actions: Mapping[int, Mapping[str, Any]],
                  keys: Mapping[str, PublicKey]) -> tuple[list[Failure], list[Failure]]:
    """(failures, warnings): each action's checkpoint signed by a key registered for its actor."""
    failures: list[Failure] = []
    shared: list[int] = []
    for sequence, checkpoint in sorted(chain.items()):
        action, key = actions.get(sequence), keys.get(checkpoint.key_id)
        if not action or key is None:
            continue  # a missing record or an unknown key is a failure of its own
        if key.owner == OPERATIONS_SIGNER:
            shared.append(sequence)
        elif key.owner != f"{OPERATOR_SIGNER_PREFIX}{action.get('actor')}":
            failures.append(Failure(WRONG_SIGNER, OPERATIONS_WRITER, sequence,
                                    f"{describe(action)} is signed with key {checkpoint.key_id} of {key.owner or '(no one)'}, "
                                    f"not a key registered for {action.get('actor')}"))
    warnings = [Failure(SHARED_SIGNER, OPERATIONS_WRITER, shared[0], f"checkpoint(s) {_spans(shared)} are signed with the shared "
                                                                      "operations key (sealed before operators had keys of their "
                                                                      "own): they name their actor, not prove it")] if shared else []
    return failures, warnings


def check(report: Report, chains: Mapping[str, Mapping[int, Checkpoint]], actions: Mapping[int, Mapping[str, Any]],
          keys: Mapping[str, PublicKey]) -> None:
    """Add to `report` what the operators' signers and the processors' anchors say about the operations chain."""
    operations = chains.get(OPERATIONS_WRITER, {})
    for failures, warnings in (check_signers(operations, actions, keys),
                               check_anchors(report.chains.get(OPERATIONS_WRITER, {}), anchors_in(chains), actions)):
        report.failures += failures
        report.warnings += warnings
