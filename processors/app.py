"""The processor as a faust-streaming app.

Faust gives the worker model, lifecycle, web endpoint and CLI (`faust -A processors.app worker`);
the high-volume path is the batched librdkafka `DataPlane` run by `EnforcementService` on a thread
(a Faust agent consumes ~10k events/s on the embedded broker, the batched loop several times that).
Consent, agreement and erasure state are read in full by every worker from their compacted topics;
dead letters are sealed per subject and day (`backbone.kafka.dlq_keys`) so an erasure can shred them,
and each worker destroys the keys past the DLQ retention hourly.

Importing this module builds nothing: `create_app` builds the app from settings, and the module
attribute `app` (what `faust -A processors.app` reads) is built on first access.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any

import faust
import mode

from backbone.control import agreement_changes, erasure, erasure_requests
from backbone.errors import BackboneError, TopicError
from backbone.events.catalog import load_catalog
from backbone.events.serde import Decoder, RegistrySchemas, registry_client
from backbone.files.private import private_directory
from backbone.kafka import dlq
from backbone.kafka.compacted import CompactedTopicReader
from backbone.kafka.topics import (
    AGREEMENTS_TOPIC,
    AUDIT_TOPIC,
    CONSENT_TOPIC,
    QUALITY_BREACHES_TOPIC,
    QUALITY_MARKS_TOPIC,
    QUALITY_PENDING_TOPIC,
    QUALITY_TOPIC,
    Topics,
    consent_topic_config,
    eager_compaction,
    raw_topic,
    shared_topic,
    shared_topic_config,
)
from backbone.keys.keyring import OVERSIGHT_DOMAIN, Keyring
from backbone.policy.agreements import Agreement, load_agreements
from backbone.policy.engine import PolicyEngine
from backbone.policy.released import released_period_days
from backbone.quality.checks import QualityMonitor
from backbone.quality.contract import load_quality_checked
from backbone.quality.marks import mark_applier
from backbone.settings import Settings, get_settings
from backbone.telemetry.logs import worker_logging_config
from processors import state_partitions
from processors.anchors import operations_head_reader
from processors.consent import ConsentTable
from processors.dataplane import DataPlane
from processors.erasure import ErasureTable
from processors.lineage import LineageEmitter, status_times
from processors.quality_release import pending_topic_config
from processors.router import DLQ_TOPIC, Router

log = logging.getLogger("processors")

APP_ID = "backbone-processor"
# How often each worker destroys the DLQ keys past the DLQ retention (`dlq.expire`; idempotent, so
# several workers doing it is harmless): a dead letter is unreadable at most this long after its
# retention passed, whatever its key (unkeyed entries, subjects never erased).
DLQ_KEY_EXPIRY_S = 3600.0


def reconcile_shared_topics(topics: Topics, settings: Settings, agreements: Iterable[Agreement],
                            only: Collection[str] | None = None) -> None:
    """Create each shared topic of `agreements` (those in `only`, if given) with `shared_topic_config`
    for the longest period any of them generalises its released time to, or set that on it."""
    periods: dict[str, int] = {}
    for agreement in agreements:
        for event_type in agreement.event_types:
            name = shared_topic(agreement.recipient, event_type)
            if only is None or name in only:
                periods[name] = max(periods.get(name, 0), released_period_days(agreement))
    for name, period in sorted(periods.items()):
        try:
            changed = topics.reconcile(name, shared_topic_config(settings, period))
        except TopicError as exc:
            log.warning("%s", exc)  # the topic works; its retention may end before a lagging sink reads it
        else:
            if changed:
                log.info("topic %s: set %s (shared records carry their released time)", name, ", ".join(changed))


class Enforcement:
    """Everything one worker needs to enforce the charter, built and started in order."""

    # set by `backbone process`: the data plane of a worker process freezes its start-up heap (`DataPlane`)
    freeze_heap = False

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.catalog = load_catalog(settings.schemas_dir)
        self.charter = load_agreements(settings.agreements_dir, self.catalog)
        self.keyring = Keyring.open(settings)
        missing = sorted(({OVERSIGHT_DOMAIN} | self.charter.domains()) - {k.owner for k in self.keyring.keys() if k.kind == "domain"})
        if missing:
            raise BackboneError(
                f"keyring {settings.keyring_path} has no key for domain(s) {', '.join(missing)}; "
                "run `backbone keys init` (it creates every domain the charter names, and oversight)"
            )
        # Erased subjects are denied from the next event; their later dead letters sealed under keys never kept.
        self.dlq_sealer = dlq.DlqSealer(settings)
        self.erasures = ErasureTable(self.keyring, on_erased=self.dlq_sealer.forget)
        self.engine = PolicyEngine(self.charter, self.keyring, erasures=self.erasures)
        # the schemas' quality rules, checked at start-up (a broken rule stops the worker, named)
        self.quality, problems = load_quality_checked(settings.schemas_dir, self.catalog) if settings.quality_rules else ({}, [])
        if problems:  # e.g. a provider's schema change dropped a field a rule names: enforcement goes on
            log.error("quality rules off for the event types whose contracts do not match their schemas (agreements that "
                      "require quality hold those records): %s", "; ".join(problems))
        self.schemas = RegistrySchemas(registry_client(settings))
        self.consent = ConsentTable(Decoder(self.schemas))
        self.router: Router | None = None
        self.readers: list[CompactedTopicReader] = []
        self._topics: Topics | None = None
        self.anchor_reader: CompactedTopicReader | None = None
        self.marks_reader: CompactedTopicReader | None = None
        self.agreement_feed: agreement_changes.AgreementFeed | None = None
        self.data_plane: DataPlane | None = None
        self.lineage: LineageEmitter | None = None

    def ensure_topics(self) -> None:
        topics = Topics(self.settings)
        topics.ensure(CONSENT_TOPIC, config=consent_topic_config())
        agreement_changes.ensure_topic(self.settings)
        topics.ensure(DLQ_TOPIC, config=dlq.topic_config(self.settings))
        topics.ensure(dlq.KEYS_TOPIC, config=dlq.keys_topic_config())
        erasure.ensure_topic(self.settings)
        erasure_requests.ensure_topics(self.settings)
        for name in [AUDIT_TOPIC, QUALITY_TOPIC, QUALITY_BREACHES_TOPIC, *(raw_topic(t) for t in self.catalog.raw_event_types)]:
            topics.ensure(name)
        topics.ensure(QUALITY_MARKS_TOPIC, config=eager_compaction())
        topics.ensure(QUALITY_PENDING_TOPIC, config=pending_topic_config())
        reconcile_shared_topics(topics, self.settings, self.charter.agreements)

    def apply_agreement(self, agreement: Agreement) -> None:
        """An agreement version applied at run time (`agreements apply`): its shared topics are made, or
        set, with the configuration start-up gives them before the engine releases anything to them;
        the first record to a topic that does not exist would have the broker create it with its
        defaults (its clock's timestamps, its retention)."""
        names = {shared_topic(agreement.recipient, event_type) for event_type in agreement.event_types}
        if self._topics is None:  # one admin client for every change the feed applies
            self._topics = Topics(self.settings)
        reconcile_shared_topics(self._topics, self.settings, [*self.engine.charter.agreements, agreement], names)
        self.engine.apply(agreement)
        if self.lineage is not None:
            self.lineage.changed()

    def start(self) -> None:
        """Blocking start-up: topics, schemas, consent, agreements and erasures read to their end, then the data plane."""
        self.ensure_topics()
        state_partitions.guard(self.settings, (CONSENT_TOPIC, AGREEMENTS_TOPIC, erasure.ERASURES_TOPIC))
        self.router = Router(self.catalog, self.engine, self.schemas, self.keyring)
        self.router.dlq_sealer = self.dlq_sealer  # type: ignore[attr-defined] - read by Router._dead_letter
        # the uniqueness markers' big blocks go to files under the data dir: the worker's memory stays flat over an hour
        self.router.quality = QualityMonitor(self.quality.values(), markers_dir=self.settings.data_dir / "quality-markers") \
            if self.quality else None
        # the consistency marks of earlier runs and other workers (a death seen before a restart still counts)
        monitor = self.router.quality
        if monitor is not None:  # an erased subject's consistency marks are forgotten and tombstoned
            monitor.erased = self.erasures.holds
            self.erasures.on_tokens = monitor.forget_subjects
        self.marks_reader = CompactedTopicReader(self.settings, QUALITY_MARKS_TOPIC, mark_applier(monitor.remember, log),
                                                 "quality-marks") if monitor is not None and monitor.marking else None
        self.router.gate.minutes = self.settings.quality_gate_minutes
        self.router.prepare()
        consent_reader = CompactedTopicReader(self.settings, CONSENT_TOPIC, self.consent.apply_message, "consent-feed")
        agreements_reader, self.agreement_feed = agreement_changes.feed(
            self.settings, self.catalog, self.apply_agreement, self._set_status, self._known)
        # OpenLineage run events of the agreement versions in force (`processors/lineage.py`)
        feed = self.agreement_feed
        self.lineage = LineageEmitter(self.settings, lambda: self.engine.charter, lambda: status_times(feed.statuses))
        erasure_reader = CompactedTopicReader(self.settings, erasure.ERASURES_TOPIC, self.erasures.apply_message, "erasure-feed")
        # operators hold no domain key: this worker computes the tokens of each person they erase
        erasure_desk = erasure_requests.ErasureDesk(self.settings, self.charter, self.keyring).reader
        self.readers = [consent_reader, agreements_reader, erasure_reader, erasure_desk]
        # The operators' chain head, anchored in every checkpoint; it does not hold deciding back
        # (an action after it stopped is reported by `audit verify` as not anchored).
        self.anchor_reader, operations_head = operations_head_reader(self.settings, self.catalog)
        marks = [self.marks_reader] if self.marks_reader is not None else []
        for reader in [*self.readers, self.anchor_reader, *marks]:
            reader.start()
        for reader in [*self.readers, self.anchor_reader]:
            # No event is decided on before the worker knows every consent, agreement and erasure.
            reader.wait_caught_up(self.settings.kafka_timeout_s * 6)
        for reader in marks:  # quality evidence, not enforcement: a slow read only delays the marks
            try:
                reader.wait_caught_up(self.settings.kafka_timeout_s * 6)
            except BackboneError as exc:
                log.warning("consistency marks not read to their end at start (%s); claims after earlier deaths "
                            "count once they are", exc)
        self.data_plane = DataPlane(self.settings, self.router, self.consent, group_id=f"{APP_ID}-dataplane", gate=self.wait_reason,
                                    operations_head=operations_head, freeze_heap=self.freeze_heap)
        self.data_plane.start()
        self.lineage.start()  # what is in force now, once every agreement change is read
        log.info("enforcing %d agreements; %d consent records; %d erased subjects", len(self.charter.agreements),
                 len(self.consent), len(self.erasures))

    def _set_status(self, agreement_id: str, version: int, status: str) -> None:
        self.engine.set_status(agreement_id, version, status)  # type: ignore[arg-type]
        if self.lineage is not None:
            self.lineage.changed()

    def _known(self, key: str) -> bool:
        return any(agreement.key == key for agreement in self.engine.charter.agreements)

    def dead_reader(self) -> str | None:
        """Why a state reader stopped (the worker must not decide without it), if one did."""
        for reader in self.readers:
            if not reader.alive:
                return f"{reader.name} stopped reading {reader.topic}: {reader.error or 'its thread ended'}"
        return None

    def wait_reason(self) -> str | None:
        """Why the data plane must not decide right now: a state reader is dead or waiting."""
        dead = self.dead_reader()
        if dead is not None:
            return dead
        for reader in self.readers:
            if reader.blocked:
                return f"{reader.name} waits to apply a record of {reader.topic} ({reader.blocked})"
        return None

    def stop(self) -> None:
        if self.data_plane is not None:
            self.data_plane.stop()
        for reader in [*self.readers, *([self.anchor_reader] if self.anchor_reader else []),
                       *([self.marks_reader] if self.marks_reader else [])]:
            reader.stop()
        if self.lineage is not None:
            self.lineage.stop()

    def stats(self) -> dict[str, Any]:
        plane = self.data_plane
        counts = dict(self.router.counts) if self.router else {}
        return {
            "consumed": plane.consumed if plane else 0,
            "produced": plane.produced if plane else 0,
            "batches": plane.batches if plane else 0,
            "consent_records": len(self.consent),
            "erased_subjects": len(self.erasures),
            **counts,
            **({f"seconds_{k}": round(v, 1) for k, v in plane.seconds.items()} if plane else {}),
        }


class ProcessorApp(faust.App):
    """The Faust app, keeping its data under `BACKBONE_DATA_DIR` (not the working directory)."""

    async def on_first_start(self) -> None:
        # Faust creates datadir/appdir/tabledir one level at a time: the data dir may not exist yet.
        private_directory(Path(self.conf.datadir).parent)  # the data dir: its user's only
        Path(self.conf.datadir).mkdir(mode=0o700, exist_ok=True)
        await super().on_first_start()


def create_app(settings: Settings | None = None, web_port: int | None = None,
               enforcement: Enforcement | None = None, log_level: str | None = None) -> faust.App:
    """The Faust app; pass a ready `enforcement` to surface configuration errors before Faust starts.

    Building it touches nothing (no file, no connection); Faust's data goes to
    `<BACKBONE_DATA_DIR>/faust` once a worker starts, and its logs through `backbone.telemetry.logs`.
    """
    import ssl

    from backbone.errors import SettingsError

    settings = settings or get_settings()
    servers = ";".join(settings.kafka_bootstrap.split(","))
    # Faust's own clients (aiokafka: its consumer, producer and topic admin) never read
    # kafka_config(): they get the same protocol, CA and SASL user here, or they would talk
    # plaintext to a TLS/SASL listener and the worker would never join.
    protocol = settings.kafka_security_protocol
    ssl_context: ssl.SSLContext | None = None
    if protocol in ("SSL", "SASL_SSL"):
        ca = settings.kafka_ssl_ca_location
        ssl_context = ssl.create_default_context(cafile=str(ca) if ca else None)  # verifies host names, like librdkafka
    credentials: faust.SASLCredentials | ssl.SSLContext | None = ssl_context
    if protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        if settings.kafka_sasl_mechanism is None or not settings.kafka_sasl_username or settings.kafka_sasl_password is None:
            raise SettingsError(
                f"BACKBONE_KAFKA_SECURITY_PROTOCOL={protocol} needs BACKBONE_KAFKA_SASL_MECHANISM (PLAIN, SCRAM-SHA-256 "
                "or SCRAM-SHA-512), BACKBONE_KAFKA_SASL_USERNAME and BACKBONE_KAFKA_SASL_PASSWORD"
            )
        credentials = faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password.get_secret_value(),
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=ssl_context,  # SASL_SSL when set, SASL_PLAINTEXT otherwise
        )
    app = ProcessorApp(
        APP_ID,
        broker=f"kafka://{servers}",
        broker_credentials=credentials,
        store="memory://",
        autodiscover=False,
        datadir=str((settings.data_dir / "faust").resolve()),
        logging_config=worker_logging_config(settings, log_level),
        web_enabled=web_port is not None,
        web_port=web_port or 6066,
        web_bind="127.0.0.1",
        broker_session_timeout=settings.consumer_session_timeout_ms / 1000,
        broker_heartbeat_interval=settings.consumer_heartbeat_interval_ms / 1000,
        consumer_auto_offset_reset="earliest",
        topic_partitions=settings.kafka_partitions,
    )

    prepared = enforcement

    @app.service
    class EnforcementService(mode.Service):
        """Starts the enforcement (blocking parts on a thread) and stops the worker if it fails."""

        enforcement: Enforcement | None = prepared

        async def on_start(self) -> None:
            loop = asyncio.get_running_loop()
            if self.enforcement is None:
                self.enforcement = Enforcement(settings)
            await loop.run_in_executor(None, self.enforcement.start)

        async def on_stop(self) -> None:
            if self.enforcement is not None:
                await asyncio.get_running_loop().run_in_executor(None, self.enforcement.stop)

        @mode.Service.task
        async def _watch(self) -> None:
            last = 0.0
            while not self.should_stop:
                await self.sleep(1.0)
                enforcement = self.enforcement
                if enforcement is None or enforcement.data_plane is None:
                    continue
                plane = enforcement.data_plane
                if plane.error is not None:
                    log.error("stopping the worker: %s", plane.error)
                    await self.crash(plane.error)
                    return
                dead = enforcement.dead_reader()
                if dead is not None:
                    # Consent, agreement or erasure state is no longer current: stop deciding at all.
                    log.error("stopping the worker, it must not decide without its state: %s", dead)
                    await self.crash(BackboneError(dead))
                    return
                last += 1
                if last >= 10:
                    last = 0
                    log.info("processor stats %s", enforcement.stats())

    @app.timer(min(DLQ_KEY_EXPIRY_S, max(1.0, settings.dlq_retention_days * 86_400 / 24)), on_leader=False)
    async def expire_dlq_keys() -> None:
        """Destroy the DLQ keys past the DLQ retention (unkeyed entries' included); retried next time on failure."""
        try:
            await asyncio.get_running_loop().run_in_executor(None, dlq.expire, settings)
        except BackboneError as exc:
            log.warning("expired DLQ keys not destroyed yet (%s); retried in an hour", exc)

    app.enforcement_service = EnforcementService  # type: ignore[attr-defined]
    return app


def __getattr__(name: str) -> Any:
    """`processors.app.app`, built from settings on first access (PEP 562), for `faust -A processors.app`."""
    if name == "app":
        built = globals()["app"] = create_app()
        return built
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
