"""What the sinks' process holds, beside its RSS, for `python -m bench.processor --soak`: chDB's own
accounting (its memory tracker, caches, primary keys in memory, parts, jemalloc's resident and retained
pages) and the process's C heap (glibc malloc: Python objects, librdkafka's buffers), so a soak says
which of them grew.

chDB has no `system.asynchronous_metrics`: jemalloc's figures come from `system.jemalloc_stats` (its
text report, the "Allocated: ..., resident: ..." line), the caches from `system.metrics`.
"""

from __future__ import annotations

import ctypes
import os
import re
import sys
from pathlib import Path
from typing import Any

MIB = 1024 * 1024
CHDB_METRICS = ("MemoryTracking", "MarkCacheBytes", "PrimaryIndexCacheBytes", "UncompressedCacheBytes", "QueryCacheBytes",
                "QueryConditionCacheBytes", "IndexMarkCacheBytes")
_JEMALLOC = re.compile(r"Allocated: (\d+), active: (\d+), metadata: (\d+).*?resident: (\d+), mapped: (\d+), retained: (\d+)")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _mallinfo2() -> Any:
    try:
        libc = ctypes.CDLL("libc.so.6")
        function = libc.mallinfo2
    except (OSError, AttributeError):  # not glibc >= 2.33
        return None
    function.restype = _MallInfo2
    return function


_MALLINFO2 = _mallinfo2()


def glibc_heap_mb() -> dict[str, float]:
    """glibc malloc's bytes in use (`uordblks` + `hblkhd`: small and mmapped blocks) and free but kept
    (`fordblks`), in MiB; empty where mallinfo2 is missing."""
    if _MALLINFO2 is None:
        return {}
    info = _MALLINFO2()
    return {"malloc_used_mb": round((info.uordblks + info.hblkhd) / MIB, 1), "malloc_free_mb": round(info.fordblks / MIB, 1)}


def chdb_memory_mb(client: Any) -> dict[str, float]:
    """chDB's memory figures in MiB, read through `client` (of the process that holds the directory)."""
    found: dict[str, float] = {}
    names = ", ".join(f"'{name}'" for name in CHDB_METRICS)
    for metric, value in client.query(f"SELECT metric, value FROM system.metrics WHERE metric IN ({names})").result_rows:
        found[f"chdb_{metric}_mb"] = round(value / MIB, 1)
    parts, rows, key_bytes, key_allocated, marks = client.query(
        "SELECT count(), sum(rows), sum(primary_key_bytes_in_memory), sum(primary_key_bytes_in_memory_allocated), "
        "sum(marks_bytes) FROM system.parts WHERE active").result_rows[0]
    found.update({"chdb_active_parts": int(parts), "chdb_rows": int(rows), "chdb_primary_key_mb": round(key_bytes / MIB, 2),
                  "chdb_primary_key_allocated_mb": round(key_allocated / MIB, 2), "chdb_marks_on_disk_mb": round(marks / MIB, 1)})
    # projections (the fraud tables') keep primary keys of their own, apart from system.parts
    found["chdb_projection_primary_key_mb"] = round(client.query(
        "SELECT sum(primary_key_bytes_in_memory_allocated) FROM system.projection_parts WHERE active").result_rows[0][0] / MIB, 2)
    # what the queries (the fraud rules', these) and merges running at the moment hold
    found["chdb_queries_mb"] = round(client.query("SELECT sum(memory_usage) FROM system.processes").result_rows[0][0] / MIB, 1)
    found["chdb_merges_mb"] = round(client.query("SELECT sum(memory_usage) FROM system.merges").result_rows[0][0] / MIB, 1)
    stats = client.query("SELECT stats FROM system.jemalloc_stats").result_rows[0][0]
    match = _JEMALLOC.search(stats)
    if match:
        allocated, active, metadata, resident, mapped, retained = (int(value) for value in match.groups())
        found.update({"jemalloc_allocated_mb": round(allocated / MIB, 1), "jemalloc_active_mb": round(active / MIB, 1),
                      "jemalloc_metadata_mb": round(metadata / MIB, 1), "jemalloc_resident_mb": round(resident / MIB, 1),
                      "jemalloc_retained_mb": round(retained / MIB, 1)})
    return found


def rss_kinds_mb(pid: int | None = None) -> dict[str, float]:
    """This process's RSS split: anonymous pages (heaps, stacks) and file pages (mostly chDB's 500 MiB
    library paged in as its code runs: bounded by the file, and the kernel may drop them)."""
    found: dict[str, float] = {}
    try:
        for line in Path(f"/proc/{pid or os.getpid()}/status").read_text().splitlines():
            if line.startswith(("RssAnon:", "RssFile:")):
                found[f"rss_{line[3:7].lower()}_mb"] = round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return found


def sinks_memory(client: Any) -> dict[str, float]:
    """One sample: the RSS split, chDB's figures, the C heap's and Python's allocated blocks (pymalloc's
    arenas are mapped apart from malloc's heap)."""
    return {**rss_kinds_mb(), **chdb_memory_mb(client), **glibc_heap_mb(), "py_blocks": sys.getallocatedblocks()}
