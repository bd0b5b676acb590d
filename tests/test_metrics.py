"""Prometheus metrics as a scraper sees them: the processor's decisions and dead letters after
routing events, a sink's landed rows and batch histograms after landing rows, the registry's
requests by status. Values are read from the scraped text with Prometheus' own parser."""

from __future__ import annotations

import asyncio
import urllib.request
from types import SimpleNamespace

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from backbone.events.catalog import Catalog
from backbone.events.serde import LocalSchemas
from backbone.kafka.topics import raw_topic
from backbone.registry.auth import Anonymous
from backbone.registry.server import make_app
from backbone.settings import Settings, load_settings
from backbone.stack.embedded import free_port
from backbone.telemetry import metrics
from processors.router import Router
from tests.test_router import TAX, catalog, charter, encode, event, keyring, route, router, schemas  # noqa: F401 - fixtures


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape: (name, sorted labels) -> value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        return answer.read().decode()


def test_the_processor_endpoint_reports_decisions_by_recipient_and_reason_and_dead_letters(
    router: Router, schemas: LocalSchemas, catalog: Catalog,  # noqa: F811 - fixtures
) -> None:
    for seed in range(3):
        route(router, raw_topic(TAX), encode(schemas, catalog, TAX, event(catalog, TAX, seed)))
    route(router, raw_topic(TAX), b"not avro")
    reader = SimpleNamespace(name="consent-feed", applied=7)
    enforcement = SimpleNamespace(router=router, data_plane=None, readers=[reader])
    registry = CollectorRegistry()
    registry.register(metrics.ProcessorCollector(enforcement))
    port = metrics.serve(load_settings(metrics_port=0), free_port(), registry)
    assert port is not None

    found = samples(scrape(port))

    assert found[("backbone_events_decided_total", (("reason", "permit"), ("recipient", "fraud")))] == 3
    assert found[("backbone_records_released_total", (("recipient", "fraud"),))] == 3
    assert found[("backbone_events_routed_total", ())] == 3
    assert found[("backbone_dlq_entries_total", (("reason", "bad_magic_byte"), ("stage", "processor")))] == 1
    assert found[("backbone_state_version", (("state", "consent"),))] == 7
    denied = [v for (name, labels), v in found.items() if name == "backbone_events_decided_total" and ("reason", "permit") not in labels]
    assert all(v > 0 for v in denied)


def test_the_processor_endpoint_reports_sealed_checkpoints_and_tsa_timestamps() -> None:
    timestamper = SimpleNamespace(stamped=4, failed=2)
    plane = SimpleNamespace(consumed=900, batches=3, seconds={"consume": 0.1, "route": 0.2}, paused=None,
                            checkpoints_sealed=3, checkpoints=SimpleNamespace(timestamper=timestamper))
    registry = CollectorRegistry()
    registry.register(metrics.ProcessorCollector(SimpleNamespace(router=None, data_plane=plane, readers=[])))
    port = metrics.serve(load_settings(metrics_port=0), free_port(), registry)
    assert port is not None
    found = samples(scrape(port))
    assert found[("backbone_audit_checkpoints_sealed_total", ())] == 3
    assert found[("backbone_audit_timestamps_total", ())] == 4
    assert found[("backbone_audit_timestamp_failures", ())] == 2
    assert found[("backbone_processor_consumed_total", ())] == 900


def test_metrics_are_off_unless_a_port_is_set() -> None:
    assert metrics.serve(load_settings(metrics_port=0)) is None


@pytest.mark.integration
def test_a_sink_reports_rows_landed_batch_histograms_dead_letters_by_reason_and_its_lag(settings: Settings, unique: str) -> None:
    from tests.test_batching import MemoryTarget, produce, sink

    topic = f"metrics.{unique}"
    produce(settings, topic, [f"v{i}".encode() for i in range(40)] + [b""])
    each = sink(settings, MemoryTarget("memory"), topic, f"g-{unique}", batch_rows=25, batch_seconds=0.3)
    registry = CollectorRegistry()
    metrics.SinkCollector([each], registry)
    each.run_until_idle(idle_s=1.5, timeout_s=60)
    each.close()

    found = samples(generate_latest(registry).decode())

    assert found[("backbone_sink_rows_landed_total", (("sink", "memory"),))] == 40
    assert found[("backbone_sink_batch_rows_count", (("sink", "memory"),))] >= 2
    assert found[("backbone_sink_batch_rows_sum", (("sink", "memory"),))] == 40
    assert found[("backbone_sink_insert_seconds_count", (("sink", "memory"),))] >= 2
    assert found[("backbone_dlq_entries_total", (("reason", "empty_value"), ("stage", "sink")))] == 1

    # lag: what the group has not committed yet. Only "some": the embedded broker's watermarks can
    # trail (a partition's high watermark read below its committed offset), hence "approximate".
    produce(settings, topic, [b"late-1", b"late-2", b"late-3"])
    lags = [metric.samples for metric in metrics.LagCollector(settings, [f"g-{unique}"]).collect()]
    assert [(s.labels["group"], s.value > 0) for s in lags[0]] == [(f"g-{unique}", True)]


def test_registry_requests_are_counted_by_route_and_status() -> None:
    counted = metrics.registry_metrics().requests

    def count(route: str, status: str) -> float:
        return counted.labels(route, status)._value.get()  # noqa: SLF001 - the counter's current value

    before_ok, before_missing = count("read_root", "200"), count("unmatched", "404")

    async def ask() -> None:
        async with TestClient(TestServer(make_app(None, Anonymous()))) as client:  # type: ignore[arg-type]
            assert (await client.get("/")).status == 200
            assert (await client.get("/no/such/route")).status == 404

    asyncio.run(ask())
    assert count("read_root", "200") == before_ok + 1
    assert count("unmatched", "404") == before_missing + 1
