"""Errors shared across the backbone. Each message says what went wrong and what to do next.

Messages never carry personal data or key material: callers pass field names, topic names,
file names and reason codes, never record values.
"""

from __future__ import annotations


class BackboneError(Exception):
    """Base for every error the backbone raises on purpose; the CLI prints it as one line."""


class SettingsError(BackboneError):
    """A `BACKBONE_*` setting is invalid; the message names the variable."""


class EmbeddedError(BackboneError):
    """An embedded part (broker, registry) could not start or stop."""


class KafkaUnavailableError(BackboneError):
    """The Kafka cluster did not answer within the configured timeout."""


class TopicError(BackboneError):
    """A topic operation was refused (exists, does not exist, invalid configuration)."""


class ClickHouseDsnError(BackboneError):
    """The ClickHouse DSN is malformed or names an unsupported scheme."""
