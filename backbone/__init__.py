"""Data Sharing Backbone: agreement-enforced, real-time data sharing between agencies.

The core library, one package per concept: `policy` (agreements and decisions), `keys` (keyring and
pseudonyms), `events` (catalog, Avro serde and codecs), `audit` (the verifiable trail), `kafka`
(topics, compacted readers, groups, DLQ contract), `control` (agreement changes, erasure, replays),
`clickhouse` (client factory, chDB endpoint), `registry` (the schema registry service), `stack`
(the embedded broker and registry processes), `access` (the Kafka ACL plan), `files` (private
files and directories), `telemetry` (logs, metrics). Settings and errors sit at the top; each package's docstring says what it owns and what it
may import (checked by tests/test_layers.py). Imports nothing from the folders above the core.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
