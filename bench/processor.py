"""Events per second through the processor for the demo's event mix, beside a bare confluent-kafka
consume -> `Router.route` -> produce loop and hand-written loops in the same run, what sealing the
audit trail costs, how two workers compare with one, and end-to-end latency from produce to
shared-topic delivery at a steady offered load. `--soak` instead runs the worker for minutes at a
steady load and follows the memory of every process.

    python -m bench.processor [--events 50000] [--rate 5000] [--seconds 15] [--partitions 6]
                              [--workers 2] [--checkpoint-rounds 3] [--profile DIR] [--key-provider file|both]
    python -m bench.processor --soak [--soak-seconds 600] [--soak-rate 2000] [--soak-interval 10]

Starts a private embedded broker and registry in a temporary directory, then:
1. pre-produces `--events` synthetic events (every agency, consent changes included) through the SDK;
2. bare loop: all raw partitions assigned from the beginning, each message routed exactly as the
   processor routes it (same Router, engine, keyring, consent table), outputs produced to
   `bench.bare.*` copies of the output topics (deleted afterwards), one flush at the end; then the
   hand-written loops (fastavro + the policy engine + librdkafka, with and without the per-event
   audit record) on the same events, delivering what the processor delivers (keyed records to copies
   of the shared topics, agreement header, released timestamp, each batch flushed before its offsets
   are committed), and the first no-audit baseline beside them (unkeyed to one topic, one flush at the
   end); all take batches as the data plane does (what is waiting);
3. checkpoints: the processor's `DataPlane` in this process (same settings, its own consumer group,
   from the first batch to the last commit), sealing each batch with a signed checkpoint and
   without (`checkpoints=lambda: None`: audit records produced unsealed), both in each of
   `--checkpoint-rounds` rounds (order alternating); the cost is the median of the rounds' ratios,
   in events/s and in CPU per event; goal: sealing costs at most 5%;
4. processor: a real `backbone process` worker; its rate is raw events decided / time until the
   group's committed offsets reach the ends of every raw partition (from the first commit, so the
   consumer-group join is left out, as the bare loop's assignment is; the rate from "enforcing" is
   printed beside it). `--profile DIR` records the worker with py-spy meanwhile (`bench.profile`);
5. latency: `--rate` events/s for `--seconds` through the SDK while a reader assigned to every
   `shared.*` partition records receive time - send time per released record, matched by event id;
6. workers (`--workers 2`): the same events pre-produced again for one worker, then again for two
   worker processes started together in the processor's consumer group; the ratio is reported, not
   targeted (two cores shared with the broker);
7. key providers (`--key-provider both`, the default): the same events pre-produced again for one
   worker with the file keyring, then again for one worker whose keys are on a SoftHSM2 token made in
   the temporary directory (PKCS#11: the token computes every HMAC, AES-SIV and signature); the ratio
   is targeted at >= 70%. Skipped, with the reason in the notes, where SoftHSM2 is not installed.
Targets: processor >= 50% of the bare loop and >= 80% of the hand-written no-audit loop; p99
produce -> shared < 500 ms at the offered load.
Soak: `--soak-rate` events/s for `--soak-seconds` through one worker; every `--soak-interval` s the
RSS of broker, registry, worker and this process, events decided and lag; growth per process from
the first minute's median to the last minute's (goal: flat within 10%). The run ends after
`--soak-seconds` + a margin whatever happens.
Results go to `bench/results/processor-<timestamp>.json` (`processor-soak-<timestamp>.json`).
Every loop is bounded in count and time; every process started here stops on every exit path.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from app.local import ProcessorWorker, embedded_settings
from backbone.events.catalog import CONSENT_EVENT
from backbone.settings import Settings
from bench import profile as spy
from bench.hsm import softhsm_settings
from bench.latency import run_latency
from bench.loops import demo_records, pre_produce, run_bare, run_handwritten
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
from bench.soak import SOAK_MARGIN_S, SoakResults, report_soak, run_soak
from bench.workers import run_checkpoint_cost, run_processor, run_quality_cost, run_workers

RATIO_TARGET = 0.5
HANDWRITTEN_TARGET = 0.8  # processor / hand-written no-audit loop (issue 16)
P99_TARGET_MS = 500.0
PKCS11_TARGET = 0.7  # keys on a PKCS#11 token: at least 70% of the file keyring's events/s (issue 26)
CHECKPOINT_TARGET = 0.95  # sealing may cost at most 5% of the data plane's events/s (issue 17)
QUALITY_TARGET = 0.90  # the quality rules may cost at most 10% of the data plane's events/s (issue 32)


@dataclass(slots=True)
class Results:
    events: int = 0
    consent_events: int = 0
    partitions: int = 0
    batch_size: int = 0
    produce_s: float = 0.0
    bare_events_per_s: float = 0.0
    bare_outputs: int = 0
    processor_events_per_s: float = 0.0
    processor_events_per_s_from_ready: float = 0.0
    ratio: float = 0.0
    worker_rss_mb_after_throughput: float | None = None
    offered_rate: float = 0.0
    offered_events: int = 0
    latency_samples: int = 0
    latency_ms: dict[str, float] = field(default_factory=dict)
    routed_ms: dict[str, float] = field(default_factory=dict)
    cpu_during_load: dict[str, float] = field(default_factory=dict)
    worker_rss_mb_after_latency: float | None = None
    notes: list[str] = field(default_factory=list)
    # honest baselines (issue 16): hand-written loops with no project code but the policy engine
    handwritten_loop_events_per_s: float = 0.0  # same work as the processor: one audit record per event
    handwritten_no_audit_events_per_s: float = 0.0
    # CPU (every thread) per event: the measure that holds on a loaded machine, where events/s follow
    # the CPU a process happens to get; the ratio is hand-written no-audit µs / processor µs
    processor_cpu_us_per_event: float | None = None
    handwritten_no_audit_cpu_us_per_event: float | None = None
    handwritten_loop_cpu_us_per_event: float | None = None
    cpu_ratio_processor_to_handwritten_no_audit: float | None = None
    # issue 30: the first no-audit baseline, kept beside the one above for comparison: every record
    # unkeyed to one topic, one flush at the end, nothing committed (not what a processor may send)
    handwritten_one_topic_no_audit_events_per_s: float | None = None
    handwritten_one_topic_no_audit_cpu_us_per_event: float | None = None
    router_loop_events_per_s: float = 0.0  # = bare_events_per_s: the project's Router in a bare loop
    offered_events_per_s: float = 0.0
    p50_produce_to_shared_ms: float | None = None
    p99_produce_to_shared_ms: float | None = None
    p99_produce_to_queryable_ms: float | None = None  # measured by bench.e2e (sinks into ClickHouse)
    # issue 17: the data plane in this process, sealing each batch and not (best of the rounds)
    dataplane_in_process_events_per_s: float = 0.0
    processor_no_checkpoints_events_per_s: float = 0.0  # the same data plane, in process, unsealed
    # with / without checkpoints, events/s: the median of the rounds' ratios (each round runs both back
    # to back, so a change in the machine's load falls on both; best-of each apart would pair two rounds)
    checkpoint_cost_ratio: float = 0.0
    checkpoint_cpu_ratio: float = 0.0  # the same from CPU µs per event, without / with: less disturbed by other work
    # issue 32: the in-process data plane with and without the quality rules, alternating rounds
    quality_rounds: list[dict[str, float]] = field(default_factory=list)
    with_quality_events_per_s: float = 0.0
    without_quality_events_per_s: float = 0.0
    quality_cost_ratio: float = 0.0  # median over rounds of with / without
    quality_cpu_ratio: float = 0.0
    checkpoint_rounds: list[dict[str, float]] = field(default_factory=list)
    checkpoints_sealed: int = 0  # by one sealed round
    # issue 16: one worker, then two in the same consumer group, each on the same events pre-produced again
    one_worker_events_per_s: float | None = None
    two_workers_events_per_s: float | None = None
    two_workers_ratio: float | None = None
    two_workers_partitions: list[int] | None = None  # raw partitions held by each member, if the broker says
    one_worker_cpu_s: list[float] | None = None  # CPU seconds of the worker while it decided the events
    two_workers_cpu_s: list[float] | None = None  # of each of the two: both working, and how evenly
    profile: dict | None = None  # bench.profile summary of the worker during the throughput run
    # issue 26: one worker with the file keyring, then one with its keys on a PKCS#11 token (SoftHSM2),
    # each on the same events pre-produced again
    file_keyring_events_per_s: float | None = None
    pkcs11_events_per_s: float | None = None
    pkcs11_ratio: float | None = None
    pkcs11_cpu_s: list[float] | None = None
    file_keyring_cpu_s: list[float] | None = None


def report(results: Results) -> Path:
    table = measures(f"processor benchmark: {results.events:,} raw events of the demo mix "
                     f"(+{results.consent_events:,} consent changes), {results.partitions} partitions")
    add_bare_loop(table, results.bare_events_per_s)
    table.add_row("processor (Faust worker, data plane), from first commit",
                  f"{results.processor_events_per_s:,.0f} events/s", "")
    table.add_row("processor, from \"enforcing\" (incl. group join)", f"{results.processor_events_per_s_from_ready:,.0f} events/s", "")
    table.add_row("ratio processor / bare", f"{results.ratio:.0%}", target(results.ratio >= RATIO_TARGET, f">= {RATIO_TARGET:.0%}"))
    if results.handwritten_no_audit_events_per_s:
        add_handwritten(table, results.handwritten_loop_events_per_s, results.handwritten_no_audit_events_per_s)
        add_handwritten_ratios(table, results.processor_events_per_s, results.handwritten_loop_events_per_s,
                               results.handwritten_no_audit_events_per_s, goal=HANDWRITTEN_TARGET)
    if results.processor_cpu_us_per_event and results.handwritten_no_audit_cpu_us_per_event:
        table.add_row("CPU µs per event (every thread): processor / hand-written with audit / no audit",
                      f"{results.processor_cpu_us_per_event:,.1f} / {results.handwritten_loop_cpu_us_per_event or 0:,.1f} / "
                      f"{results.handwritten_no_audit_cpu_us_per_event:,.1f}", "the measure that holds on a loaded machine")
        ratio = results.cpu_ratio_processor_to_handwritten_no_audit or 0.0
        table.add_row("processor / hand-written no-audit loop, from CPU per event", f"{ratio:.0%}",
                      target(ratio >= HANDWRITTEN_TARGET, f">= {HANDWRITTEN_TARGET:.0%}"))
    if results.handwritten_one_topic_no_audit_cpu_us_per_event:
        table.add_row("  first baseline (no audit, unkeyed to one topic, no flush/commit per batch)",
                      f"{results.handwritten_one_topic_no_audit_events_per_s or 0:,.0f} events/s, "
                      f"{results.handwritten_one_topic_no_audit_cpu_us_per_event:,.1f} µs", "for comparison only")
    if results.checkpoint_rounds:
        cost_ok = results.checkpoint_cost_ratio >= CHECKPOINT_TARGET
        table.add_row("data plane in this process, with checkpoints / without (best of "
                      f"{len(results.checkpoint_rounds)})",
                      f"{results.dataplane_in_process_events_per_s:,.0f} / {results.processor_no_checkpoints_events_per_s:,.0f} events/s",
                      f"{results.checkpoints_sealed} checkpoints")
        rounds = ", ".join(f"{r['with_checkpoints'] / r['without_checkpoints']:.0%}" for r in results.checkpoint_rounds)
        table.add_row("checkpoint cost: events/s with / without, median of rounds", f"{results.checkpoint_cost_ratio:.1%}",
                      target(cost_ok, f">= {CHECKPOINT_TARGET:.0%} (drop <= {1 - CHECKPOINT_TARGET:.0%})[/] rounds {rounds}"))
        table.add_row("  the same from CPU µs per event: without / with", f"{results.checkpoint_cpu_ratio:.1%}",
                      f"least {min(r['with_checkpoints_cpu_us_per_event'] for r in results.checkpoint_rounds):,.1f} / "
                      f"{min(r['without_checkpoints_cpu_us_per_event'] for r in results.checkpoint_rounds):,.1f} µs")
    if results.quality_rounds:
        rounds = ", ".join(f"{r['with_quality'] / r['without_quality']:.0%}" for r in results.quality_rounds)
        table.add_row(f"data plane with / without quality rules (best of {len(results.quality_rounds)})",
                      f"{results.with_quality_events_per_s:,.0f} / {results.without_quality_events_per_s:,.0f} events/s", "")
        table.add_row("quality rules cost: events/s with / without, median of rounds", f"{results.quality_cost_ratio:.1%}",
                      target(results.quality_cost_ratio >= QUALITY_TARGET, f">= {QUALITY_TARGET:.0%}[/] rounds {rounds}"))
        table.add_row("  the same from CPU µs per event: without / with", f"{results.quality_cpu_ratio:.1%}", "")
    if results.two_workers_events_per_s is not None:
        held = (f"raw partitions held {' + '.join(map(str, results.two_workers_partitions))}; "
                if results.two_workers_partitions else "")
        cpu = " + ".join(f"{seconds:.1f}" for seconds in results.two_workers_cpu_s or [])
        table.add_row("one worker / two workers (same events, pre-produced again)",
                      f"{results.one_worker_events_per_s or 0:,.0f} / {results.two_workers_events_per_s:,.0f} events/s",
                      f"{held}CPU s {sum(results.one_worker_cpu_s or []):.1f} / {cpu}")
        table.add_row("two workers / one worker", f"{results.two_workers_ratio or 0:.2f}x", "reported, not a target")
    if results.pkcs11_events_per_s is not None:
        table.add_row("one worker, file keyring / keys on a PKCS#11 token (SoftHSM2)",
                      f"{results.file_keyring_events_per_s or 0:,.0f} / {results.pkcs11_events_per_s:,.0f} events/s", "")
        table.add_row("PKCS#11 token / file keyring", f"{results.pkcs11_ratio or 0:.0%}",
                      target((results.pkcs11_ratio or 0) >= PKCS11_TARGET, f">= {PKCS11_TARGET:.0%}"))
    add_offered(table, results.offered_rate, results.offered_events)
    add_latency(table, "produce -> shared", results.latency_ms, P99_TARGET_MS)
    table.add_row("  of which send -> processor's produce p50 / p99",
                  f"{results.routed_ms.get('p50', float('nan')):,.0f} / {results.routed_ms.get('p99', float('nan')):,.0f} ms", "")
    if results.cpu_during_load:
        table.add_row("CPU during the load: machine busy / worker",
                      f"{results.cpu_during_load['machine_busy_pct']:.0f}% / {results.cpu_during_load['worker_pct_of_a_core']:.0f}% of a core", "")
    table.add_row("latency samples (released records)", f"{results.latency_samples:,}", "")
    table.add_row("worker RSS after throughput / after latency",
                  f"{results.worker_rss_mb_after_throughput or 0:,.0f} / {results.worker_rss_mb_after_latency or 0:,.0f} MiB", "")
    console.print(table)
    if results.profile is not None:
        fields = ("samples", "rate", "events", "recorded_s", "worker_cpu_s", "behind", "stages", "threads")
        recorded = spy.Profile(**{k: results.profile[k] for k in fields})
        console.print(spy.table(recorded, f"py-spy --gil profile of the worker in the throughput run ({recorded.samples:,} "
                                          f"samples at {recorded.rate} Hz, {recorded.events:,} events)"))
        if recorded.behind:
            console.print(f"note: py-spy: {recorded.behind}")
    print_notes(results.notes)
    return save("processor", results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000, help="events pre-produced for the throughput runs")
    parser.add_argument("--population", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=5_000.0, help="offered load of the latency run, events/s")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of the latency run")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=None, help="BACKBONE_CONSUMER_BATCH_SIZE of the worker")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="bound of each throughput run")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--workers", type=int, default=2, choices=(1, 2),
                        help="2: also one worker, then two, on the same events pre-produced again (1: skip)")
    parser.add_argument("--checkpoint-rounds", type=int, default=3,
                        help="in-process data plane runs with and without checkpoints, each (0: skip)")
    parser.add_argument("--quality-rounds", type=int, default=3,
                        help="in-process data plane runs with and without the quality rules, each (0: skip)")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="record the worker of the throughput run with py-spy into DIR and summarise it")
    parser.add_argument("--key-provider", choices=("file", "both"), default="both",
                        help="both: also one worker with its keys on a SoftHSM2 token beside one with the file keyring")
    parser.add_argument("--soak", action="store_true", help="run the soak instead: memory of every process over time")
    parser.add_argument("--soak-seconds", type=float, default=600.0)
    parser.add_argument("--soak-rate", type=float, default=2_000.0)
    parser.add_argument("--soak-interval", type=float, default=10.0, help="seconds between soak samples")
    args = parser.parse_args()
    if args.soak:
        with clean_stop(deadline_s=args.soak_seconds + SOAK_MARGIN_S):
            soak = _soak(args)
        report_soak(soak)
        return
    with clean_stop():
        results = _throughput(args)
    report(results)


def _soak(args: argparse.Namespace) -> SoakResults:
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as directory, \
            embedded_settings(Path(directory), args.partitions) as settings:
        return run_soak(settings, args.soak_rate, args.soak_seconds, args.soak_interval, args.population, args.batch_size)


def _throughput(args: argparse.Namespace) -> Results:
    results = Results()
    results.notes.append(LOADED_MACHINE)
    records = demo_records(1, args.population, args.events)
    results.consent_events = sum(1 for event_type, _ in records if event_type == CONSENT_EVENT)
    with tempfile.TemporaryDirectory(prefix="bench-processor-") as directory, \
            embedded_settings(Path(directory), args.partitions) as settings:
        results.partitions = settings.kafka_partitions
        ends, results.produce_s = pre_produce(settings, records)
        results.events = sum(ends.values())
        console.print(f"pre-produced {len(records):,} events in {results.produce_s:.1f}s; bare loop ...")
        results.bare_events_per_s, routed, results.bare_outputs = run_bare(settings, ends, args.max_seconds)
        assert routed == results.events, f"bare loop routed {routed} of {results.events}"
        results.router_loop_events_per_s = results.bare_events_per_s
        console.print("hand-written loops (with the processor's audit record, and without audit) ...")
        with_audit: dict[str, float] = {}
        no_audit: dict[str, float] = {}
        results.handwritten_loop_events_per_s = run_handwritten(settings, ends, args.max_seconds, audit=True, cpu=with_audit)
        results.handwritten_no_audit_events_per_s = run_handwritten(settings, ends, args.max_seconds, audit=False, cpu=no_audit)
        results.handwritten_loop_cpu_us_per_event = with_audit.get("us_per_event")
        one_topic: dict[str, float] = {}
        results.handwritten_one_topic_no_audit_events_per_s = run_handwritten(settings, ends, args.max_seconds, audit=False,
                                                                             cpu=one_topic, same_outputs=False)
        results.handwritten_one_topic_no_audit_cpu_us_per_event = one_topic.get("us_per_event")
        results.handwritten_no_audit_cpu_us_per_event = no_audit.get("us_per_event")
        if args.checkpoint_rounds:
            console.print("the data plane in this process, with and without checkpoints ...")
            rounds = results.checkpoint_rounds = run_checkpoint_cost(settings, ends, args.max_seconds, args.checkpoint_rounds)
            results.dataplane_in_process_events_per_s = max(r["with_checkpoints"] for r in rounds)
            results.processor_no_checkpoints_events_per_s = max(r["without_checkpoints"] for r in rounds)
            results.checkpoint_cost_ratio = statistics.median(r["with_checkpoints"] / r["without_checkpoints"] for r in rounds)
            results.checkpoint_cpu_ratio = statistics.median(
                r["without_checkpoints_cpu_us_per_event"] / r["with_checkpoints_cpu_us_per_event"] for r in rounds)
            results.checkpoints_sealed = int(rounds[0]["checkpoints_sealed"])
        if args.quality_rounds:
            console.print("the data plane in this process, with and without the quality rules ...")
            rounds = results.quality_rounds = run_quality_cost(settings, ends, args.max_seconds, args.quality_rounds)
            results.with_quality_events_per_s = max(r["with_quality"] for r in rounds)
            results.without_quality_events_per_s = max(r["without_quality"] for r in rounds)
            results.quality_cost_ratio = statistics.median(r["with_quality"] / r["without_quality"] for r in rounds)
            results.quality_cpu_ratio = statistics.median(
                r["without_quality_cpu_us_per_event"] / r["with_quality_cpu_us_per_event"] for r in rounds)
        extra = {"consumer_batch_size": str(args.batch_size)} if args.batch_size else {}
        worker = ProcessorWorker(settings, "bench-worker", **extra)
        results.batch_size = args.batch_size or settings.consumer_batch_size
        recorder: spy.Recorder | None = None

        def record() -> None:
            nonlocal recorder
            assert worker.pid is not None
            recorder = spy.Recorder(worker.pid, args.profile / "worker.pyspy.txt")

        try:
            console.print(f"bare loop {results.bare_events_per_s:,.0f} events/s; processor ...")
            try:
                steady, from_ready, worker_cpu = run_processor(settings, worker, ends, args.max_seconds,
                                                               on_ready=record if args.profile else None)
            finally:
                if recorder is not None:
                    recorder.stop()
            if recorder is not None:
                summary = recorder.summarise(results.events)
                results.profile = spy.as_json(summary)
                results.notes.append(f"the worker's throughput run was recorded by py-spy (raw stacks: {recorder.output}); "
                                     "its events/s are of a sampled process")
            results.processor_events_per_s, results.processor_events_per_s_from_ready = steady, from_ready
            results.processor_cpu_us_per_event = sum(worker_cpu) / results.events * 1e6
            if results.handwritten_no_audit_cpu_us_per_event:
                results.cpu_ratio_processor_to_handwritten_no_audit = (
                    results.handwritten_no_audit_cpu_us_per_event / results.processor_cpu_us_per_event)
            results.ratio = steady / results.bare_events_per_s
            results.worker_rss_mb_after_throughput = worker.rss_mb()
            if not args.skip_latency:
                console.print(f"processor {steady:,.0f} events/s; latency at {args.rate:,.0f} events/s for {args.seconds:g}s ...")
                offered, sent, reader, results.cpu_during_load = run_latency(settings, worker, args.rate, args.seconds, seed=2,
                                                    population=args.population)
                results.offered_rate, results.offered_events = offered, sent
                results.latency_samples = len(reader.latencies_ms)
                results.latency_ms = percentiles(reader.latencies_ms)
                results.offered_events_per_s = offered
                results.p50_produce_to_shared_ms = results.latency_ms.get("p50")
                results.p99_produce_to_shared_ms = results.latency_ms.get("p99")
                results.routed_ms = percentiles(reader.routed_ms)
                results.worker_rss_mb_after_latency = worker.rss_mb()
                if reader.unmatched:
                    results.notes.append(f"{reader.unmatched} shared records read in the latency run were of earlier "
                                         "events (the reader starts at the broker's reported end, which lags on Tansu)")
        finally:
            worker.stop()
        if args.workers == 2:
            console.print(f"one worker, then two, on the {len(records):,} events pre-produced again ...")
            results.one_worker_events_per_s, results.one_worker_cpu_s, _ = run_workers(
                settings, records, 1, args.max_seconds, args.batch_size)
            results.two_workers_events_per_s, results.two_workers_cpu_s, results.two_workers_partitions = run_workers(
                settings, records, 2, args.max_seconds, args.batch_size)
            results.two_workers_ratio = results.two_workers_events_per_s / results.one_worker_events_per_s
        if args.key_provider == "both":
            _key_providers(results, settings, records, Path(directory) / "softhsm", args)
    return results


def _key_providers(results: Results, settings: Settings, records: list[tuple[str, dict]], directory: Path,
                   args: argparse.Namespace) -> None:
    """One worker with the file keyring, then one with the keys on a SoftHSM2 token, each on the events
    pre-produced again (skipped, with the reason in the notes, without SoftHSM2)."""
    token = softhsm_settings(settings, directory)
    if isinstance(token, str):
        results.notes.append(f"PKCS#11 round skipped: {token}")
        return
    console.print(f"one worker with the file keyring, then one with its keys on a PKCS#11 token, {len(records):,} events each ...")
    results.file_keyring_events_per_s, results.file_keyring_cpu_s, _ = run_workers(settings, records, 1, args.max_seconds, args.batch_size)
    results.pkcs11_events_per_s, results.pkcs11_cpu_s, _ = run_workers(settings, records, 1, args.max_seconds, args.batch_size, **token)
    results.pkcs11_ratio = results.pkcs11_events_per_s / results.file_keyring_events_per_s


if __name__ == "__main__":
    main()
