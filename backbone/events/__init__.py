"""Events on the wire: the catalog of event schemas (with their field tags) and the purpose vocabulary
(`catalog`), Avro in the Confluent wire format with its schema sources (`serde`), and the generated
straight-line Avro encoder and decoder, the hot path's fast codecs (`encoder`, `decoder`).

May import: backbone.errors, backbone.settings, backbone.registry.
Never imports: aiokafka, faust, aiohttp, clickhouse_connect, chdb.
"""

from __future__ import annotations
