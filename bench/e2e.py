"""End-to-end benchmark: producers for every agency -> processor worker -> ClickHouse sinks (chDB),
beside a bare confluent-kafka consume -> same transform -> produce loop measured in the same run.

    python -m bench.e2e [--events 30000] [--rate 3000] [--duration 15] [--seed 7]
    backbone bench      (same options)

Starts a private embedded broker and registry with a keyring (`app.local`), a real
`backbone process` worker subprocess, and the sinks of every recipient plus the audit sink as
threads of this process with one chDB client (as `backbone demo` runs them; chDB is one process
per directory). Then:
1. warm-up: a small batch of the mix, so group joins and topic creation are out of the figures;
2. throughput: `--events` events of the demo mix (consent changes included) produced as fast as
   the SDK goes; end-to-end events/s = raw events / (first produce -> last row landed), where
   "landed" means every raw event has its decisions in `audit.decisions` and every permitted
   record (one per permit decision) is in its recipient's table. Per stage: when the producers had
   every event acknowledged, when the worker had committed every raw event, when the sinks had
   landed the last row, each as a rate over the time from the first produce;
3. ceiling: `bench.loops.run_bare` (consume -> `Router.route` -> produce), the hand-written loops
   of `bench.loops` (with the processor's per-event audit record, and with no audit) on the same
   raw partitions, and the broker's raw pass-through (consume -> produce of the same bytes);
4. latency: `--rate` events/s of the mix for `--duration` s, while a poller queries the fraud
   database for a sample of the sent events, by the id the recipient receives for each (latency =
   start of the first query that sees the row - send time), and bench.latency's reader of every
   `shared.*` partition matches the released records of a sample of events to their send time
   (produce -> shared). The sinks of this phase use `--latency-batch-seconds`.
RSS (current and peak) of broker, registry, worker and this process (the sinks) after each phase.
The JSON carries bench.processor's keys too (`processor_events_per_s`: the worker's stage rate in
the throughput phase, with producers and sinks running beside it; `handwritten_*`,
`router_loop_events_per_s`, `p50/p99_produce_to_shared_ms`, `p99_produce_to_queryable_ms`,
`offered_events_per_s`).
Targets: end to end >= 35% of the bare loop; p99 produce -> shared < 500 ms and p99 produce ->
queryable < 1 s at 3,000 events/s offered (issue 16).
Results go to `bench/results/e2e-<timestamp>.json`. Every wait is bounded in count and time; only
processes started here are stopped.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.local import ProcessorWorker, embedded_settings
from backbone.clickhouse.client import make_client
from backbone.errors import BackboneError
from backbone.events.catalog import CONSENT_EVENT, load_catalog
from backbone.policy.agreements import Charter, load_agreements
from backbone.settings import Settings
from bench.latency import SharedReader, cpu_ticks, recipient_ids
from bench.loops import MixProducer, produce_all, run_bare, run_handwritten, run_passthrough
from bench.pipeline import Progress, Sinks, Visibility, audit_counts, decided_ms, memory_report, wait_landed
from bench.processes import clean_stop
from bench.results import (
    LOADED_MACHINE,
    add_bare_loop,
    add_handwritten,
    add_handwritten_ratios,
    add_latency,
    add_offered,
    console,
    measures,
    percentiles,
    print_notes,
    save,
    target,
)
from consumers import ddl
from producers.synthetic import SyntheticStream

RATIO_TARGET = 0.35
P99_TARGET_MS = 1000.0  # produce -> queryable
P99_SHARED_TARGET_MS = 500.0  # produce -> shared
LATENCY_RECIPIENT = "fraud"
SAMPLED_PER_S = 200  # latency samples per second of offered load, at most (bounds the poll query)
SHARED_SAMPLED_PER_S = 1000  # events per second whose released records are timed produce -> shared (bounds the work here)


@dataclass(slots=True)
class Stage:
    name: str
    count: int
    done_s: float  # after the first produce

    @property
    def rate(self) -> float:
        return self.count / self.done_s if self.done_s > 0 else float("nan")


@dataclass(slots=True)
class Results:
    events: int = 0
    raw_events: int = 0
    partitions: int = 0
    throughput_sink_batch: str = ""
    e2e_events_per_s: float = 0.0
    e2e_seconds: float = 0.0
    stages: list[dict[str, Any]] = field(default_factory=list)
    audit_rows: int = 0
    shared_rows: int = 0
    bare_events_per_s: float = 0.0
    bare_events: int = 0
    passthrough_events_per_s: float = 0.0
    ratio: float = 0.0
    offered_rate: float = 0.0
    offered_events: int = 0
    latency_sink_batch: str = ""
    latency_samples: int = 0
    latency_batch_interval_s: dict[str, float] = field(default_factory=dict)  # per sink: phase length / batches
    latency_unseen: int = 0
    latency_ms: dict[str, float] = field(default_factory=dict)
    decided_ms: dict[str, float] = field(default_factory=dict)  # send -> processor decision (audit decided_at)
    cpu_during_latency: dict[str, float] = field(default_factory=dict)  # machine busy %, worker and harness % of a core
    rss_mb: dict[str, dict[str, float | None]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    shared_latency_ms: dict[str, float] = field(default_factory=dict)  # produce -> shared, every released record
    # the keys bench.processor writes (issue 16), so results of both compare directly
    processor_events_per_s: float = 0.0  # the worker's stage rate in the throughput phase (producers, sinks beside it)
    handwritten_loop_events_per_s: float = 0.0
    handwritten_no_audit_events_per_s: float = 0.0
    router_loop_events_per_s: float = 0.0
    p50_produce_to_shared_ms: float | None = None
    p99_produce_to_shared_ms: float | None = None
    p50_produce_to_queryable_ms: float | None = None
    p99_produce_to_queryable_ms: float | None = None
    offered_events_per_s: float = 0.0


# -- producing ----------------------------------------------------------------------------------


def mix(seed: int, events: int) -> list[tuple[str, dict]]:
    """The demo's mix: every agency, consent changes included, population sized as the demo's."""
    return list(SyntheticStream(seed=seed, population=max(200, events // 25), events=events))


def raw_count(records: Sequence[tuple[str, dict]]) -> int:
    return sum(1 for event_type, _ in records if event_type != CONSENT_EVENT)



# -- latency ------------------------------------------------------------------------------------


@dataclass(slots=True)
class Latency:
    offered: float  # events/s achieved
    queryable_ms: list[float]  # sampled events: send -> first query that sees the row
    decided_ms: list[float]  # the same events: send -> the processor's decision
    unseen: int  # sampled events never seen
    shared_ms: list[float]  # every released record: send -> read from its shared topic
    shared_unmatched: int  # shared records of events sent before this phase
    cpu: dict[str, float] = field(default_factory=dict)  # while offering: machine busy %, worker and harness % of a core


def run_latency(settings: Settings, client: Any, charter: Charter, worker: ProcessorWorker, sinks: Sinks,
                records: list[tuple[str, dict]], rate: float) -> Latency:
    """Produce -> queryable (sampled) and produce -> shared (every released record) at `rate` events/s."""
    database = ddl.database_name(settings.clickhouse_database_prefix, LATENCY_RECIPIENT)
    tables = {event_type: ddl.qualified(database, ddl.table_name(event_type))
              for agreement in charter.agreements if agreement.recipient == LATENCY_RECIPIENT
              for event_type in agreement.event_types}
    every = max(1, round(rate / SAMPLED_PER_S))
    own_id = {event_type: functions[0] for event_type, functions in recipient_ids(settings, LATENCY_RECIPIENT).items()}
    derive = recipient_ids(settings)
    every_shared = max(1, round(rate / SHARED_SAMPLED_PER_S))
    shared_sent: dict[str, float] = {}  # every recipient's id of every event -> send time (wall clock, as CreateTime)
    reader = SharedReader(settings, shared_sent)
    reader.start()
    visibility = Visibility(client, tables).start()
    producers = MixProducer(settings, {record["provider"] for _, record in records})
    step = max(1, int(rate / 200))  # pace in batches of 5 ms worth of events
    tracked = sent = 0
    try:
        started = time.perf_counter()
        machine, process, harness = cpu_ticks(), cpu_ticks(worker.pid), cpu_ticks(os.getpid())
        for index in range(0, len(records), step):
            ahead = started + index / rate - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)
            for event_type, record in records[index:index + step]:
                if event_type in tables:
                    tracked += 1
                    if tracked % every == 0:
                        visibility.sent(event_type, record["event_id"], own_id[event_type](record["event_id"]),
                                        time.perf_counter())
                producers.send(event_type, record)
                sent += 1
                if sent % every_shared == 0:
                    at = time.time()
                    for recipient_id in derive.get(event_type, ()):
                        shared_sent[recipient_id(record["event_id"])] = at
            for producer in producers.producers.values():
                producer.poll(0)
        elapsed = time.perf_counter() - started
        offered = len(records) / elapsed
        machine_now, process_now, harness_now = cpu_ticks(), cpu_ticks(worker.pid), cpu_ticks(os.getpid())
        hz = os.sysconf("SC_CLK_TCK")
        cpu = {"machine_busy_pct": 100 * (machine_now[0] - machine[0]) / max(1, machine_now[1] - machine[1]),
               "worker_pct_of_a_core": 100 * (process_now[0] - process[0]) / hz / elapsed,
               # this process: the producers, the sinks and their chDB, the visibility poller and the shared reader
               "harness_pct_of_a_core": 100 * (harness_now[0] - harness[0]) / hz / elapsed}
        producers.close()
        # Drain: until every sampled row is seen, or none showed for 5 s (bounded).
        deadline = time.monotonic() + 60
        while visibility.unseen() and time.monotonic() < deadline and time.perf_counter() - visibility.last_seen < 5:
            sinks.check()
            if visibility.error is not None or not worker.alive():
                break
            time.sleep(0.1)
        # and until no released record reached a shared topic for 3 s (bounded)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and time.time() - reader.last_seen < 3:
            time.sleep(0.1)
    finally:
        visibility.stop()
        reader.stop()
    if visibility.error is not None:
        raise BackboneError(f"visibility poll failed: {visibility.error}") from visibility.error
    console.print(f"visibility poll: {visibility.queries:,} queries, {visibility.query_s / max(1, visibility.queries) * 1000:.1f} ms each")
    return Latency(offered, visibility.latencies_ms, decided_ms(client, visibility.sampled), visibility.unseen(),
                   reader.latencies_ms, reader.unmatched, cpu)


# -- report -------------------------------------------------------------------------------------


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def report(results: Results) -> Path:
    table = measures(f"end-to-end benchmark: {results.raw_events:,} raw events of the demo mix "
                     f"(+{results.events - results.raw_events:,} consent changes), {results.partitions} partitions")
    table.add_row("[b]end to end (produce -> landed in chDB)", f"[b]{results.e2e_events_per_s:,.0f} events/s",
                  f"{results.e2e_seconds:.1f} s")
    for stage in results.stages:
        table.add_row(f"  {stage['name']}", f"{stage['rate']:,.0f} /s",
                      f"{stage['count']:,} done at {stage['done_s']:.1f} s")
    table.add_row("  rows landed: audit / shared", f"{results.audit_rows:,} / {results.shared_rows:,}",
                  f"sink batch {results.throughput_sink_batch}")
    add_bare_loop(table, results.bare_events_per_s, f"{results.bare_events:,} events")
    add_handwritten(table, results.handwritten_loop_events_per_s, results.handwritten_no_audit_events_per_s)
    table.add_row("broker raw pass-through (consume -> produce)", f"{results.passthrough_events_per_s:,.0f} events/s", "")
    table.add_row("[b]ratio end to end / bare loop", f"[b]{results.ratio:.0%}",
                  target(results.ratio >= RATIO_TARGET, f">= {RATIO_TARGET:.0%}"))
    if results.handwritten_no_audit_events_per_s:
        add_handwritten_ratios(table, results.processor_events_per_s, results.handwritten_loop_events_per_s,
                               results.handwritten_no_audit_events_per_s, who="processor (in the pipeline)",
                               remark="producers and sinks ran beside the worker")
    add_offered(table, results.offered_rate, results.offered_events, results.latency_sink_batch)
    add_latency(table, "produce -> queryable", results.latency_ms, P99_TARGET_MS,
                lambda name: f"of which to decision {results.decided_ms.get(name, float('nan')):,.0f} ms")
    add_latency(table, "produce -> shared", results.shared_latency_ms, P99_SHARED_TARGET_MS)
    intervals = ", ".join(f"{name} {seconds:.2f}" for name, seconds in results.latency_batch_interval_s.items())
    table.add_row("sink batch interval in the latency phase", "s per batch", intervals)
    if results.cpu_during_latency:
        cpu = results.cpu_during_latency
        table.add_row("CPU while offering: machine busy / worker / harness",
                      f"{cpu['machine_busy_pct']:.0f}% / {cpu['worker_pct_of_a_core']:.0f}% / {cpu['harness_pct_of_a_core']:.0f}%",
                      "worker and harness in % of one core")
    table.add_row("latency samples (seen / never seen)", f"{results.latency_samples:,} / {results.latency_unseen:,}", "")
    for when, processes in results.rss_mb.items():
        for name, memory in processes.items():
            table.add_row(f"RSS {name}, {when}", f"{_mb(memory['rss'])} MiB", f"peak {_mb(memory['peak'])} MiB")
    console.print(table)
    print_notes(results.notes)
    return save("e2e", results)


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.e2e", description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=30_000, help="events of the throughput phase (demo mix)")
    parser.add_argument("--rate", type=float, default=3_000.0, help="offered load of the latency phase, events/s")
    parser.add_argument("--duration", type=float, default=15.0, help="length of the latency phase, seconds")
    parser.add_argument("--seed", type=int, default=7, help="seed of the synthetic events")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--latency-batch-seconds", type=float, default=0.2,
                        help="BACKBONE_SINK_BATCH_SECONDS of the sinks in the latency phase")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="bound of every wait")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> Path:
    """Run the benchmark, print the table, write the JSON; returns its path."""
    args = parse_args(argv)
    with clean_stop():  # SIGTERM / SIGHUP stop the worker, sinks and stack as Ctrl-C does
        results = run(args)
    return report(results)


def run(args: argparse.Namespace) -> Results:
    results = Results()
    results.notes.append(LOADED_MACHINE)
    warmup = mix(args.seed + 1000, 1_000)
    records = mix(args.seed, args.events)
    latency_records = mix(args.seed + 1, int(args.rate * args.duration))
    warmup_again = mix(args.seed + 2000, 500)
    results.events, results.raw_events = len(records), raw_count(records)
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as directory, \
            embedded_settings(Path(directory), args.partitions) as stack_settings:
        settings = stack_settings.model_copy(update={
            "clickhouse_dsn": f"chdb://{Path(directory).resolve() / 'clickhouse'}", "clickhouse_database_prefix": ""})
        results.partitions = settings.kafka_partitions
        charter = load_agreements(settings.agreements_dir, load_catalog(settings.schemas_dir))
        client = make_client(settings.clickhouse_dsn)
        worker = ProcessorWorker(settings, "e2e-worker")
        sinks: Sinks | None = None
        try:
            console.print("starting the worker and the sinks; warm-up ...")
            worker.start()
            sinks = Sinks(settings, charter, client).start()
            produce_all(settings, warmup)
            decided = raw_count(warmup)
            wait_landed(client, sinks, worker, decided, args.max_seconds)

            console.print(f"throughput: {len(records):,} events ...")
            results.throughput_sink_batch = f"{settings.sink_batch_seconds:g} s / {settings.sink_batch_rows:,} rows"
            progress = Progress(settings, sinks).start()
            # audit rows from the table (one per event): the audit sink lands up to 64 events' records per message
            committed_before, (_, shared_before) = progress.committed, progress.landed
            audit_before = audit_counts(client)[0]
            try:
                producers, first, acked = produce_all(settings, records)
                decided += results.raw_events
                _, shared_rows = wait_landed(client, sinks, worker, decided, args.max_seconds)
                audit_rows = audit_counts(client)[0]
                # the last commit may trail the landing a little: wait for it (bounded)
                deadline = time.monotonic() + 30
                while progress.committed - committed_before < results.raw_events and time.monotonic() < deadline:
                    time.sleep(0.05)
            finally:
                progress.stop()
            landed_at = progress.landed_at
            results.e2e_seconds = landed_at - first
            results.e2e_events_per_s = results.raw_events / results.e2e_seconds
            results.audit_rows, results.shared_rows = audit_rows - audit_before, shared_rows - shared_before
            stages = [
                Stage("producers (every event acknowledged)", len(records), acked - first),
                Stage("processor (raw events committed)", progress.committed - committed_before, progress.committed_at - first),
                Stage("sinks (audit + shared rows landed)", results.audit_rows + results.shared_rows, landed_at - first),
            ]
            results.stages = [{"name": s.name, "count": s.count, "done_s": s.done_s, "rate": s.rate} for s in stages]
            results.processor_events_per_s = stages[1].rate
            results.rss_mb["after throughput"] = memory_report(worker)
            sinks.stop()
            carried, sinks = sinks.landed(), None

            console.print(f"end to end {results.e2e_events_per_s:,.0f} events/s; bare loop and pass-through ...")
            raw_ends = {tp: end for tp, end in producers.ends.items() if tp[0].startswith("raw.")}
            results.bare_events_per_s, results.bare_events, _ = run_bare(settings, raw_ends, args.max_seconds)
            results.router_loop_events_per_s = results.bare_events_per_s
            console.print("hand-written loops (with the processor's audit record, and without audit) ...")
            results.handwritten_loop_events_per_s = run_handwritten(settings, raw_ends, args.max_seconds, audit=True)
            results.handwritten_no_audit_events_per_s = run_handwritten(settings, raw_ends, args.max_seconds, audit=False)
            results.passthrough_events_per_s = run_passthrough(settings, raw_ends, args.max_seconds)
            results.ratio = results.e2e_events_per_s / results.bare_events_per_s

            console.print(f"latency: {args.rate:,.0f} events/s for {args.duration:g} s ...")
            latency_settings = settings.model_copy(update={"sink_batch_seconds": args.latency_batch_seconds})
            results.latency_sink_batch = f"{latency_settings.sink_batch_seconds:g} s / {latency_settings.sink_batch_rows:,} rows"
            sinks = Sinks(latency_settings, charter, client, carried).start()
            produce_all(settings, warmup_again)
            decided += raw_count(warmup_again)
            wait_landed(client, sinks, worker, decided, args.max_seconds)
            batches = {sink.plan.name: (sink.stats.batches, time.perf_counter()) for sink in sinks.sinks}
            latency = run_latency(settings, client, charter, worker, sinks, latency_records, args.rate)
            results.offered_rate, results.offered_events = latency.offered, len(latency_records)
            results.offered_events_per_s = latency.offered
            results.latency_samples, results.latency_unseen = len(latency.queryable_ms), latency.unseen
            results.latency_ms = percentiles(latency.queryable_ms)
            results.p50_produce_to_queryable_ms = results.latency_ms.get("p50")
            results.p99_produce_to_queryable_ms = results.latency_ms.get("p99")
            results.shared_latency_ms = percentiles(latency.shared_ms)
            results.p50_produce_to_shared_ms = results.shared_latency_ms.get("p50")
            results.p99_produce_to_shared_ms = results.shared_latency_ms.get("p99")
            results.notes.append(f"produce -> shared timed for 1 in {max(1, round(args.rate / SHARED_SAMPLED_PER_S))} events "
                                 f"({len(latency.shared_ms):,} released records); {latency.shared_unmatched:,} other "
                                 "shared records read (events not timed, or sent before the phase)")
            results.latency_batch_interval_s = {
                sink.plan.name: (time.perf_counter() - batches[sink.plan.name][1]) / max(1, sink.stats.batches - batches[sink.plan.name][0])
                for sink in sinks.sinks}
            results.decided_ms = percentiles(latency.decided_ms)
            results.cpu_during_latency = latency.cpu
            if latency.offered < 0.95 * args.rate:
                results.notes.append(
                    f"the harness is the limit: it offered {latency.offered:,.0f} of {args.rate:,.0f} events/s; while offering, this "
                    f"process (producers, sinks, chDB, pollers) used {latency.cpu['harness_pct_of_a_core']:.0f}% of a core, the worker "
                    f"{latency.cpu['worker_pct_of_a_core']:.0f}%, the machine was {latency.cpu['machine_busy_pct']:.0f}% busy: "
                    "the latencies are of an overloaded machine, not of the backbone at the rate asked for")
            for sink in sinks.sinks:
                st = sink.stats
                results.notes.append(f"sink {sink.plan.name}: {st.batches} batches; seconds in consume {st.consume_s:.1f}, "
                                     f"insert {st.insert_s:.1f}, commit {st.commit_s:.1f}, after-batch {st.hook_s:.1f}")
            results.rss_mb["after latency"] = memory_report(worker)
            if latency.unseen:
                results.notes.append(f"{latency.unseen} sampled events never became visible in {LATENCY_RECIPIENT}'s tables "
                                     "(denied, or later than the drain allowed)")
        finally:
            if sinks is not None:
                sinks.stop()
            worker.stop()
            client.close()
    return results


if __name__ == "__main__":
    main()
