"""The disk broker: a small Kafka-protocol broker for the embedded stack (`BACKBONE_EMBEDDED_BROKER=disk`),
one process on 127.0.0.1 that keeps record batches opaque in append-only segment files per partition
(`log`), topics, their configs, committed offsets and producer ids in files beside them (`state`), runs
consumer groups with the classic protocol (`groups`), and speaks the wire protocol through `kio`'s typed
messages (`wire`; the handlers in `data` and `admin`, the server in `server`). Retention by time and bytes
per topic deletes whole old segments; compacted topics are compacted as Kafka's cleaner does (`compaction`).

May import: backbone.errors, backbone.files.
Never imports: confluent_kafka, aiokafka, faust, clickhouse_connect, chdb, backbone.settings.
"""

from __future__ import annotations
