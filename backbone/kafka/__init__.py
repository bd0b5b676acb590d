"""Kafka as the backbone uses it: every topic name and topic administration (`topics`), reading a
whole compacted topic in every process that needs it (`compacted`), consumer groups' offsets and lag
(`groups`), and the dead-letter contract every stage follows, with dead letters sealed per subject
(`dlq`).

May import: backbone.errors, backbone.settings, backbone.keys.
Never imports: aiokafka, faust, aiohttp, clickhouse_connect, chdb.
"""

from __future__ import annotations
