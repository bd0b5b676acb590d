"""Errors of the producer SDK. Messages name event types, fields and counts, never record values."""

from __future__ import annotations

from backbone.errors import BackboneError


class ProducerError(BackboneError):
    """The producer could not start or could not hand events to Kafka."""


class ProducerValidationError(ProducerError):
    """An event does not fit its schema or its governance is invalid; nothing was sent.

    `event_type` and `field` (a path such as `governance.purposes[1]`) say where; the value is never shown.
    """

    def __init__(self, event_type: str, field: str, reason: str) -> None:
        self.event_type = event_type
        self.field = field
        self.reason = reason
        where = f"field {field}" if field else "record"
        super().__init__(f"{event_type}: {where}: {reason}; nothing was sent")


class QueueFullError(ProducerError):
    """The local send queue stayed full for the whole timeout: the broker is not taking events."""


class DeliveryError(ProducerError):
    """Some events were not acknowledged by the broker; `stats` says how many and why."""

    def __init__(self, message: str, stats: object) -> None:
        super().__init__(message)
        self.stats = stats
