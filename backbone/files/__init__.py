"""Files on disk: everything the backbone keeps under its data dir (`BACKBONE_DATA_DIR`) and its chDB
directories is its user's only. `private.private_umask()` makes every file and directory a process
creates 0600 / 0700; `private.private_directory()` creates a directory so, or refuses one that other
users of the host can read, naming the path and the fix.

May import: backbone.errors.
Never imports: confluent_kafka, aiokafka, faust, chdb, clickhouse_connect.
"""

from __future__ import annotations
