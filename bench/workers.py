"""The processor itself under load: real `backbone process` workers (one, or several started together
in the processor's consumer group) timed until their committed offsets reach the ends of the raw
partitions, and the processor's `DataPlane` run in this process with and without sealing each
batch with a signed checkpoint.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from confluent_kafka import Consumer, TopicPartition

from app.local import ProcessorWorker
from backbone.quality.checks import QualityMonitor
from backbone.settings import Settings
from bench.loops import Ends, build_router, pre_produce
from bench.processes import cpu_seconds
from bench.results import console
from processors.app import APP_ID
from processors.dataplane import DataPlane

DATAPLANE_GROUP = f"{APP_ID}-dataplane"


# -- workers ------------------------------------------------------------------------------------


def committed_total(consumer: Consumer, partitions: list[TopicPartition], ends: Ends, timeout: float) -> int:
    """Raw events the processor has committed (capped at each partition's end)."""
    total = 0
    for tp in consumer.committed(partitions, timeout=timeout):
        if tp.offset >= 0:
            total += min(tp.offset, ends[(tp.topic, tp.partition)])
    return total


def start_together(workers: list[ProcessorWorker]) -> None:
    """Start every worker at once (each waits for its own "enforcing"), so they join the consumer
    group together rather than one taking every partition and the next forcing a rebalance."""
    errors: list[BaseException] = []

    def start(worker: ProcessorWorker) -> None:
        try:
            worker.start()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(worker,), name=f"bench-start-{index}", daemon=True)
               for index, worker in enumerate(workers)]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join(timeout=120)
    finally:
        # On Ctrl-C the caller stops the workers: first let each start() have spawned its child.
        deadline = time.monotonic() + 5
        while any(t.is_alive() and w.pid is None for t, w in zip(threads, workers)) and time.monotonic() < deadline:
            time.sleep(0.05)
    if errors:
        raise errors[0]
    if any(thread.is_alive() for thread in threads):
        raise AssertionError("a worker was not ready within 120 s")


def run_processor(settings: Settings, worker: ProcessorWorker | list[ProcessorWorker], ends: Ends, max_seconds: float,
                  base: Ends | None = None, on_ready: Callable[[], None] | None = None) -> tuple[float, float, list[float]]:
    """(events/s from the first commit, events/s from "enforcing", CPU seconds of each worker
    meanwhile) until every raw partition is committed to its end; `worker` may be several, started
    together in the processor's group. `base`: offsets the group had already committed (a second
    pre-produced batch)."""
    workers = worker if isinstance(worker, list) else [worker]
    base = base or {}
    target = sum(end - base.get(tp, 0) for tp, end in ends.items())
    partitions = [TopicPartition(topic, partition) for topic, partition in ends]
    watcher = Consumer(settings.consumer_config(DATAPLANE_GROUP))  # never subscribes: only reads the group's offsets
    already = sum(min(offset, ends[tp]) for tp, offset in base.items() if tp in ends)
    try:
        start_together(workers)
        ready = time.perf_counter()
        cpu_at_ready = [cpu_seconds(each.pid) or 0.0 if each.pid else 0.0 for each in workers]
        if on_ready is not None:
            on_ready()
        first: tuple[float, int] | None = None
        deadline = time.monotonic() + max_seconds
        done = 0
        while time.monotonic() < deadline:
            done = committed_total(watcher, partitions, ends, settings.kafka_timeout_s) - already
            now = time.perf_counter()
            if done and first is None:
                first = (now, done)
            if done >= target:
                break
            for each in workers:
                if not each.alive():
                    raise AssertionError(f"worker exited: {each.tail()}")
            time.sleep(0.05)
        finished = time.perf_counter()
        cpu = [(cpu_seconds(each.pid) or 0.0) - at if each.pid else 0.0 for each, at in zip(workers, cpu_at_ready)]
    finally:
        watcher.close()
    assert done >= target, f"processor committed {done} of {target} raw events within {max_seconds:g}s"
    assert first is not None
    steady = (target - first[1]) / (finished - first[0]) if finished > first[0] and target > first[1] else float("nan")
    return steady, target / (finished - ready), cpu


def group_committed(settings: Settings, partitions: list[tuple[str, int]]) -> Ends:
    """The processor group's committed offsets of `partitions` (0 where none)."""
    watcher = Consumer(settings.consumer_config(DATAPLANE_GROUP))
    try:
        committed = watcher.committed([TopicPartition(t, p) for t, p in partitions], timeout=settings.kafka_timeout_s)
    finally:
        watcher.close()
    return {(tp.topic, tp.partition): max(0, tp.offset) for tp in committed}


def group_assignment(settings: Settings) -> list[int] | None:
    """Raw partitions held by each member of the processor's group, or None if the broker does not
    say (Tansu 0.6 answers DescribeGroups with no members)."""
    from confluent_kafka.admin import AdminClient

    try:
        admin = AdminClient(settings.kafka_config())
        described = admin.describe_consumer_groups([DATAPLANE_GROUP], request_timeout=settings.kafka_timeout_s)
        group = described[DATAPLANE_GROUP].result(timeout=settings.kafka_timeout_s)
        held = sorted((sum(1 for tp in member.assignment.topic_partitions if tp.topic.startswith("raw."))
                       for member in group.members), reverse=True)
        return held or None
    except Exception:  # noqa: BLE001 - a figure for the report only
        return None


def run_workers(settings: Settings, records: list[tuple[str, dict]], count: int, max_seconds: float,
                batch_size: int | None, **settings_env: str) -> tuple[float, list[float], list[int] | None]:
    """events/s of `count` worker processes started together in the processor's consumer group, on
    `records` pre-produced again while no worker runs (the group's committed offsets are the base);
    the CPU seconds each worker spent meanwhile (do both work, and how evenly); the raw partitions
    each member held, if the broker says. `settings_env`: further worker settings (e.g. the key provider)."""
    ends, _ = pre_produce(settings, [(event_type, dict(record, event_id=None)) for event_type, record in records])
    base = group_committed(settings, list(ends))
    extra = {"consumer_batch_size": str(batch_size)} if batch_size else {}
    extra.update(settings_env)
    tag = f"-{settings_env['key_provider']}" if "key_provider" in settings_env else ""
    workers = [ProcessorWorker(settings, f"bench-workers-{count}{tag}-{index}", **extra) for index in range(count)]
    try:
        rate, _, cpu = run_processor(settings, workers, ends, max_seconds, base=base)
        return rate, cpu, group_assignment(settings)
    finally:
        for worker in workers:
            worker.stop()


# -- the data plane in this process, with and without checkpoints ---------------------------------


def run_dataplane(settings: Settings, ends: Ends, max_seconds: float, sealed: bool,
                  quality: bool = False) -> tuple[float, float, int]:
    """(events/s, CPU µs per event, checkpoints sealed) of the processor's `DataPlane` in this
    process, from the start of its first batch to the commit of the last, reading `ends` with a
    consumer group of its own. The CPU time is this process's (every thread: librdkafka's too;
    the rest of the benchmark sleeps meanwhile), which other work on the machine disturbs less.
    `sealed=False` passes `checkpoints=lambda: None`: the same work, audit records produced unsealed.
    The same Router, engine, keyring and consent table as a worker builds; outputs go to the real
    output topics (the audit records of a sealed round to its own writer's chain). `quality=True`
    checks every raw event against the schemas' quality rules, as a worker does by default."""
    enforcement, router = build_router(settings)
    router.quality = QualityMonitor(enforcement.quality.values()) if quality else None
    target = sum(ends.values())
    first: list[float] = []

    def before_batch() -> None:
        if not first:
            first.extend((time.perf_counter(), time.process_time()))

    plane = DataPlane(settings, router, enforcement.consent, group_id=f"bench-dataplane-{time.monotonic_ns()}",
                      before_batch=before_batch, checkpoints=None if sealed else (lambda: None))
    plane.start()
    try:
        deadline = time.monotonic() + max_seconds
        while plane.consumed < target and time.monotonic() < deadline:
            if plane.error is not None or not plane.alive:
                raise AssertionError(f"data plane stopped: {plane.error}")
            time.sleep(0.005)
        finished, cpu = time.perf_counter(), time.process_time()
    finally:
        plane.stop()
    assert plane.consumed >= target, f"data plane decided {plane.consumed} of {target} raw events within {max_seconds:g}s"
    return target / (finished - first[0]), (cpu - first[1]) / target * 1e6, plane.checkpoints_sealed


def run_checkpoint_cost(settings: Settings, ends: Ends, max_seconds: float, rounds: int) -> list[dict[str, float]]:
    """Alternating sealed / unsealed data-plane runs (the order flips each round, so a drift in the
    machine's load falls on both); one dict per round."""
    out: list[dict[str, float]] = []
    for index in range(rounds):
        figures: dict[str, float] = {}
        for sealed in ((True, False) if index % 2 == 0 else (False, True)):
            rate, cpu_us, checkpoints = run_dataplane(settings, ends, max_seconds, sealed)
            name = "with_checkpoints" if sealed else "without_checkpoints"
            figures[name], figures[f"{name}_cpu_us_per_event"] = rate, cpu_us
            if sealed:
                figures["checkpoints_sealed"] = checkpoints
        console.print(f"  round {index + 1}: with checkpoints {figures['with_checkpoints']:,.0f} events/s "
                      f"({figures['with_checkpoints_cpu_us_per_event']:,.1f} CPU µs/event), without "
                      f"{figures['without_checkpoints']:,.0f} events/s ({figures['without_checkpoints_cpu_us_per_event']:,.1f})")
        out.append(figures)
    return out


def run_quality_cost(settings: Settings, ends: Ends, max_seconds: float, rounds: int) -> list[dict[str, float]]:
    """Alternating data-plane runs with and without the quality rules (both sealed; the order flips
    each round); one dict per round."""
    out: list[dict[str, float]] = []
    for index in range(rounds):
        figures: dict[str, float] = {}
        for quality in ((True, False) if index % 2 == 0 else (False, True)):
            rate, cpu_us, _ = run_dataplane(settings, ends, max_seconds, True, quality=quality)
            name = "with_quality" if quality else "without_quality"
            figures[name], figures[f"{name}_cpu_us_per_event"] = rate, cpu_us
        console.print(f"  round {index + 1}: with quality rules {figures['with_quality']:,.0f} events/s "
                      f"({figures['with_quality_cpu_us_per_event']:,.1f} CPU µs/event), without "
                      f"{figures['without_quality']:,.0f} events/s ({figures['without_quality_cpu_us_per_event']:,.1f})")
        out.append(figures)
    return out
