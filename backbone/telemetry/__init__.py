"""What long-running processes tell operators: one logging set-up (`logs`) and the Prometheus
metrics, read from the counters the processes keep anyway (`metrics`).

May import: backbone.errors, backbone.settings, backbone.kafka.
Never imports: aiokafka, faust, clickhouse_connect, chdb.
"""

from __future__ import annotations
