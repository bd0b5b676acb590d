"""Who may do what on Kafka, planned without contacting anything: the ACL plan per agency and per
backbone component, from the catalog and the charter, with the Strimzi users made from it (`acls`).
The names the backbone keeps for itself are the charter's rules (`backbone.policy.names`); ClickHouse
grants are planned beside the sinks (`consumers.ddl`), registry users per agency and component
in `registry_users` (roles from `backbone.registry`).

May import: backbone.errors, backbone.settings, backbone.events, backbone.kafka, backbone.policy, backbone.registry.
Never imports: aiokafka, faust, aiohttp, requests, clickhouse_connect, chdb.
"""

from __future__ import annotations
