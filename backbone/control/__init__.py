"""The control plane on Kafka: records that change what the processors decide, written by operators
and read by every worker. Agreement texts and status changes on the compacted `agreements.changes`
topic (`agreement_changes`), a person's erasure everywhere the backbone keeps their data (`erasure`),
and the replay of real events through two agreement texts that `backbone agreements diff --replay`
judges a change by (`replay`). Each change an operator makes is sealed in `backbone.audit.operations`.

May import: backbone.errors, backbone.settings, backbone.audit, backbone.clickhouse, backbone.events, backbone.kafka, backbone.keys, backbone.policy.
Never imports: aiokafka, faust, aiohttp, chdb.
"""

from __future__ import annotations
