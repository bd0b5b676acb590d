"""Agreement changes in flight: the compacted `agreements.changes` topic.

Each record is one whole agreement version as YAML (`to_yaml`), keyed `id@version`; the latest
record per key is that version's truth. `apply` publishes a new or changed version; `suspend` and
`revoke` republish the current version with the new status. Every processor worker reads the whole
topic and swaps the change into its policy engine without a restart.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import yaml
from confluent_kafka import Message, Producer

from backbone.catalog import Catalog
from backbone.compacted import CompactedTopicReader
from backbone.errors import AgreementError, KafkaUnavailableError
from backbone.policy.agreements import Agreement, Charter, check_agreement, parse_agreement, to_yaml
from backbone.settings import Settings
from backbone.topics import AGREEMENTS_TOPIC, Topics


def ensure_topic(settings: Settings) -> None:
    Topics(settings).ensure(AGREEMENTS_TOPIC, partitions=1, config={"cleanup.policy": "compact"})


def parse_change(value: bytes, catalog: Catalog, source: str = AGREEMENTS_TOPIC) -> Agreement:
    """The agreement in one `agreements.changes` record, validated like a file (`AgreementError` if not)."""
    try:
        data = yaml.safe_load(value.decode())
    except (UnicodeDecodeError, yaml.YAMLError):
        raise AgreementError(f"{source}: a record is not YAML text of an agreement") from None
    agreement, problems = parse_agreement(data, source)
    if agreement is None:
        raise AgreementError(problems)
    problems = check_agreement(agreement, catalog, source)
    if problems:
        raise AgreementError(problems)
    return agreement


def publish(settings: Settings, agreements: list[Agreement]) -> None:
    """Publish agreement versions to `agreements.changes` and wait until the cluster has them."""
    ensure_topic(settings)
    producer = Producer(settings.producer_config())
    failures: list[str] = []

    def delivered(error, message: Message) -> None:  # noqa: ANN001
        if error is not None:
            failures.append(error.str())

    for agreement in agreements:
        producer.produce(AGREEMENTS_TOPIC, to_yaml(agreement).encode(), agreement.key.encode(), on_delivery=delivered)
    if producer.flush(settings.kafka_timeout_s) or failures:
        raise KafkaUnavailableError(f"agreement change not acknowledged by Kafka at {settings.kafka_bootstrap}: {failures[:1]}")


def published(settings: Settings, catalog: Catalog, timeout: float | None = None) -> dict[str, Agreement]:
    """The latest published version of every key (`id@version`) on the topic."""
    ensure_topic(settings)
    latest: dict[str, Agreement] = {}
    lock = threading.Lock()

    def take(message: Message) -> None:
        if message.value():
            agreement = parse_change(message.value(), catalog)
            with lock:
                latest[agreement.key] = agreement

    reader = CompactedTopicReader(settings, AGREEMENTS_TOPIC, take, "agreements-reader")
    reader.start()
    try:
        reader.wait_caught_up(timeout or settings.kafka_timeout_s * 2)
    finally:
        reader.stop()
    return latest


def current(settings: Settings, charter: Charter, agreement_id: str, version: int | None) -> Agreement:
    """The version to change: as last published, else as in the charter files (highest version by default)."""
    live = published(settings, charter.catalog)
    candidates = {a.key: a for a in charter.agreements if a.id == agreement_id}
    candidates.update({k: a for k, a in live.items() if a.id == agreement_id})
    if not candidates:
        raise AgreementError(f"no agreement {agreement_id!r} in the charter or on {AGREEMENTS_TOPIC}")
    if version is None:
        return max(candidates.values(), key=lambda a: a.version)
    key = f"{agreement_id}@{version}"
    if key not in candidates:
        raise AgreementError(f"agreement {agreement_id!r} has no version {version}")
    return candidates[key]


def change_status(settings: Settings, charter: Charter, agreement_id: str, version: int | None, status: str) -> Agreement:
    changed = current(settings, charter, agreement_id, version).model_copy(update={"status": status})
    publish(settings, [changed])
    return changed


def feed(settings: Settings, catalog: Catalog, apply: Callable[[Agreement], None]) -> CompactedTopicReader:
    """A reader that hands every published agreement version to `apply` (the engine's)."""
    ensure_topic(settings)

    def take(message: Message) -> None:
        if message.value():
            apply(parse_change(message.value(), catalog))

    return CompactedTopicReader(settings, AGREEMENTS_TOPIC, take, "agreements-feed")
