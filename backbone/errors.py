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


class TopicExists(TopicError):
    """The topic to create exists already (`Topics.ensure` treats that as done)."""


class ClickHouseDsnError(BackboneError):
    """The ClickHouse DSN is malformed or names an unsupported scheme."""


class NotPrivateError(BackboneError):
    """A data or chDB directory other users of the host may read; the message names it and the fix."""


class SerdeError(BackboneError):
    """An event could not be encoded to or decoded from the Confluent wire format.

    Messages name the schema id, the field or the byte count, never record content.
    """


class BadMagicByte(SerdeError):
    """The first byte is not the Confluent wire-format magic byte 0."""


class UnknownSchemaId(SerdeError):
    """The schema id in the message header is not known to the schema registry."""


class TruncatedMessage(SerdeError):
    """The bytes end before the header or the Avro record does."""


class CorruptMessage(SerdeError):
    """The Avro body does not decode under the writer schema (bad bytes, trailing bytes)."""


class EncodeError(SerdeError):
    """A record does not fit the schema; the message names the field, never its value."""


class RegistryError(BackboneError):
    """The schema registry refused a request; carries the registry's error code."""

    def __init__(self, message: str, error_code: int | None = None) -> None:
        super().__init__(message)
        self.error_code = error_code


class RegistryUnavailable(RegistryError):
    """The schema registry did not answer."""


class SchemaIncompatible(RegistryError):
    """A schema breaks the subject's compatibility level."""


class AgreementError(BackboneError):
    """One or more agreements are invalid; `problems` lists each (file, agreement, field, fix)."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            message = f"{len(self.problems)} problems in agreements:\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(message)


class KeyringError(BackboneError):
    """The keyring or its master key is missing, wrong or lacks a key; never carries key material."""


class ReidentifyError(BackboneError):
    """A token could not be reversed (unknown key id, wrong provider, tampered token)."""


def kafka_unavailable(bootstrap: str, timeout_s: float, detail: str | None = None) -> KafkaUnavailableError:
    """The one message for "the cluster did not answer": where, how long, and how to fix it."""
    cause = f" ({detail})" if detail else ""
    return KafkaUnavailableError(
        f"Kafka at {bootstrap} did not answer within {timeout_s:g}s{cause}; start it with `backbone up` "
        "or set BACKBONE_KAFKA_BOOTSTRAP"
    )


def registry_unavailable(url: str, detail: str | None = None) -> RegistryUnavailable:
    """The one message for "the schema registry did not answer" (never its credentials)."""
    cause = f" ({detail})" if detail else ""
    return RegistryUnavailable(
        f"schema registry at {url} did not answer{cause}; start the embedded stack with `backbone up` "
        "or set BACKBONE_SCHEMA_REGISTRY_URL"
    )


class SinkError(BackboneError):
    """A ClickHouse sink cannot start or land rows (database unreachable, table cannot be created)."""
