"""The processor's per-event work in one process, without Kafka: `Router.route` on the demo mix beside
hand-written loops doing the same work in the same run (no project code but the policy engine and
fastavro), so the router's overhead and the audit trail's cost are measured, not guessed.

    python -m bench.router [--events 20000] [--rounds 3]

Loops, each over the same pre-encoded demo events (decode -> decide -> encode released records):
- `router`: the project's `Router.route` (schemas from an in-memory `LocalSchemas`), one event at a time;
- `router_many`: `Router.route_many` on batches of 5,000, as the data plane calls it (a stage at a time);
- `router_fastavro_decode`: the same Router reading every event with the serde decoder (fastavro),
  as before the generated decoder: the before/after of `backbone.events.decoder.compile_decoder`;
- `decode_generated` / `decode_fastavro`: the two read paths alone;
- `handwritten_audit_per_event`: one audit record per event listing all its decisions (the processor's design);
- `handwritten_audit_per_decision`: one audit record per decision (the first wave's design);
- `handwritten_no_audit`: no audit record at all (the ceiling).
Prints events/s (wall clock and per CPU second of this process) and the ratios; writes
`bench/results/router-<timestamp>.json`.
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Callable
from datetime import UTC, datetime

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from rich.table import Table

from backbone.events.catalog import AUDIT_EVENT, load_catalog
from backbone.events.serde import Decoder, Encoder, LocalSchemas, encoder_for
from backbone.kafka.topics import raw_topic
from backbone.keys.keyring import Keyring
from backbone.policy import DictConsent, PolicyEngine, load_agreements
from backbone.settings import PROJECT_ROOT
from bench.results import console, print_notes, save
from processors.router import Router
from producers.synthetic import generate

# The first wave's audit record, one per decision: kept here as the baseline the per-event record replaced.
PER_DECISION_AUDIT = {"type": "record", "name": "AuditDecision", "namespace": "bench", "fields": [
    {"name": "event_id", "type": {"type": "string", "logicalType": "uuid"}},
    {"name": "event_type", "type": "string"}, {"name": "provider", "type": "string"}, {"name": "recipient", "type": "string"},
    {"name": "agreement_id", "type": ["null", "string"]}, {"name": "agreement_version", "type": ["null", "int"]},
    {"name": "purposes", "type": {"type": "array", "items": "string"}},
    {"name": "decision", "type": {"type": "enum", "name": "DecisionKind", "symbols": ["permit", "deny"]}},
    {"name": "reason", "type": ["null", "string"]}, {"name": "released_fields", "type": {"type": "array", "items": "string"}},
    {"name": "key_ids", "type": {"type": "array", "items": "string"}}, {"name": "subject_token", "type": ["null", "string"]},
    {"name": "decided_at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    {"name": "recipient_event_id", "type": ["null", {"type": "string", "logicalType": "uuid"}]}]}
BATCH = 5_000  # messages per `Router.route_many` call: the data plane's consumer batch size (BACKBONE_CONSUMER_BATCH_SIZE)
MACHINE = "measured on a shared 2-core machine with other work running: compare loops of one run, not runs"


class FastavroDecodeRouter(Router):
    """The Router as it read events before the generated decoder: every event through the serde decoder."""

    def _read(self, value: bytes) -> dict:
        return self.decoder(value).record


def demo_mix(count: int, seed: int) -> list[tuple[str, dict]]:
    return [(t, r) for t, r in generate(seed=seed, population=max(200, count // 25), events=count) if t != "consent.changed"]


def timed(loops: dict[str, Callable[[], int]], rounds: int, events: int) -> dict[str, float]:
    """`<name>` events/s of each loop (wall clock) and `<name>` with `_per_s` -> `_per_cpu_s` (this
    process's CPU time, which other work on a shared machine disturbs far less), best of `rounds`;
    the loops take turns within each round, so a change in the machine's load falls on all of them."""
    wall = dict.fromkeys(loops, float("inf"))
    cpu = dict.fromkeys(loops, float("inf"))
    for _ in range(rounds):
        for name, loop in loops.items():
            started, cpu_started = time.perf_counter(), time.process_time()
            loop()
            wall[name] = min(wall[name], time.perf_counter() - started)
            cpu[name] = min(cpu[name], time.process_time() - cpu_started)
    figures = {name: events / seconds for name, seconds in wall.items()}
    figures.update({name.replace("_per_s", "_per_cpu_s"): events / seconds for name, seconds in cpu.items()})
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    catalog = load_catalog(PROJECT_ROOT / "schemas")
    charter = load_agreements(PROJECT_ROOT / "agreements", catalog)
    keyring = Keyring.for_charter(charter)
    engine = PolicyEngine(charter, keyring)
    schemas = LocalSchemas()
    encoders = {t: encoder_for(schemas, f"{raw_topic(t)}-value", s.avro) for t, s in catalog.events.items()}
    parsed = {t: parse_schema(s.avro) for t, s in catalog.events.items()}
    events = demo_mix(args.events, args.seed)
    encoded = [(t, encoders[t](dict(r))) for t, r in events]
    consent = DictConsent()
    now = datetime(2026, 3, 1, tzinfo=UTC)
    router = Router(catalog, engine, schemas, keyring)
    router.prepare()
    before = FastavroDecodeRouter(catalog, engine, schemas, keyring)
    before.prepare()

    def routing(through: Router) -> Callable[[], int]:
        def loop() -> int:
            outputs = 0
            for event_type, value in encoded:
                outputs += len(through.route(raw_topic(event_type), b"k", value, None, consent, now))
            return outputs
        return loop

    route_all = routing(router)
    items = [(raw_topic(event_type), b"k", value, None, None, None) for event_type, value in encoded]

    def route_many() -> int:  # as the data plane: batches of its consumer batch size, a stage at a time
        outputs = 0
        for start in range(0, len(items), BATCH):
            routed, _ = router.route_many(items[start:start + BATCH], consent, now)
            outputs += sum(map(len, routed))
        return outputs
    decoder = Decoder(schemas)

    def decode_generated() -> int:
        for _, value in encoded:
            router._read(value)  # noqa: SLF001 - the read path alone
        return len(encoded)

    def decode_fastavro() -> int:
        for _, value in encoded:
            decoder(value)
        return len(encoded)

    released: dict[tuple[str, int, str], Encoder] = {}

    def release_encoder(decision, event_type: str) -> Encoder:  # noqa: ANN001
        key = (decision.agreement_id, decision.agreement_version, event_type)
        if key not in released:
            avro = engine.recipient_schema(decision.agreement_id, event_type, decision.agreement_version)
            released[key] = Encoder(1, parse_schema(avro), avro)
        return released[key]

    per_decision_schema = parse_schema(PER_DECISION_AUDIT)
    per_event_schema = parse_schema(catalog.internal_schema(AUDIT_EVENT))

    def handwritten(audit: str) -> Callable[[], int]:
        def loop() -> int:
            outputs = 0
            for event_type, value in encoded:
                record = schemaless_reader(io.BytesIO(value[5:]), parsed[event_type], None)
                decisions = engine.decide(record, consent, now)
                for decision in decisions:
                    if decision.permitted:
                        release_encoder(decision, event_type)(decision.record)
                        outputs += 1
                    if audit == "per_decision":
                        buffer = io.BytesIO()
                        schemaless_writer(buffer, per_decision_schema, {
                            "event_id": str(record["event_id"]), "event_type": event_type, "provider": record["provider"],
                            "recipient": decision.recipient, "agreement_id": decision.agreement_id,
                            "agreement_version": decision.agreement_version, "purposes": list(decision.purposes),
                            "decision": "permit" if decision.permitted else "deny", "reason": decision.reason,
                            "released_fields": list(decision.released_fields), "key_ids": list(decision.key_ids),
                            "subject_token": None, "decided_at": now, "recipient_event_id": None})
                        outputs += 1
                if audit == "per_event":
                    buffer = io.BytesIO()
                    schemaless_writer(buffer, per_event_schema, {
                        "event_id": str(record["event_id"]), "event_type": event_type, "provider": record["provider"],
                        "subject_token": None, "decided_at": now, "decisions": [
                            {"recipient": d.recipient, "agreement_id": d.agreement_id, "agreement_version": d.agreement_version,
                             "outcome": "permit" if d.permitted else d.reason, "key_ids": list(d.key_ids),
                             "recipient_event_id": d.record["event_id"] if d.record else None} for d in decisions]})
                    outputs += 1
            return outputs
        return loop

    figures: dict[str, float] = {"events": len(encoded)}
    figures.update(timed({
        "router_events_per_s": route_all, "router_many_events_per_s": route_many,
        "router_fastavro_decode_events_per_s": routing(before),
        "decode_generated_events_per_s": decode_generated, "decode_fastavro_events_per_s": decode_fastavro,
        "handwritten_audit_per_event_events_per_s": handwritten("per_event"),
        "handwritten_audit_per_decision_events_per_s": handwritten("per_decision"),
        "handwritten_no_audit_events_per_s": handwritten("none"),
    }, args.rounds, len(encoded)))
    table = Table("loop", "events/s", "x no-audit loop", "events per CPU s", "x no-audit loop")
    ceiling = figures["handwritten_no_audit_events_per_s"]
    cpu_ceiling = figures["handwritten_no_audit_events_per_cpu_s"]
    for name, value in figures.items():
        if name.endswith("_per_s"):
            cpu = figures[name.replace("_per_s", "_per_cpu_s")]
            table.add_row(name, f"{value:,.0f}", f"{value / ceiling:.2f}", f"{cpu:,.0f}", f"{cpu / cpu_ceiling:.2f}")
    console.print(table)
    print_notes([MACHINE])
    for clock in ("per_s", "per_cpu_s"):
        console.print(f"generated decoder ({'wall clock' if clock == 'per_s' else 'CPU time'}): Router.route "
                      f"{figures[f'router_events_{clock}'] / figures[f'router_fastavro_decode_events_{clock}']:.2f}x the fastavro "
                      f"read path; decode alone {figures[f'decode_generated_events_{clock}'] / figures[f'decode_fastavro_events_{clock}']:.2f}x")
    save("router", {**figures, "machine": MACHINE})


if __name__ == "__main__":
    main()
