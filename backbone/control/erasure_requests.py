"""Erasure requests: the key holder computes a person's tokens, the operator never holds a domain key.

An operator erases without any pseudonym key (`backbone.keys.roles`):
1. the operator publishes an `ErasureRequest` on `erasure.requests`, keyed by the action id: the
   subject's id, who asks and the subject's DLQ key handles. Only the processors may read that
   topic (deploy/ ACLs), which already read the raw topics' ids; it keeps a request one hour;
2. a processor (`ErasureDesk`, in every worker) answers it with its keyring: the erasure record on
   `erasures` (oversight tokens: every worker then denies the subject's events) and the deletion
   work on `erasure.work`, keyed by the same action id: per recipient database, the rows to delete
   (the subject's pseudonyms in that database's domains, encrypted forms, the clear id where an
   identified agreement keeps it);
3. the operator reads its work (`await_work`), deletes the rows and the alerts found through them,
   and records the erasure on `audit.operations` (`backbone.control.erasure.erase`).

The operator thus sees the pseudonyms of the one person it erases (it knows who that is), never a
key: it cannot compute anyone else's. `erasure.work` is the operators' only (deploy/ ACLs) and keeps
an answer one hour. Answering twice (several workers, a restart) publishes the same record again.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from backbone.errors import BackboneError, KafkaUnavailableError
from backbone.kafka.compacted import CompactedTopicReader, Retry
from backbone.kafka.topics import ERASURE_REQUESTS_TOPIC, ERASURE_WORK_TOPIC, Topics
from backbone.keys.keyring import Keyring
from backbone.policy.agreements import Charter
from backbone.settings import Settings

log = logging.getLogger(__name__)

REQUESTS_TOPIC = ERASURE_REQUESTS_TOPIC
WORK_TOPIC = ERASURE_WORK_TOPIC
# A request or its answer is needed only while one `backbone erase` waits (or a processor starts).
RETENTION_MS = 3_600_000


@dataclass(slots=True, frozen=True)
class ErasureRequest:
    """What an operator asks the processors: erase `subject` (the id, read only by processors)."""

    action_id: str
    subject: str
    at: datetime
    by: str
    dlq_handles: tuple[str, ...] = ()

    def to_json(self) -> bytes:
        return json.dumps({"action_id": self.action_id, "subject": self.subject, "at": self.at.isoformat(), "by": self.by,
                           "dlq_handles": list(self.dlq_handles)}).encode()

    @classmethod
    def from_json(cls, value: bytes) -> ErasureRequest:
        try:
            data = json.loads(value)
            return cls(str(data["action_id"]), str(data["subject"]).strip(), datetime.fromisoformat(data["at"]), str(data["by"]),
                       tuple(str(item) for item in data.get("dlq_handles") or ()))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ValueError("not an erasure request (JSON with action_id, subject, at, by)") from None


@dataclass(slots=True, frozen=True)
class ErasureWork:
    """A processor's answer: the subject's oversight tokens and the rows to delete per database."""

    action_id: str
    token: str
    tokens: tuple[str, ...]
    targets: tuple[Any, ...]  # `backbone.control.erasure.RowTarget`

    def to_json(self) -> bytes:
        return json.dumps({"action_id": self.action_id, "token": self.token, "tokens": list(self.tokens),
                           "targets": [[t.database, t.table, t.column, list(t.values)] for t in self.targets]}).encode()

    @classmethod
    def from_json(cls, value: bytes) -> ErasureWork:
        from backbone.control.erasure import RowTarget

        try:
            data = json.loads(value)
            targets = tuple(RowTarget(str(d), str(t), str(c), tuple(str(v) for v in values)) for d, t, c, values in data["targets"])
            return cls(str(data["action_id"]), str(data["token"]), tuple(str(t) for t in data["tokens"]), targets)
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ValueError("not an erasure answer (JSON with action_id, token, tokens, targets)") from None


def ensure_topics(settings: Settings) -> None:
    topics = Topics(settings)
    for name in (REQUESTS_TOPIC, WORK_TOPIC):
        topics.ensure(name, partitions=1, config={"cleanup.policy": "delete", "retention.ms": str(RETENTION_MS)})


# --- the processor's side -------------------------------------------------------------------------
def answer(settings: Settings, charter: Charter, keyring: Keyring, request: ErasureRequest) -> ErasureWork:
    """Compute the request's tokens and rows with `keyring` (a processor's), publish the erasure
    record on `erasures`, then the work on `erasure.work`."""
    from backbone.control import erasure

    tokens = erasure.oversight_tokens(keyring, request.subject)
    erasure.publish(settings, erasure.ErasureRecord(tokens[0], tuple(tokens), request.at, request.by, request.action_id,
                                                    request.dlq_handles))
    targets = erasure.row_targets(charter, keyring, request.subject, settings.clickhouse_database_prefix)
    work = ErasureWork(request.action_id, tokens[0], tuple(tokens), tuple(targets))
    erasure._produce(settings, WORK_TOPIC, [(request.action_id.encode(), work.to_json())], "the erasure work")
    return work


class ErasureDesk:
    """Answers every erasure request with this process's keyring, in a thread (each worker runs one)."""

    def __init__(self, settings: Settings, charter: Charter, keyring: Keyring) -> None:
        self.settings, self.charter, self.keyring = settings, charter, keyring
        self.answered = 0
        self.reader = CompactedTopicReader(settings, REQUESTS_TOPIC, self.apply_message, "erasure-requests")

    def apply_message(self, message: Message) -> None:
        where = f"{message.topic()}[{message.partition()}]@{message.offset()}"
        if message.value() is None:
            return
        try:
            request = ErasureRequest.from_json(message.value())
        except ValueError:
            log.warning("erasure request at %s cannot be read: not answered", where)  # never its content
            return
        try:
            answer(self.settings, self.charter, self.keyring, request)
        except KafkaUnavailableError as exc:
            raise Retry(str(exc)) from None
        self.answered += 1
        log.info("answered erasure request %s (at %s)", request.action_id, where)

    def start(self) -> ErasureDesk:
        ensure_topics(self.settings)
        self.reader.start()
        return self

    def stop(self) -> None:
        self.reader.stop()


# --- the operator's side --------------------------------------------------------------------------
def new_action_id() -> str:
    return str(uuid.uuid4())


def request(settings: Settings, erasure_request: ErasureRequest) -> None:
    """Publish the request for the processors and wait for Kafka to acknowledge it."""
    from backbone.control.erasure import _produce

    ensure_topics(settings)
    _produce(settings, REQUESTS_TOPIC, [(erasure_request.action_id.encode(), erasure_request.to_json())], "the erasure request")


def await_work(settings: Settings, action_id: str, timeout: float) -> ErasureWork:
    """The processors' answer to request `action_id`, read from `erasure.work` (bounded by `timeout`)."""
    consumer = Consumer(settings.consumer_config(None))
    try:
        consumer.assign([TopicPartition(WORK_TOPIC, 0, OFFSET_BEGINNING)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error() is not None:
                if message.error().code() == KafkaError._PARTITION_EOF:
                    continue
                raise KafkaUnavailableError(f"cannot read {WORK_TOPIC} ({message.error().str()}); run `backbone erase` again")
            if message.key() == action_id.encode() and message.value() is not None:
                try:
                    return ErasureWork.from_json(message.value())
                except ValueError:
                    log.warning("an unreadable answer on %s for this request: still waiting", WORK_TOPIC)
    finally:
        consumer.close()
    raise BackboneError(f"no processor answered the erasure request within {timeout:.0f}s: is a processor running (`backbone "
                        f"process`)? It answers when it starts (requests keep {RETENTION_MS // 60_000} minutes); run `backbone "
                        "erase` again then")
