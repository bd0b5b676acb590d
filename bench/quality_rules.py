"""What the quality monitor costs (issues 32 and 30): the CPU per event of `QualityMonitor` over a
seeded synthetic stream read as the router reads it (encoded, then decoded by the generated decoder:
event ids as UUIDs, `occurred_at` as datetimes, fresh strings each round), with the schemas'
contracts as they are and with their `reference` rules and `business_key`s taken out, in
alternating rounds (median); and the bytes per event its exact uniqueness state holds (event ids
and business keys of one hour, tracemalloc) beside the Python sets of int markers it held before.

    python -m bench.quality_rules [--events 30000] [--rounds 5] [--seed 4] [--state-events 500000] [--before COMMIT]
                                  [--hour-events 2000000]

`--hour-events N` runs one hour's window of N distinct events (7,200,000: 2,000 events/s) through a
monitor whose big marker blocks go to files (as the worker's) and through one holding them all in
memory, each in a process of its own: resident memory (VmRSS) growth from the first tenth of the
events to the end, in bytes per event, the bytes in files and the CPU µs per event.

`--before COMMIT` also runs the monitor of the `backbone.quality` package as it was at that commit
(e.g. 2fd6851, before the checks were compiled into one function per event type) on the same
records in the same rounds, and checks that both count the same.

Results go to `bench/results/quality-rules-<timestamp>.json`.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import importlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import backbone
from backbone.events.catalog import load_catalog
from backbone.events.decoder import compile_decoder
from backbone.events.serde import LocalSchemas, encoder_for
from backbone.kafka.topics import raw_topic
from backbone.quality.checks import QualityMonitor
from backbone.quality.contract import QualityContract, QualitySection, load_quality
from backbone.settings import PROJECT_ROOT
from bench.results import console, measures, save
from producers.synthetic import generate

HEADER = 5  # the Confluent framing: magic byte and schema id
STATE = QualityContract("tax.income_declared", "bench", QualitySection.model_validate(
    {"uniqueness": {"key": "event_id", "business_key": ["national_id", "employer_id", "period"]}}))


def without_new_rules(contract: QualityContract) -> QualityContract:
    """The contract without its reference rules and business key."""
    quality = contract.quality.model_dump(exclude_none=True)
    quality.pop("references", None)
    if "validity" in quality:
        quality["validity"]["rules"] = [r for r in quality["validity"]["rules"] if "reference" not in r]
    if "uniqueness" in quality:
        quality["uniqueness"].pop("business_key", None)
    return QualityContract(contract.event_type, contract.source, QualitySection.model_validate(quality))


def state_records(count: int) -> list[dict]:
    """Distinct events of one provider in one hour: an id, a person, an employer and a month."""
    return [{"event_id": uuid.UUID(int=n << 65 | n), "national_id": f"{100_000_000 + n % 900_000_000}",
             "employer_id": f"{n % 5_000:08d}", "period": f"2026-{n % 12 + 1:02d}"} for n in range(count)]


def state_bytes(records: list[dict], pseudonym: Callable[[str], str]) -> dict[str, float]:
    """Bytes per event of the uniqueness state after `records`, as the monitor holds it now and as
    the Python sets of int markers it held before (the same markers), by tracemalloc."""
    now = datetime.now(UTC)
    out: dict[str, float] = {}
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        ids: set[int] = set()
        keys: set[int] = set()
        for record in records:
            ids.add(record["event_id"].int >> 65)
            keys.add(hash((pseudonym(record["national_id"]), record["employer_id"], record["period"])))
        out["python_sets_bytes_per_event"] = round((tracemalloc.get_traced_memory()[0] - start) / len(records), 1)
        del ids, keys
        start = tracemalloc.get_traced_memory()[0]
        monitor = QualityMonitor([STATE])
        monitor.bind({STATE.event_type: "national_id"}, pseudonym)
        for record in records:
            monitor.observe(STATE.event_type, record, now)
        monitor.flush()
        out["keyset_bytes_per_event"] = round((tracemalloc.get_traced_memory()[0] - start) / len(records), 1)
    finally:
        tracemalloc.stop()
    (window,) = monitor.closed(now, everything=True)
    assert (window.events, window.duplicates) == (len(records), 0), "the state bench's events are distinct"
    return out


def hour_run(count: int, spilled: bool) -> dict[str, float]:
    """One hour's window of `count` distinct events in this process (`--hour-variant`): VmRSS from
    the first tenth of the events to the end, the bytes in files, the CPU per event."""
    from bench.processes import rss_mb

    key = b"bench-key" * 4

    def token(value: str) -> str:
        return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:22]

    folder = Path(tempfile.mkdtemp(prefix="quality-markers-"))
    try:
        monitor = QualityMonitor([STATE], markers_dir=folder / "quality-markers" if spilled else None)
        monitor.bind({STATE.event_type: "national_id"}, token)
        now = datetime.now(UTC)
        tenth, rss = max(1, count // 10), {}
        started = time.process_time()
        for n in range(count):
            monitor.observe(STATE.event_type, {"event_id": uuid.UUID(int=n << 65 | n), "national_id": f"{100_000_000 + n % 900_000_000}",
                                               "employer_id": f"{n % 5_000:08d}", "period": f"2026-{n % 12 + 1:02d}"}, now)
            if n % tenth == tenth - 1:
                monitor.flush(settle=True)
                rss[n + 1] = rss_mb(os.getpid()) or 0.0
        monitor.flush(settle=True)
        cpu_us = (time.process_time() - started) / count * 1e6
        sets = [s for seen in (monitor._seen, monitor._seen_keys) for s in seen.values()]
        in_files = sum(s.file_bytes() for s in sets)
        in_blocks = sum(s.nbytes() for s in sets)
        (window,) = monitor.closed(now, everything=True)
        assert (window.events, window.duplicates) == (count, 0), "the hour's events are distinct"
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    first, last = rss[tenth], rss[max(rss)]
    return {"events": count, "rss_mb_at_first_tenth": round(first, 1), "rss_mb_at_end": round(last, 1),
            "rss_max_mb": round(max(rss.values()), 1),
            "resident_bytes_per_event": round((last - first) * 2**20 / (count - tenth), 2),
            "block_bytes_in_memory": in_blocks, "bytes_in_files": in_files, "cpu_us_per_event": round(cpu_us, 2)}


def hour_state(count: int) -> dict[str, dict[str, float]]:
    """`hour_run` with the blocks in files and all in memory, each in a fresh process."""
    out = {}
    for variant in ("files", "memory"):
        done = subprocess.run([sys.executable, "-m", "bench.quality_rules", "--hour-events", str(count), "--hour-variant", variant],
                              cwd=PROJECT_ROOT, check=True, capture_output=True, text=True)
        out[variant] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def monitor_at(commit: str) -> type:
    """`QualityMonitor` of the `backbone.quality` package at `commit` (this repository's own history),
    beside the current one: its modules are imported from that commit's files (the generated checks
    of `compiled.py` included), the rest of `backbone` is the current."""
    folder = Path(tempfile.mkdtemp(prefix=f"quality-{commit}-"))
    archive = subprocess.run(["git", "archive", commit, "backbone/quality"], cwd=PROJECT_ROOT, check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    current = {name: sys.modules.pop(name) for name in list(sys.modules) if name.split(".")[:2] == ["backbone", "quality"]}
    package_path = backbone.__path__
    backbone.__path__ = [str(folder / "backbone"), *package_path]
    try:
        return importlib.import_module("backbone.quality.checks").QualityMonitor
    finally:  # the commit's modules stay alive through the class; the current ones are restored
        for name in [name for name in sys.modules if name.split(".")[:2] == ["backbone", "quality"]]:
            del sys.modules[name]
        sys.modules.update(current)
        backbone.__path__ = package_path
        backbone.quality = current["backbone.quality"]  # type: ignore[attr-defined]
        shutil.rmtree(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--state-events", type=int, default=500_000, help="events for the uniqueness state's bytes (0: skip)")
    parser.add_argument("--before", metavar="COMMIT", help="also run the monitor of backbone/quality/ at this commit")
    parser.add_argument("--hour-events", type=int, default=0,
                        help="an hour's window of this many events, marker blocks in files and in memory (0: skip)")
    parser.add_argument("--hour-variant", choices=("files", "memory"), help=argparse.SUPPRESS)  # one run, in a child process
    args = parser.parse_args()
    if args.hour_variant:
        print(json.dumps(hour_run(args.hour_events, args.hour_variant == "files")))
        return
    catalog = load_catalog(PROJECT_ROOT / "schemas")
    contracts = load_quality(PROJECT_ROOT / "schemas", catalog)
    variants: dict[str, tuple[type, list[QualityContract]]] = {
        "with": (QualityMonitor, list(contracts.values())),
        "without": (QualityMonitor, [without_new_rules(c) for c in contracts.values()])}
    if args.before:
        variants["with_before"] = (monitor_at(args.before), list(contracts.values()))
    subjects = {name: schema.subject_field for name, schema in catalog.events.items()}
    key = b"bench-key" * 4

    def token(value: object) -> str:  # the router's oversight pseudonym is an HMAC-SHA256 like this one
        return hmac.new(key, str(value).encode(), hashlib.sha256).hexdigest()[:22]

    schemas = LocalSchemas()
    encoders = {t: encoder_for(schemas, f"{raw_topic(t)}-value", catalog.events[t].avro) for t in contracts}
    decoders = {t: compile_decoder(catalog.events[t].avro) for t in contracts}
    encoded = [(t, encoders[t](dict(r))) for t, r in generate(seed=args.seed, population=3_000, events=args.events) if t in contracts]
    now = datetime.now(UTC)
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        counts: dict[str, list] = {}
        for name, (monitor_class, chosen) in variants.items():
            events = [(t, decoders[t](value, HEADER)[0]) for t, value in encoded]  # fresh records, as the router's
            tokens = [token(r[subjects[t]]) if subjects.get(t) and r.get(subjects[t]) else None for t, r in events]
            monitor = monitor_class(chosen)
            monitor.bind(subjects, token)
            started = time.process_time()
            for (event_type, record), subject in zip(events, tokens, strict=True):
                monitor.observe(event_type, record, now, subject)
            monitor.flush()
            cpu[name].append((time.process_time() - started) / len(events) * 1e6)
            counts[name] = [w.counters() for w in monitor.closed(now, everything=True)]
        if args.before:
            assert counts["with"] == counts["with_before"], "the two monitors counted differently"
    results = {"events": len(encoded), "rounds": args.rounds, "seed": args.seed,
               "cpu_us_per_event": {name: round(statistics.median(v), 2) for name, v in cpu.items()}}
    table = measures("Quality monitor, CPU µs per event (median)")
    labels = {"with": "with reference checks and business keys", "without": "without reference checks and business keys",
              "with_before": f"with them, backbone/quality/ at {args.before}"}
    for name, value in results["cpu_us_per_event"].items():
        table.add_row(labels[name], f"{value:.2f}", "")
    if args.before:
        results["before"] = args.before
    if args.state_events:
        results["uniqueness_state"] = {"events": args.state_events, **state_bytes(state_records(args.state_events), token)}
        state = results["uniqueness_state"]
        table.add_row(f"uniqueness state, bytes per event ({args.state_events:,} events, one hour)",
                      f"{state['keyset_bytes_per_event']:.1f}", f"Python sets: {state['python_sets_bytes_per_event']:.1f}")
    if args.hour_events:
        hour = results["hour_state"] = hour_state(args.hour_events)
        for variant, label in (("files", "big blocks in files"), ("memory", "all in memory")):
            figures = hour[variant]
            table.add_row(f"an hour of {args.hour_events:,} events, {label}: resident bytes per event",
                          f"{figures['resident_bytes_per_event']:.2f}",
                          f"RSS {figures['rss_mb_at_first_tenth']:.0f} -> {figures['rss_mb_at_end']:.0f} MiB, "
                          f"{figures['bytes_in_files'] / 2**20:.0f} MiB in files, {figures['cpu_us_per_event']:.2f} µs/event")
    console.print(table)
    save("quality-rules", results)


if __name__ == "__main__":
    main()
