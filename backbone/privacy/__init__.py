"""Differentially private releases, pure: the SQL that bounds each person's contribution before any
noise (`bounding`), the OpenDP measurements, their calibration to a query's cost and the accuracy
published with each release (`mechanisms`), and the privacy-budget ledger's arithmetic, which
writers and `backbone audit verify` share (`ledger`). Reading landed rows, sealing ledger records
and publishing results is `app.dp_release`'s; what an agreement may declare is
`backbone.policy.dp_release`.

May import: backbone.errors, backbone.policy, backbone.events.
Never imports: confluent_kafka, aiokafka, faust, aiohttp, requests, clickhouse_connect, chdb.
"""

from __future__ import annotations
