"""The processor's soak: one worker at a steady offered load for minutes, the memory of every process
(broker, registry, worker, this one), events decided and lag sampled at an interval, and the growth
of each process's memory from the first minute's median to the last minute's.
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from rich.table import Table

from app.local import ProcessorWorker
from backbone.clickhouse.client import make_client
from backbone.events.catalog import CONSENT_EVENT, load_catalog
from backbone.policy.agreements import load_agreements
from backbone.settings import Settings
from backbone.stack.embedded import broker_engine
from bench.loops import MixProducer, demo_records
from bench.pipeline import Sinks
from bench.processes import cpu_seconds, rss_mb, stack_children
from bench.results import console, print_notes, save, target
from bench.soak_memory import sinks_memory
from bench.workers import DATAPLANE_GROUP

SOAK_GROWTH_TARGET_PCT = 10.0
# The load ends early once the broker holds this much (a note says so): on a shared machine a stalled
# embedded broker fed 2,000 events/s for an hour would hold many GiB and tell nothing more.
SOAK_BROKER_CAP_MB = 4096.0
# ... and once fewer than a tenth of the offered events were decided for this long: the pipeline stalled.
SOAK_STALL_S = 180.0
SOAK_MARGIN_S = 240.0  # start-up, drain and report on top of --soak-seconds, then the run is stopped


@dataclass(slots=True)
class SoakResults:
    rate: float = 0.0
    seconds: float = 0.0
    interval_s: float = 0.0
    partitions: int = 0
    offered_events: int = 0  # consent changes included
    offered_raw_events: int = 0  # what the processor decides
    offered_events_per_s: float = 0.0
    decided_events: int = 0
    final_lag: int = 0
    growth_window_s: float = 60.0  # growth compares the medians of the first and the last window
    drained_s: float | None = None  # after the load ended, until every raw event was committed
    decided_per_s_by_minute: list[float] = field(default_factory=list)  # each whole minute of the load
    slowest_minute_ratio: float | None = None  # the slowest minute's decided/s over the offered rate (goal >= 0.9)
    growth_from_s: float = 0.0  # the last part of the load, over which rss_growth_pct is counted
    rss_growth_pct: dict[str, float | None] = field(default_factory=dict)  # per process, over the last part (goal < 10%)
    sinks: bool = False  # every recipient's sink and the audit sink landed into chDB in the bench process
    landed_rows: dict[str, int] = field(default_factory=dict)  # by the sinks, when the drain ended
    series: list[dict[str, float | int | None]] = field(default_factory=list)  # one sample per interval
    # with sinks, each sample also holds chDB's memory figures and the C heap's (bench/soak_memory.py), and
    # the Python object types whose count grew most from the first sample to the last
    py_object_growth: dict[str, int] = field(default_factory=dict)
    rss_mb: dict[str, dict[str, float | None]] = field(default_factory=dict)  # per process: first/last/max/growth
    machine: str = "shared 2-core development machine, other engineers' tests running: figures are of a loaded machine"
    broker: str = field(default_factory=broker_engine)  # the embedded broker that ran: tansu or disk (BACKBONE_EMBEDDED_BROKER)
    notes: list[str] = field(default_factory=list)


def recycled(records: list[tuple[str, dict]]) -> Iterator[tuple[str, dict]]:
    """`records` round and round, each send a fresh copy with a new event id: a stream of any length
    that holds no more than the pool in this process's memory."""
    while True:
        for event_type, record in records:
            yield event_type, dict(record, event_id=None)


class SoakSampler:
    """RSS of each process, events decided (the group's commits) and lag, sampled on demand."""

    def __init__(self, settings: Settings, worker: ProcessorWorker, mix: MixProducer, chdb: Any = None) -> None:
        self.settings = settings
        self.chdb = chdb  # with sinks: a client of their chDB, for its memory figures
        self.first_objects: Counter[str] | None = None
        self.last_objects: Counter[str] | None = None
        self.worker = worker
        self.mix = mix
        # with sinks, this process is every recipient's sink and the audit sink (threads) beside the producers
        self.pids = {**stack_children(), "worker": worker.pid, "sinks" if chdb is not None else "bench": os.getpid()}
        self.series: list[dict[str, float | int | None]] = []
        self._watcher = Consumer(settings.consumer_config(DATAPLANE_GROUP))  # reads offsets only
        self._started = time.perf_counter()
        self._last: tuple[float, int, float | None] | None = None

    def committed(self) -> int:
        raw = [tp for tp in self.mix.ends if tp[0].startswith("raw.")]
        if not raw:
            return 0
        committed = self._watcher.committed([TopicPartition(t, p) for t, p in raw], timeout=self.settings.kafka_timeout_s)
        return sum(max(0, tp.offset) for tp in committed)

    def acknowledged(self) -> int:
        return sum(end for tp, end in self.mix.ends.items() if tp[0].startswith("raw."))

    def sample(self, offered: int, draining: bool = False) -> dict[str, float | int | None]:
        now = time.perf_counter()
        decided, acked = self.committed(), self.acknowledged()
        worker_cpu = cpu_seconds(self.worker.pid) if self.worker.pid else None
        row: dict[str, float | int | None] = {"t_s": round(now - self._started, 1), "offered": offered,
                                              "decided": decided, "lag": max(0, acked - decided), "draining": draining}
        if self._last is not None:
            at, before, cpu = self._last
            row["decided_per_s"] = round((decided - before) / (now - at), 1)
            if worker_cpu is not None and cpu is not None:
                row["worker_cpu_pct"] = round(100 * (worker_cpu - cpu) / (now - at), 1)
        self._last = (now, decided, worker_cpu)
        for name, pid in self.pids.items():
            row[f"rss_{name}_mb"] = rss_mb(pid)
        if self.chdb is not None:
            row.update(sinks_memory(self.chdb))
            objects = Counter(type(o).__name__ for o in gc.get_objects())
            row["py_objects"] = sum(objects.values())
            if self.first_objects is None:
                self.first_objects = objects
            self.last_objects = objects
        self.series.append(row)
        return row

    def close(self) -> None:
        self._watcher.close()


def sinks_line(row: dict[str, float | int | None]) -> str:
    """The sinks' memory beside their RSS, when sampled: chDB's tracker, jemalloc's resident pages, glibc's heap."""
    if "jemalloc_resident_mb" not in row:
        return ""
    return (f"  chDB tracked {row.get('chdb_MemoryTracking_mb') or 0:,.0f}, jemalloc resident {row['jemalloc_resident_mb'] or 0:,.0f}, "
            f"malloc used {row.get('malloc_used_mb') or 0:,.0f} free {row.get('malloc_free_mb') or 0:,.0f}, parts {row.get('chdb_active_parts')}")


def growth(series: list[dict[str, float | int | None]], key: str, window_s: float = 60.0) -> dict[str, float | None]:
    """first / last / max of `key` over the run, and growth % from the median of the load's first
    `window_s` to the median of its last (samples after the load ended are left out of both)."""
    values = [(row["t_s"], row[key]) for row in series if row.get(key) is not None and not row.get("draining")]
    if not values:
        return {"first": None, "last": None, "max": None, "growth_pct": None}
    end = values[-1][0]
    head = [v for t, v in values if t <= values[0][0] + window_s]
    tail = [v for t, v in values if t >= end - window_s]
    first_median, last_median = statistics.median(head), statistics.median(tail)
    return {"first": values[0][1], "last": values[-1][1], "max": max(v for _, v in values),
            "first_minute_median": first_median, "last_minute_median": last_median,
            "growth_pct": 100 * (last_median - first_median) / first_median if first_median else None}


def per_minute(series: list[dict[str, float | int | None]]) -> list[float]:
    """Events decided per second in each whole minute of the load (samples after it ended left out),
    from the samples nearest each minute's start and end."""
    loaded = [(float(row["t_s"] or 0), int(row["decided"] or 0)) for row in series if not row.get("draining")]
    if len(loaded) < 2:
        return []
    rates = []
    for minute in range(int((loaded[-1][0] - loaded[0][0]) // 60)):
        start = min(loaded, key=lambda sample: abs(sample[0] - (loaded[0][0] + 60 * minute)))
        end = min(loaded, key=lambda sample: abs(sample[0] - (loaded[0][0] + 60 * (minute + 1))))
        if end[0] > start[0]:
            rates.append(round((end[1] - start[1]) / (end[0] - start[0]), 1))
    return rates


def stalled(series: list[dict[str, float | int | None]], rate: float, window_s: float = SOAK_STALL_S) -> bool:
    """True once the load's last `window_s` decided fewer than a tenth of `rate` events/s (a run of
    at least `window_s` under load)."""
    loaded = [(float(row["t_s"] or 0), int(row["decided"] or 0)) for row in series if not row.get("draining")]
    if not loaded or loaded[-1][0] - loaded[0][0] < window_s:
        return False
    end_t, end_decided = loaded[-1]
    start_t, start_decided = min(loaded, key=lambda sample: abs(sample[0] - (end_t - window_s)))
    return end_t > start_t and (end_decided - start_decided) / (end_t - start_t) < 0.1 * rate


def late_growth(series: list[dict[str, float | int | None]], key: str, from_s: float, window_s: float) -> float | None:
    """Growth % of `key` over the load's last part: from the median of the `window_s` after `from_s`
    to the median of the load's last `window_s` (the issue's "over the last 50 minutes" of an hour)."""
    values = [(float(row["t_s"] or 0), float(row[key])) for row in series
              if row.get(key) is not None and not row.get("draining")]  # type: ignore[arg-type]
    if not values:
        return None
    end = values[-1][0]
    head = [v for t, v in values if from_s <= t <= from_s + window_s]
    tail = [v for t, v in values if t >= end - window_s]
    if not head or not tail:
        return None
    first = statistics.median(head)
    return round(100 * (statistics.median(tail) - first) / first, 1) if first else None


def run_soak(settings: Settings, rate: float, seconds: float, interval: float, population: int,
             batch_size: int | None, sinks: bool = True) -> SoakResults:
    """`rate` events/s of the demo mix for `seconds` through one real worker, sampled every `interval` s;
    with `sinks`, every recipient's sink and the audit sink land into chDB in this process meanwhile."""
    results = SoakResults(rate=rate, seconds=seconds, interval_s=interval, partitions=settings.kafka_partitions)
    pool = demo_records(3, population, int(min(rate * seconds, 20_000)))  # sent round and round with fresh ids
    extra = {"consumer_batch_size": str(batch_size)} if batch_size else {}
    worker = ProcessorWorker(settings, "bench-soak-worker", **extra)
    mix: MixProducer | None = None
    sampler: SoakSampler | None = None
    landing: Sinks | None = None
    chdb: Any = None
    try:
        worker.start()
        if sinks:
            landed = settings.model_copy(update={"clickhouse_dsn": f"chdb://{(settings.data_dir / 'clickhouse').resolve()}",
                                                 "clickhouse_database_prefix": ""})
            charter = load_agreements(landed.agreements_dir, load_catalog(landed.schemas_dir))
            chdb = make_client(landed.clickhouse_dsn or "")
            landing = Sinks(landed, charter, chdb).start()
        mix = MixProducer(settings, {record["provider"] for _, record in pool})
        sampler = SoakSampler(settings, worker, mix, chdb)
        header = f"{'t s':>6} {'offered':>9} {'decided':>9} {'/s':>7} {'lag':>7} {'worker cpu':>10}  " + \
                 "  ".join(f"{'RSS ' + name:>14}" for name in sampler.pids)
        console.print(f"soak: {rate:,.0f} events/s for {seconds:g} s on the {results.broker} broker; sample every {interval:g} s (MiB)")
        console.print(header)

        def show(row: dict[str, float | int | None]) -> None:
            rss = "  ".join(f"{(row.get(f'rss_{name}_mb') or 0):>14,.0f}" for name in sampler.pids)  # type: ignore[union-attr]
            console.print(f"{row['t_s']:>6} {row['offered']:>9,} {row['decided']:>9,} {row.get('decided_per_s') or 0:>7,.0f} "
                          f"{row['lag']:>7,} {row.get('worker_cpu_pct') or 0:>9,.0f}%  {rss}{sinks_line(row)}", highlight=False)

        show(sampler.sample(0))
        total = int(rate * seconds)
        step = max(1, int(rate / 200))  # pace in batches of 5 ms worth of events
        stream = recycled(pool)
        started = time.perf_counter()
        next_sample = started + interval
        sent = raw = 0
        while sent < total and time.perf_counter() - started < seconds + 30:  # bounded in count and time
            ahead = started + sent / rate - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)
            for _ in range(min(step, total - sent)):
                event_type, record = next(stream)
                mix.send(event_type, record)
                sent += 1
                raw += event_type != CONSENT_EVENT
            for producer in mix.producers.values():
                producer.poll(0)
            if time.perf_counter() >= next_sample:
                if not worker.alive():
                    raise AssertionError(f"worker exited: {worker.tail()}")
                if landing is not None:
                    landing.check()  # raises if a sink thread died
                row = sampler.sample(sent)
                show(row)
                next_sample += interval
                if float(row.get("rss_broker_mb") or 0) > SOAK_BROKER_CAP_MB:
                    results.notes.append(f"the load ended at {row['t_s']} s of {seconds:g} s: the broker held more than "
                                         f"{SOAK_BROKER_CAP_MB:,.0f} MiB")
                    break
                if stalled(sampler.series, rate):
                    results.notes.append(f"the load ended at {row['t_s']} s of {seconds:g} s: fewer than a tenth of the "
                                         f"offered events were decided for {SOAK_STALL_S:g} s (the pipeline stalled)")
                    break
        results.offered_events, results.offered_raw_events = sent, raw
        results.offered_events_per_s = sent / (time.perf_counter() - started)
        ended = time.perf_counter()
        for producer in mix.producers.values():
            producer.flush(60)
        # Drain: until every acknowledged raw event is committed (bounded), sampling on.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if sampler.committed() >= sampler.acknowledged():
                results.drained_s = time.perf_counter() - ended
                break
            if time.perf_counter() >= next_sample:
                show(sampler.sample(sent, draining=True))
                next_sample += interval
            time.sleep(0.2)
        if landing is not None:
            results.sinks = True
            audit_rows, shared_rows = landing.landed()
            results.landed_rows = {"audit": audit_rows, "shared_or_dead_lettered": shared_rows}
        last = sampler.sample(sent, draining=True)
        show(last)
        results.decided_events, results.final_lag = int(last["decided"] or 0), int(last["lag"] or 0)
        results.series = sampler.series
        if sampler.first_objects is not None and sampler.last_objects is not None:
            grown = sampler.last_objects - sampler.first_objects
            results.py_object_growth = dict(grown.most_common(10))
        loaded = [row for row in sampler.series if not row.get("draining") and row.get("decided_per_s") is not None]
        tail = [float(row["decided_per_s"] or 0) for row in loaded if float(row["t_s"] or 0) >= float(loaded[-1]["t_s"] or 0) - 60]
        if tail and statistics.median(tail) < 0.9 * rate:
            results.notes.append(f"over the load's last minute {statistics.median(tail):,.0f} events/s were decided against "
                                 f"{rate:,.0f} offered: the pipeline fell behind (worker CPU in the table says whether "
                                 "the worker was busy or waiting)")
        # a minute each, or a quarter of a shorter run (windows of a short run would overlap)
        results.growth_window_s = min(60.0, seconds / 4)
        results.rss_mb = {name: growth(sampler.series, f"rss_{name}_mb", results.growth_window_s) for name in sampler.pids}
        results.decided_per_s_by_minute = per_minute(sampler.series)
        if results.decided_per_s_by_minute:
            results.slowest_minute_ratio = round(min(results.decided_per_s_by_minute) / rate, 3)
        load_s = float(loaded[-1]["t_s"] or 0) if loaded else seconds  # shorter than `seconds` if it ended early
        results.growth_from_s = round(load_s / 6, 1)  # minute 10 of an hour: growth over the last 50 minutes
        results.rss_growth_pct = {name: late_growth(sampler.series, f"rss_{name}_mb", results.growth_from_s,
                                                    results.growth_window_s) for name in sampler.pids}
        if results.drained_s is None:
            results.notes.append("the worker had not committed every raw event 120 s after the load ended")
        if results.broker == "tansu":
            results.notes.append("the embedded broker keeps every message in memory (backbone/stack/memory.py says why the "
                                 "backbone cannot trim it): its RSS grows with what was written, raw and outputs alike, and "
                                 "it slows as it fills until it stalls (at 1 to 1.5 GiB); BACKBONE_EMBEDDED_BROKER=disk runs "
                                 "the disk broker, which keeps messages on disk and applies retention")
    finally:
        if sampler is not None:
            sampler.close()
        if mix is not None:
            for producer in mix.producers.values():
                producer.flush(5)
        if landing is not None:
            landing.stop()
        worker.stop()
    return results


def report_soak(results: SoakResults) -> Path:
    table = Table(title=f"processor soak: {results.offered_events_per_s:,.0f} events/s offered for {results.seconds:g} s "
                        f"({results.offered_events:,} events, {results.partitions} partitions) - {results.machine}")
    table.add_column("process")
    window = "minute" if results.growth_window_s >= 60 else f"{results.growth_window_s:g} s"
    for name in ("first", f"first {window} median", f"last {window} median", "last", "max", "growth"):
        table.add_column(name, justify="right")
    for name, figures in results.rss_mb.items():
        pct = figures.get("growth_pct")
        ok = pct is not None and abs(pct) <= SOAK_GROWTH_TARGET_PCT
        table.add_row(f"RSS {name} (MiB)", *(f"{figures.get(k) or 0:,.0f}" for k in
                                              ("first", "first_minute_median", "last_minute_median", "last", "max")),
                      target(ok, f"{pct:+.1f}%") if pct is not None else "-")
    console.print(table)
    if results.decided_per_s_by_minute:
        slowest = results.slowest_minute_ratio or 0.0
        console.print("decided/s by minute: " + ", ".join(f"{rate:,.0f}" for rate in results.decided_per_s_by_minute)
                      + f"; slowest minute {target(slowest >= 0.9, f'{slowest:.2f}x')} the offered rate (goal >= 0.9x)")
    console.print(f"RSS growth over the load's last part (from {results.growth_from_s:g} s): " + ", ".join(
        f"{name} " + (target(abs(pct) < SOAK_GROWTH_TARGET_PCT, f"{pct:+.1f}%") if pct is not None else "-")
        for name, pct in results.rss_growth_pct.items()))
    if results.landed_rows:
        console.print("landed by the sinks: " + ", ".join(f"{name} {rows:,}" for name, rows in results.landed_rows.items()))
    drained = f"drained {results.drained_s:.1f} s after the load" if results.drained_s is not None else "not drained"
    console.print(f"decided {results.decided_events:,} of {results.offered_raw_events:,} raw events offered "
                  f"(+{results.offered_events - results.offered_raw_events:,} consent changes); lag at the end "
                  f"{results.final_lag:,}; {drained}; goal: RSS growth within {SOAK_GROWTH_TARGET_PCT:g}%")
    print_notes(results.notes)
    return save("processor-soak", results)
