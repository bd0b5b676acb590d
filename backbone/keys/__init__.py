"""Keys and what is computed with them: the keyring of per-domain HMAC keys, per-provider AES-SIV
keys and Ed25519 signing keys, encrypted at rest under a master key (`keyring`), and the pseudonyms,
recipient event ids and deterministic encryption made with them (`pseudonym`); the same keys in a
PKCS#11 token (`provider` picks, `pkcs11`, `siv`), where the token computes and no key leaves it.
Key material never leaves this package in a message, log line or record. No I/O but the keyring
file and the token.

May import: backbone.errors, backbone.files.
Never imports: confluent_kafka, aiokafka, faust, aiohttp, requests, clickhouse_connect, chdb.
"""

from __future__ import annotations
