"""The memory of a process that holds chDB (the sinks, the demo): the engine starts with bounded caches,
and the soak's sampler reads what chDB and the process's heaps hold (bench/soak_memory.py)."""

from __future__ import annotations

import pytest

from backbone.clickhouse.client import CHDB_ENGINE_OPTIONS
from bench.soak_memory import sinks_memory

pytestmark = pytest.mark.integration

CLICKHOUSE_SERVER_DEFAULT = 5 << 30  # mark, skip-index mark and primary index caches of a server


def _chdb_only(dsn: str) -> None:
    if not dsn.startswith("chdb:"):
        pytest.skip("a ClickHouse server's caches are its operator's configuration")


def test_the_chdb_engine_starts_with_bounded_caches(clickhouse_client, clickhouse_dsn: str) -> None:  # noqa: ANN001
    _chdb_only(clickhouse_dsn)
    rows = clickhouse_client.query("SELECT name, value FROM system.server_settings WHERE has({names:Array(String)}, name)",
                                   parameters={"names": list(CHDB_ENGINE_OPTIONS)}).result_rows
    applied = {name: int(value) for name, value in rows}
    assert applied == CHDB_ENGINE_OPTIONS
    assert all(value <= 64 << 20 < CLICKHOUSE_SERVER_DEFAULT for value in applied.values())


def test_the_soak_reads_what_chdb_and_the_heaps_hold(clickhouse_client, clickhouse_dsn: str) -> None:  # noqa: ANN001
    _chdb_only(clickhouse_dsn)
    clickhouse_client.query("SELECT count() FROM numbers(100000)")
    sample = sinks_memory(clickhouse_client)
    # jemalloc's report is parsed (its format is chDB's, not ours), glibc's heap and the RSS split are read
    assert sample["jemalloc_resident_mb"] >= sample["jemalloc_allocated_mb"] > 0
    assert sample["malloc_used_mb"] > 0 and sample["rss_anon_mb"] > 0 and sample["rss_file_mb"] > 0
    assert sample["chdb_MemoryTracking_mb"] > 0 and sample["chdb_MarkCacheBytes_mb"] >= 0
    assert sample["chdb_active_parts"] >= 0 and sample["chdb_projection_primary_key_mb"] >= 0 and sample["py_blocks"] > 0
