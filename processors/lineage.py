"""OpenLineage run events of the agreement versions a worker enforces, sent with the
openlineage-python client to the configured transport (`BACKBONE_LINEAGE_TRANSPORT`: a JSON-lines
file, an OpenLineage HTTP API such as Marquez, or a Kafka topic).

Once the worker has read every agreement change, it says RUNNING for each version in force; from
then on each change the agreement feed applies wakes the emitter, which compares what is in force
with what was: a version coming into force STARTs a run, a suspension or revocation ABORTs it, the
end of its validity COMPLETEs it (checked every second), and a new text of a version in force
COMPLETEs the old run and STARTs one for the new terms. Events are built and sent on the emitter's
own thread, so a slow lineage server never holds back the agreement feed or the data plane; one that
fails is logged (events hold no personal data) and not retried.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from openlineage.client import OpenLineageClient
from openlineage.client.transport import Transport
from openlineage.client.transport.file import FileConfig, FileTransport
from openlineage.client.transport.http import HttpConfig, HttpTransport
from openlineage.client.transport.kafka import KafkaConfig, KafkaTransport

from backbone.catalog.openlineage import Namespaces, run_event
from backbone.catalog.terms import agreement_hash
from backbone.errors import SettingsError
from backbone.files.private import private_directory
from backbone.kafka.topics import Topics
from backbone.policy.agreements import Agreement, Charter
from backbone.settings import Settings

log = logging.getLogger(__name__)

CHECK_EVERY_S = 1.0  # how soon the end of an agreement's validity is noticed


def namespaces(settings: Settings) -> Namespaces:
    """OpenLineage's dataset namespaces for this deployment's Kafka and ClickHouse (never credentials)."""
    dsn = str(settings.clickhouse_dsn or "")
    parts = urlsplit(dsn)
    clickhouse = f"clickhouse://{parts.hostname}:{parts.port or 8123}" if parts.hostname else "clickhouse://chdb"
    return Namespaces(settings.lineage_namespace, f"kafka://{settings.kafka_bootstrap.split(',')[0].strip()}", clickhouse)


def transport(settings: Settings) -> Transport | None:
    """The configured transport, or None when lineage is off."""
    kind = settings.lineage_transport
    if kind == "off":
        return None
    if kind == "file":
        path = settings.lineage_file or settings.data_dir / "lineage" / "openlineage.jsonl"
        private_directory(path.parent)
        return FileTransport(FileConfig(log_file_path=str(path), append=True))
    if kind == "http":
        if not settings.lineage_url:
            raise SettingsError("BACKBONE_LINEAGE_TRANSPORT=http needs BACKBONE_LINEAGE_URL (an OpenLineage API, e.g. http://marquez:5000)")
        return HttpTransport(HttpConfig(url=settings.lineage_url, endpoint="api/v1/lineage", timeout=5.0))
    Topics(settings).ensure(settings.lineage_topic)
    # the backbone's producer settings as they are (librdkafka values and its logger), security included
    return KafkaTransport(KafkaConfig(config=settings.producer_config(), topic=settings.lineage_topic, flush=True))


@dataclass(slots=True)
class _Period:
    """A version's current period in force: its text and when the period began."""

    agreement: Agreement
    since: datetime


class LineageEmitter:
    """Sends a run event for every change of what is in force (see the module docstring)."""

    def __init__(self, settings: Settings, charter_of: Callable[[], Charter],
                 status_times: Callable[[], Mapping[str, datetime]], sink: Transport | None = None) -> None:
        self.settings = settings
        self.names = namespaces(settings)
        self._charter_of = charter_of
        self._status_times = status_times
        self._transport = sink if sink is not None else transport(settings)
        self._client = OpenLineageClient(transport=self._transport) if self._transport is not None else None
        self._wake: queue.Queue[str] = queue.Queue()
        self._periods: dict[str, _Period] = {}
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.sent = 0
        self.failures = 0

    @property
    def enabled(self) -> bool:
        return self._client is not None

    def start(self) -> None:
        """Say RUNNING for every version in force, then follow changes (after the feed caught up)."""
        if not self.enabled:
            return
        now = datetime.now(UTC)
        charter = self._charter_of()
        times = self._status_times()
        for agreement in charter.agreements:
            if agreement.in_force_at(now):
                period = _Period(agreement, self._since(agreement, times))
                self._periods[agreement.key] = period
                self._send(agreement, charter, "RUNNING", now, period.since, "in_force")
        self._thread = threading.Thread(target=self._run, name="lineage-emitter", daemon=True)
        self._thread.start()

    def changed(self) -> None:
        """An agreement change was applied: compare and send (on the emitter's thread)."""
        if self._thread is not None:
            self._wake.put("changed")

    def stop(self) -> None:
        self._stopping.set()
        self._wake.put("stop")
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._client is not None:
            self._client.close(timeout=5)

    def _since(self, agreement: Agreement, times: Mapping[str, datetime]) -> datetime:
        """When the current period in force began, the same on every worker: the status change
        that activated it, else the start of its validity."""
        at = times.get(agreement.key)
        return max(agreement.valid_from, at) if at is not None else agreement.valid_from

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._wake.get(timeout=CHECK_EVERY_S)
            except queue.Empty:
                pass
            if self._stopping.is_set():
                return
            try:
                self.compare(datetime.now(UTC))
            except Exception:  # noqa: BLE001 - lineage never stops enforcement; events hold no personal data
                log.exception("lineage: comparing agreement versions failed")

    def compare(self, now: datetime) -> None:
        """Send the events that take the known periods to what is in force at `now`."""
        charter = self._charter_of()
        times = self._status_times()
        current = {a.key: a for a in charter.agreements}
        for key, period in list(self._periods.items()):
            agreement = current.get(key)
            if agreement is not None and agreement.in_force_at(now):
                if agreement_hash(agreement) != agreement_hash(period.agreement):
                    self._send(period.agreement, charter, "COMPLETE", now, period.since, "changed")
                    del self._periods[key]
                continue
            del self._periods[key]
            if agreement is not None and agreement.status in ("suspended", "revoked", "draft"):
                self._send(agreement, charter, "ABORT", now, period.since, agreement.status)
            else:
                self._send(period.agreement, charter, "COMPLETE", now, period.since, "expired")
        for key, agreement in current.items():
            if key not in self._periods and agreement.in_force_at(now):
                period = _Period(agreement, self._since(agreement, times))
                self._periods[key] = period
                self._send(agreement, charter, "START", now, period.since, "started")

    def _send(self, agreement: Agreement, charter: Charter, state: str, now: datetime, since: datetime, change: str) -> None:
        assert self._client is not None
        event = run_event(agreement, charter, state, now, since, self.names, change, self.settings.clickhouse_database_prefix)
        try:
            self._client.emit(event)
            self.sent += 1
            log.info("lineage: %s %s (%s)", state, agreement.key, change)
        except Exception as exc:  # noqa: BLE001 - any transport's failure; the event carries no personal data
            self.failures += 1
            log.warning("lineage: %s of %s not sent to the %s transport: %s", state, agreement.key,
                        self.settings.lineage_transport, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


def status_times(statuses: Any) -> dict[str, datetime]:
    """`id@version` -> when its last status change was made (from the feed's status records)."""
    return {key: change.at for key, change in dict(statuses or {}).items()}
