"""ClickHouse access: the one client factory (`client.make_client`: `chdb:///dir` or a server's
`http(s)://` DSN, both clickhouse-connect clients) and the read-only HTTP endpoint a process holding a
chDB directory serves to the others (`endpoint`), and the cluster the DDL runs on when one is
configured (`cluster`: `ON CLUSTER`, `Replicated*`, `Distributed`). Tables, views and grants are the
sinks' (`consumers.ddl`).

May import: backbone.errors, backbone.files, backbone.settings.
Never imports: confluent_kafka, aiokafka, faust.
"""

from __future__ import annotations
