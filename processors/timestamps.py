"""RFC 3161 timestamps of a processor worker's audit checkpoints, when `BACKBONE_AUDIT_TSA_URL`
names a timestamping authority (off by default).

Checkpoints are hash-chained, so a timestamp of checkpoint n vouches for every earlier one of the
writer: the data plane never calls the TSA. A thread of its own takes, every
`audit_tsa_interval_s`, the writer's newest sealed checkpoint not yet timestamped, asks the TSA for
a token over its chain hash (`backbone.audit.timestamps.request_for`), checks the answer (granted, the
hash, the nonce; the signature too when `audit_tsa_cert_file` is set) and publishes it to
`audit.timestamps`, keyed by writer. A TSA that is down, slow (`audit_tsa_timeout_s`) or refusing
costs a warning and a retry at the next interval; deciding never waits for it.
"""

from __future__ import annotations

import base64
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from io import BytesIO
from typing import Any

from confluent_kafka import KafkaError, Message, Producer
from fastavro import parse_schema, schemaless_writer

from backbone.audit.log import Checkpoint, CheckpointCodec
from backbone.audit.timestamps import Stamp, TimestampError, Trust, accept, gen_time, request_for
from backbone.events.catalog import AUDIT_TIMESTAMP, Catalog
from backbone.events.serde import MAGIC
from backbone.kafka.topics import TIMESTAMPS_TOPIC, Topics
from backbone.settings import Settings, split_credentials

log = logging.getLogger(__name__)

TIMESTAMPS_SUBJECT = f"{TIMESTAMPS_TOPIC}-value"
QUERY_TYPE = "application/timestamp-query"
REPLY_TYPE = "application/timestamp-reply"


def shown_url(url: str) -> str:
    """The TSA's URL as logged and recorded: without user or password."""
    return split_credentials(url)[0]


def ask_tsa(url: str, query: bytes, timeout_s: float) -> bytes:
    """POST a DER TimeStampReq to the TSA at `url`; its DER answer, or `TimestampError`."""
    plain, user, password = split_credentials(url)
    request = urllib.request.Request(plain, data=query, method="POST", headers={"Content-Type": QUERY_TYPE, "Accept": REPLY_TYPE})
    if user is not None:
        token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:  # noqa: S310 - the configured TSA, http(s) only
            return answer.read(1 << 20)
    except urllib.error.HTTPError as exc:
        raise TimestampError(f"TSA {plain} answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TimestampError(f"TSA {plain} unreachable ({type(reason).__name__}: {str(reason)[:120]})") from None


class Timestamper:
    """Has the newest checkpoint that `latest()` returns timestamped every `interval_s`, on its
    own thread and producer; `stop()` ends it within the TSA timeout."""

    def __init__(self, settings: Settings, latest: Callable[[], Checkpoint | None], checkpoint_codec: CheckpointCodec,
                 schema: dict[str, Any], schema_id: int, trust: Trust | None = None) -> None:
        if settings.audit_tsa_url is None:
            raise TimestampError("no TSA configured: set BACKBONE_AUDIT_TSA_URL")
        self.settings = settings
        self.url = settings.audit_tsa_url
        self.tsa = shown_url(self.url)
        self.latest = latest
        self.checkpoint_codec = checkpoint_codec
        self.trust = trust
        self._parsed = parse_schema(schema)
        self._header = bytes([MAGIC]) + schema_id.to_bytes(4, "big")
        self._producer: Producer | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._done: tuple[str, int] | None = None  # (writer, sequence) last timestamped
        self.stamped = 0
        self.failed = 0  # consecutive failed attempts
        self.last_error: str | None = None

    @classmethod
    def open(cls, settings: Settings, catalog: Catalog, register: Callable[[str, dict[str, Any]], int],
             latest: Callable[[], Checkpoint | None], checkpoint_codec: CheckpointCodec) -> Timestamper:
        """The worker's timestamper: trusted certificates read (if configured), the schema
        registered (`register(subject, schema) -> id`) and the topic created; not started."""
        trust = Trust.load(settings.audit_tsa_cert_file) if settings.audit_tsa_cert_file is not None else None
        schema = catalog.internal_schema(AUDIT_TIMESTAMP)
        Topics(settings).ensure(TIMESTAMPS_TOPIC)
        schema_id = register(TIMESTAMPS_SUBJECT, catalog.internal_schema(AUDIT_TIMESTAMP))
        return cls(settings, latest, checkpoint_codec, schema, schema_id, trust)

    def start(self) -> Timestamper:
        self._producer = Producer(self.settings.producer_config())
        self._thread = threading.Thread(target=self._run, name="audit-timestamps", daemon=True)
        self._thread.start()
        log.info("audit checkpoints timestamped by %s every %gs", self.tsa, self.settings.audit_tsa_interval_s)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.settings.audit_tsa_timeout_s + self.settings.kafka_timeout_s + 1)
        if self._producer is not None:
            self._producer.flush(self.settings.kafka_timeout_s)

    def _run(self) -> None:
        while not self._stop.wait(self.settings.audit_tsa_interval_s):
            try:
                self.stamp_newest()
            except TimestampError as exc:
                self.failed += 1
                self.last_error = str(exc)
                log.warning("audit checkpoint not timestamped (attempt %d; retried in %gs): %s", self.failed,
                            self.settings.audit_tsa_interval_s, exc)
            except Exception as exc:  # noqa: BLE001 - a timestamp is never worth stopping the worker
                self.failed += 1
                self.last_error = type(exc).__name__
                log.warning("audit checkpoint not timestamped (attempt %d): %s", self.failed, type(exc).__name__)

    def stamp_newest(self) -> Stamp | None:
        """Timestamp and publish the newest sealed checkpoint unless it already is; the stamp, or
        None when there was nothing new. `TimestampError` when the TSA or the broker fails."""
        checkpoint = self.latest()
        if checkpoint is None or (checkpoint.writer, checkpoint.sequence) == self._done:
            return None
        body = self.checkpoint_codec.signed_body(checkpoint)
        request = request_for(body)
        answer = ask_tsa(self.url, request.as_bytes(), self.settings.audit_tsa_timeout_s)
        try:
            response = accept(request, answer, self.trust)
        except TimestampError as exc:
            raise TimestampError(f"TSA {self.tsa}: {exc}") from None
        stamp = Stamp(checkpoint.writer, checkpoint.sequence, request.message_imprint.message.hex(), self.tsa, gen_time(response),
                      base64.b64encode(response.as_bytes()).decode("ascii"))
        self._publish(stamp)
        self._done = (checkpoint.writer, checkpoint.sequence)
        if self.failed:
            log.info("TSA %s answers again after %d failed attempt(s)", self.tsa, self.failed)
        self.failed, self.last_error = 0, None
        self.stamped += 1
        return stamp

    def _publish(self, stamp: Stamp) -> None:
        buffer = BytesIO()
        schemaless_writer(buffer, self._parsed, stamp.to_record())
        failures: list[str] = []

        def delivered(error: KafkaError | None, _message: Message) -> None:
            if error is not None:
                failures.append(error.str())

        producer = self._producer or Producer(self.settings.producer_config())
        self._producer = producer
        producer.produce(TIMESTAMPS_TOPIC, key=stamp.writer.encode(), value=self._header + buffer.getvalue(), on_delivery=delivered)
        if producer.flush(self.settings.kafka_timeout_s) or failures:
            raise TimestampError(f"timestamp of checkpoint {stamp.sequence} not acknowledged by {TIMESTAMPS_TOPIC}: "
                                 f"{failures[0] if failures else 'timed out'}")
