"""The lineage and catalogue of what the backbone enforces, generated from the loaded schemas and
agreements, never written by hand: pure, no I/O.

    flows = charter_flows(charter, prefix)           # raw topic -> shared topic -> recipient table/view
    event = run_event(flow_set, "START", now, ...)    # an OpenLineage run event for one agreement version
    ropa.records(charter), asyncapi.document(...), dcat.graph(...)

The flows and their column lineage per field treatment (`flows`), what an agreement is in words
and hashes (`terms`), the OpenLineage events and custom facets (`openlineage`), the GDPR Art. 30
record of processing (`ropa`), AsyncAPI 3.0 documents (`asyncapi`) and the DCAT-AP 3 catalogue
(`dcat`). Sending events to a transport is the processor's (`processors/lineage.py`).

May import: backbone.errors, backbone.settings, backbone.events, backbone.policy, backbone.kafka.
Never imports: aiokafka, faust, aiohttp, requests, clickhouse_connect, chdb.
"""

from __future__ import annotations
