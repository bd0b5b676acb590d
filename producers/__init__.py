"""Agency producer SDK and synthetic agency data.

`AgencyProducer` validates, keys (keyed hash of the subject), encodes (Confluent wire format via the
schema registry) and sends an agency's events; `ConsentPublisher` publishes consent changes.
"""

from __future__ import annotations

from producers.errors import DeliveryError, ProducerError, ProducerValidationError, QueueFullError
from producers.keys import SubjectKeys, subject_key_secret
from producers.sdk import AgencyProducer, ConsentPublisher, Delivery, ProducerStats

__all__ = [
    "AgencyProducer", "ConsentPublisher", "Delivery", "DeliveryError", "ProducerError", "ProducerStats",
    "ProducerValidationError", "QueueFullError", "SubjectKeys", "subject_key_secret",
]
