"""Prometheus metrics of every long-running backbone process, defined in one place.

The hot path is left alone: the processor's router and data plane and the sinks already count what
they do (`Router.counts` and `decided`, `DataPlane.seconds`, `SinkStats`); the collectors here read
those counters when Prometheus scrapes. Only what a counter cannot give (the distribution of batch
sizes and insert latency) is observed, once per batch, through the sink's `on_batch` hook, and the
registry counts requests in an aiohttp middleware.

`serve(settings)` starts the `/metrics` endpoint on `BACKBONE_METRICS_PORT` (0: none) bound to
`BACKBONE_METRICS_HOST` (127.0.0.1 unless a scraper elsewhere needs it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector

from backbone.errors import BackboneError

if TYPE_CHECKING:
    from aiohttp import web

    from backbone.settings import Settings

log = logging.getLogger(__name__)


class MeasuredSink(Protocol):
    """What the sink collector reads of a sink (`consumers.batching.BatchingSink` is one): its name,
    its `stats` (landed, dead_lettered, retries, batches) and an `on_batch` hook it calls per batch."""

    name: str
    stats: Any
    on_batch: Callable[[str, int, float], None] | None

DLQ_PREFIX = "dlq."
# Rows per batch and seconds per insert: sinks land up to BACKBONE_SINK_BATCH_ROWS (20,000) rows.
BATCH_ROW_BUCKETS = (1, 10, 100, 500, 1_000, 5_000, 10_000, 20_000, 50_000)
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# The reason of a permit audited as waiting for its quality window (`backbone.policy.decision`, which
# telemetry does not import): not a decision yet, the record is decided (and counted) when released.
QUALITY_PENDING = "quality_pending"
# Consumer lag costs a round of broker requests: asked at most this often, whatever the scrape rate.
LAG_CACHE_S = 10.0


class ProcessorCollector(Collector):
    """The processor worker's counters, read at scrape time from its `Enforcement` (or anything with
    `router`, `data_plane` and `readers` attributes, any of them None until start-up is done)."""

    def __init__(self, enforcement: Any) -> None:
        self.enforcement = enforcement

    def collect(self) -> Iterator[Metric]:
        router = getattr(self.enforcement, "router", None)
        plane = getattr(self.enforcement, "data_plane", None)
        decided = CounterMetricFamily("backbone_events_decided", "Decisions on raw events, by recipient and outcome "
                                      "(permit, or the reason of the denial); a record gated on its quality window is "
                                      "counted once, when its window releases, holds or flags it", labels=["recipient", "reason"])
        waited = CounterMetricFamily("backbone_records_quality_waited", "Permits that waited for their quality window "
                                     "(audited quality_pending; decided when released)", labels=["recipient"])
        waiting = GaugeMetricFamily("backbone_records_quality_waiting", "Raw events of this worker waiting in the pending "
                                    "topic for their quality window to be judged and released", labels=["event_type"])
        released = CounterMetricFamily("backbone_records_released", "Records released to recipients' shared topics",
                                       labels=["recipient"])
        events = CounterMetricFamily("backbone_events_routed", "Raw events decided on (each once, whatever the recipients)")
        dead = CounterMetricFamily("backbone_dlq_entries", "Dead letters written, by stage and reason", labels=["stage", "reason"])
        if router is not None:
            for (recipient, reason), n in sorted(router.decided.items()):
                if reason == QUALITY_PENDING:  # not disclosed yet: its release is the decision
                    waited.add_metric([recipient], n)
                    continue
                decided.add_metric([recipient, reason], n)
                if reason == "permit":
                    released.add_metric([recipient], n)
            events.add_metric([], router.counts.get("events", 0))
            for name, n in sorted(router.counts.items()):
                if name.startswith(DLQ_PREFIX):
                    dead.add_metric(["processor", name[len(DLQ_PREFIX):]], n)
            gate = getattr(router, "gate", None)
            by_type: dict[str, int] = {}
            for (event_type, _), n in (gate.pending.items() if gate is not None else ()):
                by_type[event_type] = by_type.get(event_type, 0) + n
            for event_type, n in sorted(by_type.items()):
                waiting.add_metric([event_type], n)
        yield from (decided, released, events, dead, waited, waiting)
        if getattr(router, "quality", None) is not None:
            yield from _quality_families(router)
        if plane is not None:
            yield CounterMetricFamily("backbone_processor_consumed", "Raw messages consumed by the data plane", value=plane.consumed)
            sizes = SummaryMetricFamily("backbone_processor_batch_messages", "Messages per data-plane batch")
            sizes.add_metric([], count_value=plane.batches, sum_value=plane.consumed)
            yield sizes
            seconds = SummaryMetricFamily("backbone_processor_batch_seconds", "Time per data-plane batch by phase "
                                          "(consume, route, flush, commit)", labels=["phase"])
            for phase, spent in sorted(plane.seconds.items()):
                seconds.add_metric([phase], count_value=plane.batches, sum_value=spent)
            yield seconds
            yield GaugeMetricFamily("backbone_processor_paused", "1 while the data plane decides nothing (a state reader "
                                    "is behind or the registry is down)", value=1 if plane.paused else 0)
            yield CounterMetricFamily("backbone_audit_checkpoints_sealed", "Signed checkpoints sealing audit batches",
                                      value=plane.checkpoints_sealed)
            timestamper = getattr(getattr(plane, "checkpoints", None), "timestamper", None)
            if timestamper is not None:  # only with BACKBONE_AUDIT_TSA_URL set
                yield CounterMetricFamily("backbone_audit_timestamps", "Checkpoints timestamped by the RFC 3161 TSA",
                                          value=timestamper.stamped)
                yield GaugeMetricFamily("backbone_audit_timestamp_failures", "Consecutive failed attempts to have a "
                                        "checkpoint timestamped (0 once the TSA answers again)", value=timestamper.failed)
        versions = GaugeMetricFamily("backbone_state_version", "Records applied to a worker's state (consent, agreements, "
                                     "erasures): grows with every change the worker knows", labels=["state"])
        for reader in getattr(self.enforcement, "readers", None) or ():
            versions.add_metric([reader.name.removesuffix("-feed")], reader.applied)
        yield versions


QUALITY_LABELS = ["provider", "event_type", "dimension"]


def _scorecard_families(cards: Iterable[Any], name: str, what: str) -> Iterator[Metric]:
    """Gauges of `backbone.quality.scorecard.Scorecard`s (read by attribute: the registry imports
    telemetry, and quality imports the catalog, which imports the registry)."""
    scores = GaugeMetricFamily(f"{name}_score", f"Data-quality score 0-100 {what}, by provider, event type and "
                               "dimension (absent: no checks yet)", labels=QUALITY_LABELS)
    failed = GaugeMetricFamily(f"{name}_failed_checks", f"Failed data-quality checks {what}", labels=QUALITY_LABELS)
    checked = GaugeMetricFamily(f"{name}_checks", f"Data-quality checks made {what}", labels=QUALITY_LABELS)
    for card in cards:
        for dimension in card.dimensions.values():
            labels = [card.provider, card.event_type, dimension.dimension]
            if dimension.score is not None:
                scores.add_metric(labels, dimension.score)
            failed.add_metric(labels, dimension.failed)
            checked.add_metric(labels, dimension.checked)
    yield from (scores, failed, checked)


def _quality_families(router: Any) -> Iterator[Metric]:
    """The processor's open quality windows (this hour so far, this worker), scored at scrape time."""
    monitor = router.quality
    yield CounterMetricFamily("backbone_quality_windows", "Closed data-quality windows emitted to quality.windows",
                              value=router.counts.get("quality.windows", 0))
    yield from _scorecard_families(monitor.scorecards(), "backbone_quality_open", "of this worker's open hour so far")


class QualityScorecardCollector(Collector):
    """The quality sink's latest scorecards (merged from every worker), read at scrape time from its target."""

    def __init__(self, target: Any) -> None:
        self.target = target

    def collect(self) -> Iterator[Metric]:
        yield from _scorecard_families(list(self.target.scorecards.values()), "backbone_quality_scorecard",
                                       "of the newest hour the quality sink landed")


class SinkCollector(Collector):
    """Every sink's `SinkStats`, read at scrape time; batch distributions come from `observe`."""

    def __init__(self, sinks: Iterable[MeasuredSink], registry: CollectorRegistry = REGISTRY) -> None:
        self.sinks = list(sinks)
        self.batch_rows = Histogram("backbone_sink_batch_rows", "Rows per landed batch", ["sink"],
                                    buckets=BATCH_ROW_BUCKETS, registry=registry)
        self.insert_seconds = Histogram("backbone_sink_insert_seconds", "Time to write one batch to the target, "
                                        "retries included", ["sink"], buckets=SECONDS_BUCKETS, registry=registry)
        for sink in self.sinks:
            sink.on_batch = self.observe
        registry.register(self)

    def observe(self, sink: str, rows: int, seconds: float) -> None:
        self.batch_rows.labels(sink).observe(rows)
        self.insert_seconds.labels(sink).observe(seconds)

    def collect(self) -> Iterator[Metric]:
        landed = CounterMetricFamily("backbone_sink_rows_landed", "Rows landed by a sink", labels=["sink"])
        dead = CounterMetricFamily("backbone_dlq_entries", "Dead letters written, by stage and reason", labels=["stage", "reason"])
        retries = CounterMetricFamily("backbone_sink_retries", "Writes that met an unavailable target", labels=["sink"])
        batches = CounterMetricFamily("backbone_sink_batches", "Batches landed and committed", labels=["sink"])
        for sink in self.sinks:
            landed.add_metric([sink.name], sink.stats.landed)
            retries.add_metric([sink.name], sink.stats.retries)
            batches.add_metric([sink.name], sink.stats.batches)
        reasons: dict[str, int] = {}
        for sink in self.sinks:
            for reason, n in sink.stats.dead_letter_reasons.items():
                reasons[reason] = reasons.get(reason, 0) + n
        for reason, n in sorted(reasons.items()):
            dead.add_metric(["sink", reason], n)
        yield from (landed, dead, retries, batches)


class LagCollector(Collector):
    """Consumer lag of the named groups (those starting with one of `groups`), from the committed
    offsets and the watermarks, asked at most every `LAG_CACHE_S` seconds."""

    def __init__(self, settings: Settings, groups: Iterable[str], timeout: float = 2.0) -> None:
        self.settings = settings
        self.groups = tuple(groups)
        self.timeout = timeout
        self._lock = threading.Lock()
        self._asked = 0.0
        self._lags: list[tuple[str, int]] = []

    def describe(self) -> Iterator[Metric]:
        # Registering asks this, not collect(): no broker round-trip at start-up.
        yield self._family([])

    @staticmethod
    def _family(lags: list[tuple[str, int]]) -> GaugeMetricFamily:
        family = GaugeMetricFamily("backbone_consumer_lag", "Messages not yet committed by a consumer group "
                                   "(from watermarks: approximate)", labels=["group"])
        for group, lag in lags:
            family.add_metric([group], lag)
        return family

    def _refresh(self) -> None:
        from backbone.kafka.groups import kafka_status

        try:
            _, groups = kafka_status(self.settings, self.timeout)
        except Exception as exc:  # noqa: BLE001 - a scrape never fails because the broker is away
            log.debug("consumer lag not available: %s", type(exc).__name__)
            return
        self._lags = [(g.group, g.lag) for g in groups if g.group.startswith(self.groups)]

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            if time.monotonic() - self._asked >= LAG_CACHE_S:
                self._asked = time.monotonic()
                self._refresh()
            lags = list(self._lags)
        yield self._family(lags)


class RegistryMetrics:
    """The schema registry's requests by route and status, counted in an aiohttp middleware."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.requests = Counter("backbone_registry_requests", "Schema registry requests, by route and HTTP status",
                                ["route", "status"], registry=registry)
        self.seconds = Histogram("backbone_registry_request_seconds", "Time to answer a registry request", ["route"],
                                 buckets=SECONDS_BUCKETS, registry=registry)

    def middleware(self) -> Callable[..., Awaitable[web.StreamResponse]]:
        from aiohttp import web

        @web.middleware
        async def count(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
            started = time.perf_counter()
            # the route's name (never the path: subjects would make one series each)
            route = request.match_info.route.name or "unmatched"
            status = 500
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            finally:
                self.requests.labels(route, str(status)).inc()
                self.seconds.labels(route).observe(time.perf_counter() - started)

        return count


_registry_metrics: RegistryMetrics | None = None


def registry_metrics() -> RegistryMetrics:
    """This process's registry request metrics (created once: Prometheus refuses a name twice)."""
    global _registry_metrics
    if _registry_metrics is None:
        _registry_metrics = RegistryMetrics()
    return _registry_metrics


def serve(settings: Settings, port: int | None = None, registry: CollectorRegistry = REGISTRY) -> int | None:
    """Serve `/metrics` on `port` (default `BACKBONE_METRICS_PORT`; 0 and None: not at all) on a
    daemon thread; returns the port served, or None."""
    port = settings.metrics_port if port is None else port
    if not port:
        return None
    try:
        start_http_server(port, addr=settings.metrics_host, registry=registry)
    except OSError as exc:
        raise BackboneError(f"cannot serve metrics on {settings.metrics_host}:{port}: {exc.strerror}; "
                            "set BACKBONE_METRICS_PORT to a free port (0: no metrics)") from None
    log.info("metrics on http://%s:%d/metrics", settings.metrics_host, port)
    return port
