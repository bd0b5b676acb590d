"""What the router hands the data plane: one Kafka record to produce (`Output`)."""

from __future__ import annotations

from typing import NamedTuple

Headers = list[tuple[str, bytes]]


class Output(NamedTuple):  # a tuple: built several times per event, cheaper than a frozen dataclass
    topic: str
    key: bytes | None
    value: bytes
    headers: Headers | None = None
    # Kafka timestamp in ms: a shared record's is its released `occurred_at` (the start of the period
    # when generalised), never the processing time, which would link its copies across sharing
    # domains; 0 (audit, DLQ: read by oversight and operators only) lets the producer stamp it.
    timestamp: int = 0
