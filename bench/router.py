"""The processor's per-event work in one process, without Kafka: `Router.route` on the demo mix beside
hand-written loops doing the same work in the same run (no project code but the policy engine and
fastavro), so the router's overhead and the audit trail's cost are measured, not guessed.

    python -m bench.router [--events 20000] [--rounds 3]

Loops, each over the same pre-encoded demo events (decode -> decide -> encode released records):
- `router`: the project's `Router.route` (schemas from an in-memory `LocalSchemas`), as the data plane calls it;
- `handwritten_audit_per_event`: one audit record per event listing all its decisions (the processor's design);
- `handwritten_audit_per_decision`: one audit record per decision (the first wave's design);
- `handwritten_no_audit`: no audit record at all (the ceiling).
Prints events/s and the ratios; writes `bench/results/router-<timestamp>.json`.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from rich.console import Console
from rich.table import Table

from backbone.catalog import AUDIT_EVENT, load_catalog
from backbone.keyring import Keyring
from backbone.policy import DictConsent, PolicyEngine, load_agreements
from backbone.serde import Encoder, LocalSchemas, encoder_for
from backbone.settings import PROJECT_ROOT
from backbone.topics import raw_topic
from processors.router import Router
from producers.synthetic import generate

RESULTS_DIR = Path(__file__).resolve().parent / "results"
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
console = Console()


def demo_mix(count: int, seed: int) -> list[tuple[str, dict]]:
    return [(t, r) for t, r in generate(seed=seed, population=max(200, count // 25), events=count) if t != "consent.changed"]


def timed(loop: Callable[[], int], rounds: int, events: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        loop()
        best = min(best, time.perf_counter() - started)
    return events / best


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

    def route_all() -> int:
        outputs = 0
        for event_type, value in encoded:
            outputs += len(router.route(raw_topic(event_type), b"k", value, None, consent, now))
        return outputs

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

    figures = {"events": len(encoded)}
    figures["router_events_per_s"] = timed(route_all, args.rounds, len(encoded))
    for name in ("per_event", "per_decision", "none"):
        figures[f"handwritten_audit_{name}_events_per_s" if name != "none" else "handwritten_no_audit_events_per_s"] = \
            timed(handwritten(name), args.rounds, len(encoded))
    table = Table("loop", "events/s", "x no-audit loop")
    ceiling = figures["handwritten_no_audit_events_per_s"]
    for name, value in figures.items():
        if name.endswith("_per_s"):
            table.add_row(name, f"{value:,.0f}", f"{value / ceiling:.2f}")
    console.print(table)
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"router-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(figures, indent=2) + "\n")
    console.print(f"results in {path}")


if __name__ == "__main__":
    main()
