"""The quality monitor's uniqueness markers in files (issue 30): a worker's memory stays flat over the
hour while the counts stay exact, whatever part of the markers is in memory or in files; the files go
with their window and their process (a dead worker's at the next start), and a directory that cannot
be written is a clear error, never a marker lost."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backbone.quality import checks, keyset, spill
from backbone.quality.checks import QualityMonitor
from backbone.quality.contract import QualityContract, QualitySection
from backbone.quality.errors import MarkerSpillError
from backbone.quality.keyset import KeySet
from backbone.quality.spill import FileBlock, Spill, merge_sorted
from backbone.quality.window import hour_of
from tests.test_quality_compiled import CONTRACT, EVENT, NOW, expected, records

U64 = st.integers(0, (1 << 64) - 1)


def small(root: Path, min_markers: int = 4, stride: int = 2, chunk: int = 3) -> Spill:
    """A spill whose blocks go to files from a few markers on, read a few at a time."""
    made = Spill(root)
    made.min_markers, made.stride, made.chunk = min_markers, stride, chunk
    return made


def files(made: Spill) -> set[str]:
    return {name for name in os.listdir(made.path) if name != spill.LOCK}


@settings(max_examples=120, deadline=None)
@given(st.lists(st.lists(U64 | st.integers(0, 40), max_size=30), max_size=14), st.integers(1, 6), st.integers(1, 5),
       st.integers(2, 40))
def test_a_keyset_in_memory_and_files_holds_exactly_the_markers_added(rounds: list[list[int]], stride: int, chunk: int,
                                                                        min_markers: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        made = small(Path(folder) / "markers", min_markers, stride, chunk)
        keys, reference = KeySet(made), set()
        for markers in rounds:
            keys.recent.update(m for m in markers if m not in reference)  # the monitor adds a marker it has not seen
            reference.update(markers)
            probe = np.array(sorted(reference | {0, 1, 41, (1 << 64) - 1} | {m + 1 for m in reference if m < (1 << 64) - 1}),
                             dtype=np.uint64)
            in_blocks = keys.isin(probe).tolist()
            assert [bool(b) or int(p) in keys.recent for p, b in zip(probe.tolist(), in_blocks, strict=True)] == \
                [int(p) in reference for p in probe.tolist()]
            keys.compact()
            assert len(keys) == len(reference) and set(keys) == reference and not keys.recent
            on_disk = [b for b in keys.blocks if isinstance(b, FileBlock)]
            assert all(b.size >= min_markers for b in on_disk) and files(made) == {Path(b.path).name for b in on_disk}
        keys.drop()
        assert not files(made) and len(keys) == 0
        made.close()
        assert not made.path.exists()


@settings(max_examples=80, deadline=None)
@given(st.sets(U64, max_size=60), st.sets(U64, max_size=60), st.integers(1, 7))
def test_two_sorted_streams_merge_a_chunk_at_a_time_into_one(a: set[int], b: set[int], chunk: int) -> None:
    def chunks(values: set[int]):  # noqa: ANN202
        ordered = np.array(sorted(values), dtype=np.uint64)
        return (ordered[i:i + chunk] for i in range(0, ordered.size, chunk))
    merged = list(merge_sorted(chunks(a), chunks(b)))
    assert np.concatenate([np.empty(0, np.uint64), *merged]).tolist() == sorted([*a, *b])  # a marker in both: twice
    assert all(part.size <= 2 * chunk for part in merged)


def observed_spilling(batch: list[dict], root: Path, **sizes: int) -> tuple[dict[int, dict], bool]:
    before = checks.RECENT_MAX, checks.MAX_PENDING, keyset.LATER_MAX, spill.SPILL_MIN, spill.STRIDE, spill.CHUNK
    checks.RECENT_MAX, checks.MAX_PENDING, keyset.LATER_MAX = 2, 3, sizes.get("later_max", keyset.LATER_MAX)
    spill.SPILL_MIN, spill.STRIDE, spill.CHUNK = sizes.get("min_markers", 4), sizes.get("stride", 2), sizes.get("chunk", 3)
    try:
        monitor = QualityMonitor([CONTRACT], markers_dir=root)
        used_files = False
        nows = {hour: NOW + timedelta(hours=hour) for hour in range(3)}
        for record in batch:
            now = nows[record["hour"]]
            monitor.observe(EVENT, {**record, "occurred_at": now - timedelta(seconds=record["delay_s"])}, now)
            used_files = used_files or any(isinstance(b, FileBlock) for s in monitor._seen.values() for b in s.blocks)
        monitor.flush(settle=True)  # as the data plane's last batch: the deferred decided, the recent markers compacted
        used_files = used_files or any(isinstance(b, FileBlock) for s in monitor._seen.values() for b in s.blocks)
        windows = monitor.closed(NOW + timedelta(hours=3), everything=True)
        monitor.spill.close()  # type: ignore[union-attr]
    finally:
        checks.RECENT_MAX, checks.MAX_PENDING, keyset.LATER_MAX, spill.SPILL_MIN, spill.STRIDE, spill.CHUNK = before
    return {window.hour - hour_of(NOW): window.counters() for window in windows}, used_files


@settings(max_examples=60, deadline=None)
@given(records)
def test_the_monitor_counts_exactly_with_its_markers_spread_over_memory_and_files(batch: list[dict]) -> None:
    batch = sorted(batch, key=lambda r: r["hour"])  # the processor's clock goes forward
    want = expected(batch)
    with tempfile.TemporaryDirectory() as folder:
        counted, used_files = observed_spilling(batch, Path(folder) / "markers")
        assert counted == want
        assert observed_spilling(batch, Path(folder) / "markers", later_max=2, stride=1, chunk=1)[0] == want
        assert os.listdir(Path(folder) / "markers") == []  # each monitor's directory removed as it closed


def test_copies_across_hours_are_counted_from_markers_in_files(tmp_path: Path) -> None:
    base = {"national_id": "123456782", "postcode": "1234 AB", "monthly_amount": 1.0, "benefit_type": "unemployment", "delay_s": 1.0}
    batch = [{**base, "event_id": uuid.UUID(int=n << 70 | 7), "period": f"2026-{n % 12 + 1:02d}", "hour": hour}
             for hour, numbers in ((0, range(40)), (0, range(0, 40, 3)), (1, range(30, 70)), (2, range(60, 80)))
             for n in numbers]
    counted, used_files = observed_spilling(batch, tmp_path / "markers")
    assert used_files and counted == expected(batch)
    assert (counted[0]["duplicates"], counted[1]["duplicates"], counted[2]["duplicates"]) == (14, 10, 10)


def test_a_duplicate_of_a_marker_in_a_file_is_found_and_the_state_stays_small(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """80,000 distinct events of one hour (event id and business key), most of their markers in
    files: what the monitor holds in memory is bounded by its recent sets and in-memory blocks (a few
    hundred KB here, whatever the events), where the blocks all in memory held ~19 B an event; copies
    re-sent later are all found."""
    monkeypatch.setattr(checks, "RECENT_MAX", 1 << 10)
    monkeypatch.setattr(spill, "SPILL_MIN", 1 << 11)
    contract = QualityContract(EVENT, "test", QualitySection.model_validate({
        "uniqueness": {"key": "event_id", "business_key": ["national_id", "period"]}}))
    monitor = QualityMonitor([contract], markers_dir=tmp_path / "markers")
    events = 80_000
    ids = [uuid.UUID(int=n << 65 | n) for n in range(events)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n, event_id in enumerate(ids):
            monitor.observe(EVENT, {"event_id": event_id, "national_id": f"{n:09d}", "period": "2026-01"}, NOW)
        monitor.flush(settle=True)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    (markers,) = [s for key, s in monitor._seen.items() if key[0] == EVENT]
    assert markers.file_bytes() > 0.8 * 8 * events
    bound = 2 * (checks.RECENT_MAX * 100 + 2 * spill.SPILL_MIN * 8) + 200_000  # two key sets' recent markers and blocks
    assert held < bound, f"{held / events:.1f} B an event held in memory"
    for n in (0, 1, events // 2, events - 1):  # re-sent copies, of markers in files and in memory
        monitor.observe(EVENT, {"event_id": ids[n], "national_id": f"{n:09d}", "period": "2026-01"}, NOW)
    monitor.observe(EVENT, {"event_id": uuid.UUID(int=(events + 7) << 65), "national_id": f"{3:09d}", "period": "2026-01"}, NOW)  # a new id, an old key
    (window,) = monitor.closed(NOW, everything=True)
    assert (window.events, window.duplicates) == (events + 5, 4)
    assert window.key_duplicates == {"national_id+period": 1}


def test_a_windows_files_go_when_it_is_dropped_and_the_directory_with_its_process(tmp_path: Path) -> None:
    made = small(tmp_path / "markers")
    hours = {0: KeySet(made), 1: KeySet(made)}
    for hour, keys in hours.items():
        for round_ in range(4):
            keys.recent.update(range(hour * 1000 + round_ * 10, hour * 1000 + round_ * 10 + 10))
            keys.compact()
    first = {Path(b.path).name for b in hours[0].blocks if isinstance(b, FileBlock)}
    assert first and first < files(made)
    hours.pop(0).drop()
    assert files(made) and not first & files(made)  # the older hour's files gone, the newer's kept
    code = ("import sys; from pathlib import Path; from backbone.quality.keyset import KeySet; from backbone.quality.spill import Spill\n"
            "s = Spill(Path(sys.argv[1])); s.min_markers = 2; k = KeySet(s)\n"
            "for n in range(3): k.recent.update(range(n * 5, n * 5 + 5)); k.compact()\n"
            "assert any(p.suffix == '.u64' for p in s.path.iterdir()); print(s.path)")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "ended")], capture_output=True, text=True, timeout=60, check=True)
    assert not Path(done.stdout.strip()).exists() and os.listdir(tmp_path / "ended") == []  # a clean end leaves nothing


def test_a_dead_workers_directory_is_removed_at_start_and_a_live_ones_kept(tmp_path: Path) -> None:
    root = tmp_path / "markers"
    live = small(root)
    keys = KeySet(live)
    for n in range(3):
        keys.recent.update(range(n * 5, n * 5 + 5))
        keys.compact()
    code = ("import os, sys; from pathlib import Path; from backbone.quality.keyset import KeySet; from backbone.quality.spill import Spill\n"
            "s = Spill(Path(sys.argv[1])); s.min_markers = 2; k = KeySet(s)\n"
            "for n in range(3): k.recent.update(range(n * 5, n * 5 + 5)); k.compact()\n"
            "print(s.path, flush=True); os.kill(os.getpid(), 9)")
    killed = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, timeout=60)
    assert killed.returncode == -signal.SIGKILL
    dead = Path(killed.stdout.strip())
    assert any(p.suffix == ".u64" for p in dead.iterdir())  # left behind by a worker that died
    unlocked_old, unlocked_new = root / "1-old", root / ".new-2"  # died before it locked its directory; one being made
    unlocked_old.mkdir()
    unlocked_new.mkdir()
    (unlocked_old / spill.LOCK).touch()  # a lock no one holds
    abandoned = root / ".new-3"  # its maker died long ago
    abandoned.mkdir()
    os.utime(abandoned, (time.time() - 2 * spill.STALE_UNLOCKED_S,) * 2)
    started = Spill(root)
    assert not dead.exists() and not unlocked_old.exists() and not abandoned.exists() and unlocked_new.exists()
    assert live.path.exists() and files(live) and sorted(keys) == list(range(15))  # another live worker's untouched
    started.close()
    live.close()


def test_a_markers_dir_that_cannot_be_made_is_a_clear_error_at_start(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("not a directory")
    with pytest.raises(MarkerSpillError, match=r"cannot write its uniqueness markers under .*data.*BACKBONE_DATA_DIR"):
        QualityMonitor([CONTRACT], markers_dir=tmp_path / "data" / "quality-markers")


def test_a_block_that_cannot_be_written_is_a_clear_error_and_no_marker_is_lost(tmp_path: Path) -> None:
    """A file-size limit the kernel enforces stands for a full disk: the merge fails with a clear
    error, no partial file stays, and the set still holds every marker (in memory) and spills later."""
    made = small(tmp_path / "markers", min_markers=64)
    keys = KeySet(made)
    keys.recent.update(range(100, 140))
    keys.compact()
    keys.recent.update(range(0, 40))
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (256, limits[1]))
    try:
        with pytest.raises(MarkerSpillError, match=r"cannot write its uniqueness markers under .*markers.*free space"):
            keys.compact()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    assert not files(made) and set(keys) == set(range(100, 140)) | set(range(0, 40))
    assert keys.isin(np.arange(0, 200, dtype=np.uint64)).tolist() == [n < 40 or 100 <= n < 140 for n in range(200)]
    keys.recent.update(range(200, 240))
    keys.compact()  # the limit gone: the blocks merge into a file
    assert files(made) and set(keys) == set(range(100, 140)) | set(range(0, 40)) | set(range(200, 240))
    made.close()


def test_marker_files_are_the_workers_own_and_a_shared_markers_dir_is_refused(tmp_path: Path) -> None:
    """Another account on the host reads no marker: the directories are 0700, the files 0600, whatever
    the umask; a markers directory its group or others may use is refused, naming it."""
    import stat

    from backbone.errors import NotPrivateError

    old = os.umask(0o002)
    try:
        made = small(tmp_path / "markers")
        keys = KeySet(made)
        for round_ in range(4):
            keys.recent.update(range(round_ * 10, round_ * 10 + 10))
            keys.compact()
    finally:
        os.umask(old)
    blocks = [Path(b.path) for b in keys.blocks if isinstance(b, FileBlock)]
    assert blocks
    for directory in (tmp_path / "markers", made.path):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    for block in blocks:
        assert stat.S_IMODE(block.stat().st_mode) == 0o600, block
    made.close()

    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    with pytest.raises(NotPrivateError, match="shared"):
        Spill(shared)
