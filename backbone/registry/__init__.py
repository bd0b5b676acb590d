"""A Confluent-compatible schema registry that keeps its state in the compacted `_schemas` topic.

`python -m backbone.registry --port P` serves the REST API that confluent-kafka's
`SchemaRegistryClient`, `AvroSerializer` and `AvroDeserializer` use. Several processes on one topic
agree on ids and versions: every write goes to the topic and is read back before it is acknowledged.
Every request is authenticated (HTTP Basic) and authorized by role: `auth.py`, `roles.py`, `users.py`.

May import: backbone.errors, backbone.files, backbone.settings, backbone.kafka, backbone.telemetry.
Never imports: faust, clickhouse_connect, chdb.
"""
