"""The processor's erasure table: which subjects were erased, fed by the compacted `erasures` topic.

Every worker reads the whole topic itself, like consent, and the policy engine asks the table once
per event (`erased(subject)`), so an erasure applies on every worker from the next event it
decides. The table holds oversight tokens only, never an id: it matches an event by computing the
oversight token of the event's subject, as the router does for the audit record, under each
oversight key id the erasure records name (a rotation of the oversight key does not undo one).

Fail closed:
- An erasure is never undone: a tombstone or an unreadable value on `erasures` keeps whatever its
  key erased (the key is the oversight token itself); an unreadable value is counted and logged.
- A record none of whose tokens this worker's keyring can compute (it lacks every oversight key
  the record names) stops the reader, so the worker stops deciding rather than miss an erasure.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from confluent_kafka import Message

from backbone.control.erasure import ErasureRecord, token_function_under_key
from backbone.errors import BackboneError, KeyringError, ReidentifyError
from backbone.keys.keyring import OVERSIGHT_DOMAIN, Keyring
from backbone.keys.pseudonym import token_key_id

log = logging.getLogger(__name__)


class ErasureTable:
    """The oversight tokens of erased subjects; `erased(subject)` for the policy engine.

    `on_erased(dlq_handles)` runs on the reader thread for each record applied (the processor's DLQ
    sealer forgets those subjects' keys)."""

    def __init__(self, keyring: Keyring, on_erased: Callable[[tuple[str, ...]], None] | None = None) -> None:
        self._keyring = keyring
        self._on_erased = on_erased
        # Called on the reader thread with the tokens each record erases (the quality monitor forgets
        # their consistency marks and tombstones them on `quality.marks`).
        self.on_tokens: Callable[[list[str]], None] | None = None
        # Grown in place, one `add` per token: O(1) per erasure, never a copy of the whole set (a set's
        # `in` is safe beside a concurrent `add` under the GIL; erased() never iterates it).
        self._tokens: set[str] = set()
        # key id -> oversight token function under it, for every key id the records use
        self._functions: tuple[tuple[str, Callable[[Any], str]], ...] = ()
        self._known: dict[str, Callable[[Any], str]] = {}  # the same, for look-ups by key id
        self._lock = threading.Lock()  # writers only: readers see one consistent (functions, tokens) each
        self.rejected = 0

    def __len__(self) -> int:
        return len(self._tokens)

    def holds(self, token: str) -> bool:
        """Whether `token` (an oversight token) is erased."""
        return token in self._tokens

    def erased(self, subject: str) -> bool:
        tokens = self._tokens
        if not tokens:  # the common case: no erasure at all costs one look-up
            return False
        for _, function in self._functions:
            if function(subject) in tokens:
                return True
        return False

    def apply_message(self, message: Message) -> None:
        self.apply(message.key(), message.value(), f"{message.topic()}[{message.partition()}]@{message.offset()}")

    def apply(self, key: bytes | None, value: bytes | None, where: str = "erasures") -> None:
        tokens: list[str] = []
        handles: tuple[str, ...] = ()
        if key:
            tokens.append(key.decode(errors="replace"))
        if value is None:
            if key:  # a tombstone does not undo an erasure; compaction may still drop the record
                log.warning("tombstone at %s ignored: an erasure is never undone (do not tombstone the erasures topic)", where)
        else:
            try:
                record = ErasureRecord.from_json(value)
                tokens += [token for token in record.tokens if token not in tokens]
                handles = record.dlq_handles
            except ValueError:
                self.rejected += 1
                log.warning("erasure record at %s cannot be read: its key still counts as erased", where)
        self._add(tokens, where)
        if handles and self._on_erased is not None:
            self._on_erased(handles)

    def _add(self, tokens: list[str], where: str) -> None:
        usable: list[tuple[str, str]] = []
        for token in tokens:
            try:
                usable.append((token_key_id(token), token))
            except ReidentifyError:
                continue
        if not usable:
            if tokens:
                self.rejected += 1
                log.warning("erasure record at %s names no oversight token: nothing to match", where)
            return
        with self._lock:
            functions = dict(self._functions) if any(key_id not in self._known for key_id, _ in usable) else self._known
            known = []
            for key_id, token in usable:
                if key_id not in functions:
                    try:
                        functions[key_id] = token_function_under_key(self._keyring, OVERSIGHT_DOMAIN, key_id)
                    except KeyringError:
                        continue
                known.append(token)
            if not known:
                raise BackboneError(
                    f"erasure record at {where} uses oversight key(s) {', '.join(sorted({k for k, _ in usable}))}, which this"
                    " worker's keyring lacks: it cannot honour the erasure; give the processors the processor keyring the erasure was answered with"
                )
            # functions first, then tokens: a concurrent erased() never sees a token it cannot compute
            if functions is not self._known:  # a key id not seen before (rare): the tuple is rebuilt
                self._functions = tuple(functions.items())
                self._known = dict(functions)
            self._tokens.update(known)
        if self.on_tokens is not None:
            self.on_tokens(known)
