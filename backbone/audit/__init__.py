"""The verifiable audit trail: canonical records, Merkle trees, signed checkpoints and chain
verification (`log`), receipts a third party checks offline (`receipts`), RFC 3161 timestamps of
checkpoints (`timestamps`), the operators' own actions sealed in the `operations` chain
(`operations`), who signed them and where that chain is anchored out of the operators' reach (`anchors`),
where each writer's chain ends as known apart from the trail (`heads`), and the privacy-budget
ledger of DP releases sealed in the operations chain (`dp_ledger`). The
processor's writer of decision checkpoints is `processors.checkpoints`; reading the landed trail back
for `backbone audit verify` is `consumers.audit_trail`, the heads on Kafka `consumers.audit_heads`.

May import: backbone.errors, backbone.files, backbone.settings, backbone.events, backbone.kafka, backbone.keys, backbone.privacy.
Never imports: aiokafka, faust, aiohttp, clickhouse_connect, chdb.
"""

from __future__ import annotations
