"""Data quality of the providers' streams (issue 32): pure logic, no I/O but the worker's own scratch files.

The `quality:` section of each event type's contract (`schemas/<event type>.quality.yaml`) and its
loader (`contract`), the checks compiled from it into one generated function per event type
(`compiled`; a digits-only pattern as string methods, `patterns`) and the monitor running them (`checks`), its exact uniqueness markers in ~8 bytes each
(`keyset`; their big blocks in files of the worker's data dir, `spill`), the mergeable per-window
state of counters and Apache DataSketches (`window`), and the 0-100 scorecard per provider, event
type, dimension and hour with the counts behind it (`scorecard`). Reading and writing topics,
tables and metrics is the processors', consumers' and telemetry's.

May import: backbone.errors, backbone.settings, backbone.events, backbone.files.
Never imports: confluent_kafka, aiokafka, faust, aiohttp, requests, clickhouse_connect, chdb.
"""

from __future__ import annotations
