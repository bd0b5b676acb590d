"""An exact set of 64-bit markers in ~8 bytes each: the monitor's uniqueness keys of one window.

A Python `set` of ints held ~60 bytes a marker (the int object and the table's slot at its load
factor): with the event ids' and the business keys' markers, ~131 bytes an event of the hour
(`python -m bench.quality_rules`), a good part of a worker's growth in issue 30's soak (159 -> 754
MiB in an hour at 2,000 events/s). Here the newest markers are a small Python set (`recent`, at
most `RECENT_MAX`: the per-event check stays a set look-up) and the older ones sorted numpy uint64
blocks, merged as they grow (each block more than twice the next, so a marker is merged O(log n)
times and looked up in O(log n) blocks): ~19 bytes an event in all. Blocks are searched for many
markers at once (`isin`, `numpy.searchsorted`): once a window or the one before has blocks, the
monitor defers its uniqueness decisions (`Open.later`) until `LATER_MAX` records wait or the window
is replaced or handed over, and decides them in record order. Nothing is approximate: a marker is
in the set or not (a 64-bit marker, as before).

Given a `Spill` (the worker's: a directory under its data dir), a merged block of `SPILL_MIN` markers
or more goes to a file instead (`backbone.quality.spill`), looked up through a memory map unmapped
after each look-up: the worker holds ~2 MiB a key set however many events its window has.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime
from functools import partial
from typing import Any

import numpy as np

from backbone.quality.spill import FileBlock, Spill, chunks_of, merge_sorted

# Markers held in the Python set before they are sorted into a block: ~60 B each, so at most ~1 MiB
# a window (a block holds them in 8 B). Below it a window never compacts (and never defers).
RECENT_MAX = 1 << 14
# Records whose uniqueness waits for one look-up in the blocks (~150 B each while they wait).
LATER_MAX = 2048
# Delays that wait for one update of the window's KLL sketch: an array and an update every 64 records
# (a monitor's flush) cost ~4% of the monitor (py-spy); an open window's delay quantiles, read for
# metrics, lag by at most this many values or `DELAYS_S` (a quiet event type's too), a handed-over window's not at all.
DELAYS_MAX = 1024
DELAYS_S = 1.0
_EMPTY = np.empty(0, dtype=np.uint64)


Block = np.ndarray | FileBlock


class KeySet:
    """Unsigned 64-bit markers: `recent` (a set, added to directly) and sorted blocks (`compact`), the
    big ones in files of `spill` (None: all in memory)."""

    __slots__ = ("blocks", "recent", "spill")

    def __init__(self, spill: Spill | None = None) -> None:
        self.recent: set[int] = set()
        self.blocks: list[Block] = []
        self.spill = spill

    def compact(self) -> None:
        """Sort `recent` into a block (the set is emptied in place: callers hold it) and merge the
        blocks that are no longer at least twice the size of the next."""
        if not self.recent:
            return
        block = np.fromiter(self.recent, dtype=np.uint64, count=len(self.recent))
        block.sort()
        self.recent.clear()
        blocks = self.blocks
        blocks.append(block)
        while len(blocks) > 1 and blocks[-2].size <= 2 * blocks[-1].size:
            blocks[-2:] = [self._merge(blocks[-2], blocks[-1])]  # kept as they were if a file cannot be written

    def _merge(self, older: Block, newer: Block) -> Block:
        spill = self.spill
        if spill is None or older.size + newer.size < spill.min_markers:
            assert isinstance(older, np.ndarray) and isinstance(newer, np.ndarray)
            merged = np.concatenate((older, newer))
            merged.sort(kind="stable")  # two sorted runs: merged in one pass
            return merged
        merged_file = spill.write(merge_sorted(chunks_of(older, spill.chunk), chunks_of(newer, spill.chunk)))
        for block in (older, newer):
            if isinstance(block, FileBlock):
                block.drop()
        return merged_file

    def drop(self) -> None:
        """Forget every marker (the window is done): the files of its blocks are removed."""
        for block in self.blocks:
            if isinstance(block, FileBlock):
                block.drop()
        self.blocks.clear()
        self.recent.clear()

    def isin(self, markers: np.ndarray) -> np.ndarray:
        """Whether each marker (uint64) is in a block (not looking at `recent`)."""
        found = np.zeros(markers.size, dtype=bool)
        for block in self.blocks:
            if isinstance(block, FileBlock):
                found |= block.isin(markers)
                continue
            at = np.searchsorted(block, markers)
            at[at == block.size] = 0
            found |= block[at] == markers
        return found

    def __contains__(self, marker: object) -> bool:
        if marker in self.recent:
            return True
        return isinstance(marker, int) and 0 <= marker < 1 << 64 and bool(self.isin(np.array([marker], dtype=np.uint64))[0])

    def __len__(self) -> int:
        return len(self.recent) + sum(block.size for block in self.blocks)

    def __iter__(self) -> Iterator[int]:
        yield from self.recent
        for block in self.blocks:
            for chunk in chunks_of(block):
                yield from chunk.tolist()

    def nbytes(self) -> int:
        """Bytes held in RAM by the blocks (a file block's: its index; the recent set's are Python
        objects: measure with tracemalloc)."""
        return sum(block.nbytes for block in self.blocks)

    def file_bytes(self) -> int:
        """Bytes of its blocks in files."""
        return sum(8 * block.size for block in self.blocks if isinstance(block, FileBlock))


EMPTY = KeySet()  # the previous window of a window that has none: nothing in it, never added to


def as_markers(values: list[int | None]) -> np.ndarray:
    """Markers as a uint64 array (None, a record without the key, as 0: its look-up is not used)."""
    return np.fromiter((0 if value is None else value for value in values), dtype=np.uint64, count=len(values)) \
        if values else _EMPTY


class Open:
    """An event type's open window in the monitor: its checks, its evidence, and the uniqueness
    markers of it and of the window before (event ids, business keys). Once any of them holds
    blocks, the checks append each record's markers to `later` and `resolve` decides the batch's
    uniqueness in record order, exactly as the checks would have one by one."""

    __slots__ = ("check", "delays", "delays_at", "ids", "keys", "label", "later", "previous_ids", "previous_keys", "window")

    def __init__(self, checker: Any, window: Any, ids: KeySet, previous_ids: KeySet, keys: KeySet, previous_keys: KeySet) -> None:
        self.check, self.window = checker.check, window
        self.label: str | None = checker.business_label
        self.ids, self.previous_ids, self.keys, self.previous_keys = ids, previous_ids, keys, previous_keys
        deferred = ids.blocks or previous_ids.blocks or keys.blocks or previous_keys.blocks
        self.later: list[tuple[int | None, int | None, str | None]] | None = [] if deferred else None
        self.delays: list[float] = []  # the batch's delays, for the window's KLL sketch in one update
        self.delays_at = time.monotonic()  # when they last went into the sketch

    def bound(self) -> Callable[[list[tuple[dict, str | None]], datetime], None]:
        """The checks with this window's arguments bound: `(batch of (record, token), now)`."""
        return partial(self.check, self.window, self.ids.recent, self.previous_ids.recent,
                       (self.keys.recent, self.previous_keys.recent), self.later, self.delays)

    def settle(self, force: bool = False) -> None:
        """At a batch's end: its delays into the window's sketch once `DELAYS_MAX` wait or `DELAYS_S` passed; the deferred uniqueness decided once
        `LATER_MAX` records wait (a look-up in the blocks costs ~1 µs of numpy calls, whatever the
        number of markers), or now (`force`: before the window is handed over or replaced)."""
        if self.delays and (force or len(self.delays) >= DELAYS_MAX or time.monotonic() - self.delays_at >= DELAYS_S):
            self.window.delays.update(np.array(self.delays, dtype=np.float32))
            self.delays.clear()
            self.delays_at = time.monotonic()
        if self.later and (force or len(self.later) >= LATER_MAX):
            self.resolve()

    def resolve(self) -> None:
        """Decide the deferred records' uniqueness: a marker is a duplicate when it is in a block
        (one vectorised look-up for the batch) or in a recent set, as in the checks."""
        later, window = self.later, self.window
        assert later is not None
        ids = as_markers([m for m, _, _ in later])
        old = (self.ids.isin(ids) | self.previous_ids.isin(ids)).tolist()
        markers = as_markers([b for _, b, _ in later])
        old_keys = (self.keys.isin(markers) | self.previous_keys.isin(markers)).tolist()
        seen, previous, keys, previous_keys = self.ids.recent, self.previous_ids.recent, self.keys.recent, self.previous_keys.recent
        duplicates = key_duplicates = 0
        for (m, b, text), dup, key_dup in zip(later, old, old_keys, strict=True):
            if m is not None:
                if dup or m in seen or m in previous:
                    duplicates += 1
                    continue  # a re-sent copy: its business key is the first copy's
                seen.add(m)
            if b is not None:
                if key_dup or b in keys or b in previous_keys:
                    key_duplicates += 1
                else:
                    keys.add(b)
                    window.key_distinct_sketch(self.label).update(text)
        window.duplicates += duplicates
        if key_duplicates:
            window.key_duplicates[self.label] += key_duplicates
        later.clear()
