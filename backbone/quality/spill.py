"""The older uniqueness markers of a window in files, so a worker's memory stays flat over the hour (issue 30).

A `KeySet` (`backbone.quality.keyset`) sorts its markers into numpy blocks that merge as they grow:
~19 B an event in RAM, ~140 MB an hour in a worker at 2,000 events/s. A merged block of `SPILL_MIN`
markers or more is written instead to a file of the worker's own directory under its data dir
(`<data dir>/quality-markers/<pid>-<random>/`, 0700, files 0600) and read through a read-only memory
map that is unmapped after each batched look-up: its pages are the kernel's page cache, not the
worker's resident memory. In RAM a file block keeps the first marker of each 4 KiB page of it
(`STRIDE` markers, 1/512 of the block): a look-up searches that index, then binary-searches one
page of the file. Merges stream both blocks `CHUNK` markers at a time, never a big block whole in RAM.
Counting stays exact: a marker is in a file or it is not.

The files hold 64-bit markers only: the event id's 63 bits of its UUID, and the business keys as
`hash()`ed under this process's own secret (the interpreter's per-process hash seed): no key's text,
nothing another process could recompute from a person's data. A block lives as long as its window
(its file removed when the window is dropped); the directory goes when the process ends, and after a
crash the next monitor started on the data dir removes it (a directory whose lock no live process
holds is stale). A block that cannot be written (disk full, the directory unwritable) is a
`MarkerSpillError` naming the directory and the fix: the block stays in memory, nothing is lost.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import secrets
import shutil
import tempfile
import time
import weakref
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from backbone.errors import NotPrivateError
from backbone.files.private import private_directory
from backbone.quality.errors import MarkerSpillError

# A merged block of at least this many markers goes to a file (16 MiB in RAM before, at most ~2 MiB
# a key set now: the in-memory blocks below it sum to less than twice it).
SPILL_MIN = 1 << 17
STRIDE = 512  # markers a page (4 KiB): one index entry each, one page read per marker looked up
CHUNK = 1 << 16  # markers read at a time while merging files (512 KiB)
LOCK = "lock"
STALE_UNLOCKED_S = 60.0  # a directory without its lock file (its process died making it) is stale after this
_U64 = np.dtype(np.uint64)


def _fix(directory: Path, exc: OSError) -> MarkerSpillError:
    reason = exc.strerror or type(exc).__name__
    return MarkerSpillError(
        f"the quality monitor cannot write its uniqueness markers under {directory} ({reason}): make the data dir "
        f"(BACKBONE_DATA_DIR) a writable directory with free space, and start the worker again")


def _locked(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return True
        raise
    return False


def remove_stale(root: Path) -> list[Path]:
    """Remove the directories under `root` no live process holds (their lock free): a dead worker's.
    A directory is locked before it gets its name (`.new-*` until then, left alone while young)."""
    removed = []
    for child in sorted(root.iterdir()):
        if not child.is_dir() or child.is_symlink():
            continue
        if child.name.startswith(".") and time.time() - child.stat().st_mtime < STALE_UNLOCKED_S:
            continue  # being made right now
        try:
            fd = os.open(child / LOCK, os.O_RDWR)
        except FileNotFoundError:
            pass
        else:
            try:
                if _locked(fd):
                    continue
            finally:
                os.close(fd)
        shutil.rmtree(child, ignore_errors=True)
        removed.append(child)
    return removed


def _remove(path: Path, fd: int) -> None:
    shutil.rmtree(path, ignore_errors=True)
    os.close(fd)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class Spill:
    """One process's directory of marker files: `write(chunks)` makes a `FileBlock`; `close()` (or the
    process's end) removes the directory."""

    def __init__(self, root: Path) -> None:
        self.min_markers, self.stride, self.chunk = SPILL_MIN, STRIDE, CHUNK  # as set when it is made (tests set small ones)
        try:
            root = private_directory(Path(root), "quality markers directory")
            remove_stale(root)
            made = Path(tempfile.mkdtemp(prefix=".new-", dir=root))  # 0700
            fd = os.open(made / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held until the process ends: the directory is live
            path = made.rename(root / f"{os.getpid()}-{secrets.token_hex(4)}")
        except NotPrivateError:
            raise
        except OSError as exc:
            raise _fix(Path(root), exc) from None
        self.path = path
        self._close = weakref.finalize(self, _remove, path, fd)

    def close(self) -> None:
        """Remove the directory and every block in it (the key sets using it are done)."""
        self._close()

    def write(self, chunks: Iterable[np.ndarray]) -> FileBlock:
        """A new file block of the sorted markers `chunks` yields, in order (a `MarkerSpillError`, and
        no file left behind, when it cannot be written)."""
        size, index, last, name = 0, [], 0, ""
        try:
            fd, name = tempfile.mkstemp(dir=self.path, suffix=".u64")  # 0600
            with open(fd, "wb") as out:
                for chunk in chunks:
                    if chunk.size:
                        index.append(chunk[(-size) % self.stride::self.stride].copy())
                        out.write(memoryview(np.ascontiguousarray(chunk, dtype=_U64)).cast("B"))
                        size += chunk.size
                        last = int(chunk[-1])
        except OSError as exc:
            if name:
                _unlink(name)
            raise _fix(self.path, exc) from None
        return FileBlock(name, size, np.concatenate(index) if index else np.empty(0, _U64), last, self.stride)


class FileBlock:
    """A sorted block of markers in a file: its size, its first marker of every page (`stride` markers)
    and its last in RAM."""

    __slots__ = ("__weakref__", "_drop", "index", "last", "path", "size", "stride")

    def __init__(self, path: str, size: int, index: np.ndarray, last: int, stride: int = STRIDE) -> None:
        self.path, self.size, self.index, self.last, self.stride = path, size, index, last, stride
        self._drop = weakref.finalize(self, _unlink, path)

    @property
    def nbytes(self) -> int:
        """Bytes it holds in RAM (its index); the file holds `8 * size`."""
        return int(self.index.nbytes)

    def drop(self) -> None:
        """Remove its file (also done when the block is garbage)."""
        self._drop()

    def chunks(self, count: int) -> Iterator[np.ndarray]:
        """Its markers in order, `count` at a time, read into RAM one chunk at a time."""
        with open(self.path, "rb") as f:
            while True:
                chunk = np.fromfile(f, dtype=_U64, count=count)
                if not chunk.size:
                    return
                yield chunk

    def isin(self, markers: np.ndarray) -> np.ndarray:
        """Whether each marker (uint64) is in the block: a search of the index, then of one page."""
        found = np.zeros(markers.size, dtype=bool)
        row = np.searchsorted(self.index, markers, side="right").astype(np.int64) - 1
        ask = np.flatnonzero((row >= 0) & (markers <= np.uint64(self.last)))
        if not ask.size:
            return found
        want = markers[ask]
        lo = row[ask] * self.stride
        hi = np.minimum(lo + self.stride, self.size)
        with open(self.path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            data = np.frombuffer(mapped, dtype=_U64)
            try:
                for _ in range(self.stride.bit_length()):  # a lower bound in each marker's page
                    mid = (lo + hi) >> 1
                    less = (data[np.minimum(mid, self.size - 1)] < want) & (lo < hi)
                    lo = np.where(less, mid + 1, lo)
                    hi = np.where(less, hi, mid)
                found[ask] = (lo < self.size) & (data[np.minimum(lo, self.size - 1)] == want)
            finally:
                del data  # the map is unmapped as the block closes: its pages leave this process
        return found


def chunks_of(block: np.ndarray | FileBlock, count: int = CHUNK) -> Iterator[np.ndarray]:
    if isinstance(block, FileBlock):
        yield from block.chunks(count)
    else:
        for start in range(0, block.size, count):
            yield block[start:start + count]


def merge_sorted(a: Iterator[np.ndarray], b: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    """Two ascending streams of chunks merged into one, a chunk of each in RAM at a time."""
    empty = np.empty(0, _U64)
    left, right = next(a, empty), next(b, empty)
    while left.size and right.size:
        cut = min(left[-1], right[-1])  # everything up to it, of both, is in the chunks at hand
        i = int(np.searchsorted(left, cut, side="right"))
        j = int(np.searchsorted(right, cut, side="right"))
        out = np.concatenate((left[:i], right[:j]))
        out.sort(kind="stable")  # two sorted runs: merged in one pass
        yield out
        left, right = left[i:], right[j:]
        if not left.size:
            left = next(a, empty)
        if not right.size:
            right = next(b, empty)
    for rest, more in ((left, a), (right, b)):
        if rest.size:
            yield rest
        yield from more
