"""Encode and decode rate of `welfare.benefit_claimed` through `backbone.events.serde` beside raw fastavro
`schemaless_writer` / `schemaless_reader` on the same records in the same run.

    python -m bench.serde [--count 50000] [--rounds 3] [--max-seconds 60] [--url URL]

Without `--url` it starts the embedded broker and schema registry in a temporary directory.
The target is serde >= 80% of raw fastavro.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path
from typing import Any

from confluent_kafka.schema_registry import SchemaRegistryClient
from fastavro import schemaless_reader, schemaless_writer

from backbone.events.catalog import default_catalog
from backbone.events.serde import Decoder, encoder_for
from backbone.kafka.topics import raw_topic

EVENT_TYPE = "welfare.benefit_claimed"
TARGET = 0.8


def records(count: int, seed: int = 7) -> list[dict[str, Any]]:
    """`count` varied benefit claims (synthetic; no real person)."""
    rng = random.Random(seed)
    kinds = ["income_support", "housing_allowance", "unemployment", "child_benefit", "disability"]
    start = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    return [
        {
            "event_id": uuid.UUID(int=rng.getrandbits(128)),
            "event_type": EVENT_TYPE,
            "occurred_at": start + dt.timedelta(milliseconds=rng.randrange(10**10)),
            "provider": "welfare",
            "governance": {"lawful_basis": "public_task", "purposes": ["service_provision", "fraud_prevention_and_detection"],
                           "consent_id": None},
            "national_id": f"{rng.randrange(10**9):09d}",
            "name": f"Person {rng.randrange(10**6)}",
            "date_of_birth": dt.date(1940, 1, 1) + dt.timedelta(days=rng.randrange(25_000)),
            "postcode": f"{rng.randrange(1000, 9999)} AB",
            "benefit_type": rng.choice(kinds),
            "period": f"2024-{rng.randrange(1, 13):02d}",
            "monthly_amount": round(rng.uniform(100, 2000), 2),
            "bank_account": f"NL{rng.randrange(10**16):016d}",
            "household_size": rng.randrange(1, 8),
            "declared_other_income": round(rng.uniform(0, 1500), 2),
        }
        for _ in range(count)
    ]


def best_rate(run: Callable[[], object], count: int, rounds: int, deadline: float) -> float:
    """Events per second of the fastest of `rounds` runs (fewer if `deadline` passes)."""
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
        if time.monotonic() > deadline:
            break
    return count / best


@contextmanager
def registry_url(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    from backbone.stack.embedded import EmbeddedBroker, EmbeddedRegistry

    with tempfile.TemporaryDirectory() as directory:
        with EmbeddedBroker(Path(directory)) as broker, EmbeddedRegistry(Path(directory), broker.bootstrap) as registry:
            yield registry.url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-seconds", type=float, default=60.0, help="stop repeating rounds after this long")
    parser.add_argument("--url", default=None, help="schema registry URL (default: start an embedded one)")
    args = parser.parse_args()

    event = default_catalog().event(EVENT_TYPE)
    parsed = event.parsed
    batch = records(args.count)
    with registry_url(args.url) as url:
        client = SchemaRegistryClient({"url": url})
        encode = encoder_for(client, f"{raw_topic(EVENT_TYPE)}-value", event.avro)
        decode = Decoder(client)
        decode.schema(encode.schema_id)  # the one registry look-up, outside the timing

        def raw_encode() -> list[bytes]:
            out = []
            for record in batch:
                buffer = BytesIO()
                schemaless_writer(buffer, parsed, record)
                out.append(buffer.getvalue())
            return out

        raw_bytes = raw_encode()
        framed = [encode(record) for record in batch]

        def raw_decode() -> list[dict]:
            return [schemaless_reader(BytesIO(data), parsed, None) for data in raw_bytes]

        deadline = time.monotonic() + args.max_seconds
        rates = {
            "encode": (best_rate(raw_encode, args.count, args.rounds, deadline),
                       best_rate(lambda: [encode(r) for r in batch], args.count, args.rounds, deadline)),
            "decode": (best_rate(raw_decode, args.count, args.rounds, deadline),
                       best_rate(lambda: [decode(d) for d in framed], args.count, args.rounds, deadline)),
        }
    print(f"{EVENT_TYPE}: {args.count} events, best of {args.rounds} rounds")
    print(f"{'':8}{'raw fastavro':>16}{'backbone.events.serde':>18}{'ratio':>8}")
    for name, (raw, ours) in rates.items():
        verdict = "ok" if ours / raw >= TARGET else f"below {TARGET:.0%} target"
        print(f"{name:8}{raw:>12,.0f} ev/s{ours:>13,.0f} ev/s{ours / raw:>8.0%}  {verdict}")


if __name__ == "__main__":
    main()
