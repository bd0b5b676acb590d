"""The ClickHouse sink: a batched confluent-kafka consumer that lands shared (or audit) topics in
the recipient's database, one table per provider event type.

Per batch (by size or by time, whichever comes first):
1. messages are grouped by table and writer schema id;
2. each group is inserted as one `FORMAT AvroConfluent` block: ClickHouse decodes the wire format
   itself, fetching writer schemas from the schema registry, so no Avro is decoded in Python;
   new fields of a newer writer schema are added to the table first (`ADD COLUMN IF NOT EXISTS`);
3. a group ClickHouse rejects is bisected down to the rejected rows, which go to `dlq.sink` with
   their original key, value and headers plus `error.reason` and `error.stage=sink`;
4. only then are the offsets committed (synchronously), and the after-batch hook (fraud rules) runs.

A sink killed at any point re-reads from the last commit; tables are ReplacingMergeTrees keyed on
the event id and views read them with `FINAL`, so redelivered rows never show twice.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError
from confluent_kafka import Consumer, KafkaException, Message, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from backbone.catalog import Catalog
from backbone.errors import SinkError
from backbone.keyring import Keyring
from backbone.policy.agreements import Charter
from backbone.policy.engine import PolicyEngine
from backbone.settings import Settings
from backbone.topics import AUDIT_TOPIC, Topics, dlq_topic
from consumers import ddl
from consumers.typemap import Column, TypeMappingError, merge_columns, table_columns

log = logging.getLogger("backbone.sink")

DLQ_TOPIC = dlq_topic("sink")
STAGE = "sink"
INSERT_ATTEMPTS = 5
BACKOFF_S = 0.5  # doubled after each failed attempt: 0.5, 1, 2, 4 s
WIRE_HEADER = 5
_CODE = re.compile(r"Code: (\d+)")
_NAME = re.compile(r"\(([A-Z][A-Z0-9_]+)\)")


@dataclass(slots=True, frozen=True)
class Destination:
    """One table a sink lands into."""

    database: str
    table: str
    order_by: tuple[str, ...] = ("event_id",)
    retention_days: int | None = None

    @property
    def name(self) -> str:
        return ddl.qualified(self.database, self.table)


@dataclass
class SinkPlan:
    """What one sink consumes and where it lands it; built from the charter, not per message."""

    name: str
    group_id: str
    subscription: str  # a topic name, or a `^regex`
    route: Callable[[str], Destination]  # topic -> destination
    databases: tuple[str, ...]
    tables: dict[Destination, list[Column]] = field(default_factory=dict)
    views: list[str] = field(default_factory=list)


@dataclass(slots=True)
class SinkStats:
    landed: int = 0
    dead_lettered: int = 0
    batches: int = 0
    commits: int = 0
    # where the time goes, in seconds: waiting in consume, inserting, committing, the after-batch hook
    consume_s: float = 0.0
    insert_s: float = 0.0
    commit_s: float = 0.0
    hook_s: float = 0.0


def recipient_plan(settings: Settings, charter: Charter, recipient: str) -> SinkPlan:
    """Tables (from every agreement version's recipient schema), TTLs and per-agreement views of one agency."""
    # The released schema does not depend on key material: an ephemeral keyring compiles the
    # charter, so the sink never holds pseudonymisation keys.
    engine = PolicyEngine(charter, Keyring(autocreate=True))
    database = ddl.database_name(settings.clickhouse_database_prefix, recipient)
    agreements = [a for a in charter.agreements if a.recipient == recipient]
    columns: dict[str, list[Column]] = {}
    retention: dict[str, int] = {}
    for agreement in agreements:
        for event_type in agreement.event_types:
            schema = engine.recipient_schema(agreement.id, event_type, version=agreement.version)
            where = f"agreement {agreement.key}, {event_type}"
            columns[event_type] = merge_columns(columns.get(event_type, []), table_columns(schema), where)
            retention[event_type] = max(retention.get(event_type, 0), agreement.retention_days)

    prefix = f"shared.{recipient}."

    def route(topic: str) -> Destination:
        event_type = topic[len(prefix):] if topic.startswith(prefix) else topic
        return Destination(database, ddl.table_name(event_type), ("event_id",), retention.get(event_type))

    plan = SinkPlan(
        name=recipient,
        group_id=f"backbone-sink-{settings.clickhouse_database_prefix}{recipient}",
        subscription="^" + re.escape(prefix) + ".*",
        route=route,
        databases=(database,),
    )
    for event_type, cols in columns.items():
        plan.tables[route(prefix + event_type)] = cols
    for agreement_id in sorted({a.id for a in agreements}):
        current = engine.charter.get(agreement_id)
        for event_type in current.event_types:
            fields = engine.released_fields(agreement_id, event_type)
            view = ddl.view_name(agreement_id, event_type, current.event_types)
            plan.views.append(ddl.create_view_sql(database, view, ddl.table_name(event_type), fields))
    return plan


def audit_plan(settings: Settings, catalog: Catalog | None = None) -> SinkPlan:
    """`audit.decisions` into `<prefix>audit.decisions`, one row per (event, recipient)."""
    path = Path(settings.schemas_dir) / "backbone.AuditDecision.avsc"
    try:
        schema = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SinkError(f"{path}: cannot read the audit decision schema ({type(exc).__name__}); set BACKBONE_SCHEMAS_DIR") from None
    database = ddl.database_name(settings.clickhouse_database_prefix, ddl.AUDIT_DATABASE)
    destination = Destination(database, ddl.AUDIT_TABLE, ("event_id", "recipient"), None)
    return SinkPlan(
        name="audit",
        group_id=f"backbone-sink-{settings.clickhouse_database_prefix}audit",
        subscription=AUDIT_TOPIC,
        route=lambda topic: destination,
        databases=(database,),
        tables={destination: table_columns(schema)},
    )


def clickhouse_error(exc: BaseException) -> str:
    """ClickHouse's error code and name only (`code 27 CANNOT_PARSE_INPUT`): its messages may quote values."""
    text = str(exc)
    code = _CODE.search(text)
    names = _NAME.findall(text)
    parts = [f"code {code.group(1)}" if code else type(exc).__name__]
    if names:
        parts.append(names[-1])
    return " ".join(parts)


def rejection_reason(exc: BaseException) -> str:
    return "clickhouse rejected the row: " + clickhouse_error(exc)


class Sink:
    """Lands one plan's topics in ClickHouse. Use `run(stop_event)` in a thread or
    `run_until_idle()` to drain what is there; `close()` when done."""

    def __init__(
        self,
        settings: Settings,
        plan: SinkPlan,
        client: Client,
        registry: SchemaRegistryClient,
        *,
        after_batch: Callable[[set[Destination]], None] | None = None,
        batch_rows: int | None = None,
        batch_seconds: float | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.on_close = on_close
        self.plan = plan
        self.client = client
        self.registry = registry
        self.after_batch = after_batch
        self.batch_rows = batch_rows or settings.sink_batch_rows
        self.batch_seconds = batch_seconds or settings.sink_batch_seconds
        self.stats = SinkStats()
        self._pending: list[Message] = []
        self._deadline = 0.0
        self._columns: dict[Destination, dict[str, str]] = {}  # table -> column name -> type
        self._fields: dict[tuple[Destination, int], list[str]] = {}  # (table, schema id) -> field names
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._insert_settings = {"format_avro_schema_registry_url": settings.schema_registry_url}
        self._ready = False

    # set-up ---------------------------------------------------------------------------------
    def setup(self) -> None:
        """Create the databases, tables and views of the plan, and the DLQ topic (idempotent)."""
        if self._ready:
            return
        try:
            for database in self.plan.databases:
                self.client.command(ddl.create_database_sql(database))
            for destination, columns in self.plan.tables.items():
                self._create_table(destination, columns)
            for statement in self.plan.views:
                self.client.command(statement)
        except DatabaseError as exc:
            raise SinkError(f"sink {self.plan.name}: ClickHouse refused the schema set-up ({clickhouse_error(exc)})") from exc
        Topics(self.settings).ensure(DLQ_TOPIC)
        self._ready = True

    def _create_table(self, destination: Destination, columns: list[Column]) -> None:
        self.client.command(ddl.create_table_sql(destination.database, destination.table, columns, destination.order_by, destination.retention_days))
        known = self._table_columns(destination)
        missing = [column for column in columns if column.name not in known]
        statement = ddl.add_columns_sql(destination.database, destination.table, missing)
        if statement:
            self.client.command(statement)
            known.update((column.name, column.type) for column in missing)

    def _table_columns(self, destination: Destination) -> dict[str, str]:
        if destination not in self._columns:
            result = self.client.query(
                "SELECT name, type FROM system.columns WHERE database = {db:String} AND table = {t:String}",
                parameters={"db": destination.database, "t": destination.table},
            )
            self._columns[destination] = {name: kind for name, kind in result.result_rows}
        return self._columns[destination]

    # the loop -------------------------------------------------------------------------------
    def _open(self) -> Consumer:
        if self._consumer is None:
            self.setup()
            config = self.settings.consumer_config(
                self.plan.group_id,
                **{"topic.metadata.refresh.interval.ms": 2000, "fetch.wait.max.ms": 100, "enable.partition.eof": False},
            )
            self._consumer = Consumer(config)
            self._producer = Producer(self.settings.producer_config())
            self._consumer.subscribe([self.plan.subscription], on_revoke=self._on_revoke)
        return self._consumer

    def _on_revoke(self, consumer: Consumer, partitions: list) -> None:
        # land and commit what we hold before another member takes these partitions over
        self.flush()

    def poll(self, timeout: float = 0.5) -> int:
        """Consume once; land and commit when the batch is full or old enough. Returns messages read."""
        consumer = self._open()
        room = max(1, self.batch_rows - len(self._pending))
        # librdkafka's consume() waits for `room` messages or the whole timeout, whichever comes
        # first: never wait longer than a batch may take, or batches take the poll timeout instead.
        if self._pending:
            timeout = max(0.0, min(timeout, self._deadline - time.monotonic()))
        else:
            timeout = min(timeout, self.batch_seconds)
        started = time.perf_counter()
        messages = consumer.consume(num_messages=min(room, 10_000), timeout=timeout)
        self.stats.consume_s += time.perf_counter() - started
        read = 0
        for message in messages:
            error = message.error()
            if error is not None:
                if not error.retriable():
                    log.warning("sink %s: consumer error %s", self.plan.name, error.str())
                continue
            if not self._pending:
                self._deadline = time.monotonic() + self.batch_seconds
            self._pending.append(message)
            read += 1
        if self._pending and (len(self._pending) >= self.batch_rows or time.monotonic() >= self._deadline):
            self.flush()
        return read

    def run(self, stop: threading.Event) -> None:
        """Land until `stop` is set; what is pending is landed and committed before returning."""
        try:
            while not stop.is_set():
                self.poll(0.5)
            self.flush()
        finally:
            self.close()

    def run_until_idle(self, idle_s: float = 2.0, timeout_s: float = 120.0) -> SinkStats:
        """Land until no message arrived for `idle_s` after partitions were assigned (or `timeout_s`)."""
        consumer = self._open()
        started = last = time.monotonic()
        while time.monotonic() - started < timeout_s:
            now = time.monotonic()
            if self.poll(0.2):
                last = time.monotonic()
            elif not consumer.assignment() and self._subscribed_topics_exist(consumer):
                # joining takes up to a session timeout (longer after a crash: the dead member's
                # session must expire first); a subscription matching no topic never gets partitions
                last = now
            elif now - last >= idle_s:
                break
        self.flush()
        return self.stats

    def _subscribed_topics_exist(self, consumer: Consumer) -> bool:
        subscription = self.plan.subscription
        try:
            topics = consumer.list_topics(timeout=self.settings.kafka_timeout_s).topics
        except KafkaException:
            return True
        if subscription.startswith("^"):
            pattern = re.compile(subscription)
            return any(pattern.match(topic) for topic in topics)
        return subscription in topics

    def flush(self) -> None:
        """Land every pending message, then commit the consumer's offsets."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        groups: dict[Destination, list[Message]] = {}
        for message in pending:
            groups.setdefault(self.plan.route(message.topic()), []).append(message)
        started = time.perf_counter()
        for destination, messages in groups.items():
            self._land(destination, messages)
        landed = time.perf_counter()
        self.stats.insert_s += landed - started
        assert self._producer is not None and self._consumer is not None
        if self._producer.flush(self.settings.kafka_timeout_s) > 0:
            raise SinkError(f"sink {self.plan.name}: dead letters not acknowledged by {DLQ_TOPIC} in time; offsets not committed")
        try:
            self._consumer.commit(asynchronous=False)
            self.stats.commits += 1
        except KafkaException as exc:
            # rows are landed; a redelivery after this collapses on the event id
            log.warning("sink %s: offset commit failed (%s); the batch will be re-read and deduplicated", self.plan.name, exc.args[0].str())
        self.stats.batches += 1
        committed = time.perf_counter()
        self.stats.commit_s += committed - landed
        if self.after_batch is not None:
            self.after_batch(set(groups))
            self.stats.hook_s += time.perf_counter() - committed

    # landing --------------------------------------------------------------------------------
    def _land(self, destination: Destination, messages: list[Message]) -> None:
        by_schema: dict[int, list[Message]] = {}
        for message in messages:
            value = message.value()
            if value is None or len(value) < WIRE_HEADER or value[0] != 0:
                self._dead_letter(message, "not Confluent wire format (magic byte 0 and a 4-byte schema id)")
                continue
            by_schema.setdefault(int.from_bytes(value[1:WIRE_HEADER], "big"), []).append(message)
        for schema_id, group in by_schema.items():
            try:
                fields = self._fields_for(destination, schema_id)
            except (SchemaRegistryError, TypeMappingError, SinkError) as exc:
                reason = exc.error_message if isinstance(exc, SchemaRegistryError) else str(exc)
                for message in group:
                    self._dead_letter(message, f"writer schema id {schema_id}: {reason}")
                continue
            self._insert(destination, fields, group)

    def _fields_for(self, destination: Destination, schema_id: int) -> list[str]:
        cached = self._fields.get((destination, schema_id))
        if cached is not None:
            return cached
        try:
            schema = json.loads(self.registry.get_schema(schema_id).schema_str)
        except SchemaRegistryError:
            raise
        except Exception as exc:  # noqa: BLE001 - transport errors
            raise SinkError(f"schema registry at {self.settings.schema_registry_url} did not answer ({type(exc).__name__})") from exc
        columns = table_columns(schema)
        known = self._table_columns(destination)
        if not known:
            self._create_table(destination, columns)
            known = self._table_columns(destination)
        for column in columns:
            if column.name in known and known[column.name] != column.type:
                raise TypeMappingError(f"field {column.name} is {column.type} but column {destination.name}.{column.name} is {known[column.name]}")
        self._create_table(destination, columns)  # adds the fields the table lacks
        names = [column.name for column in columns]
        self._fields[(destination, schema_id)] = names
        return names

    def _insert(self, destination: Destination, fields: list[str], messages: list[Message]) -> None:
        block = b"".join(message.value() for message in messages)
        try:
            self._with_retries(destination, lambda: self.client.raw_insert(
                destination.name, fields, insert_block=block, fmt="AvroConfluent", settings=self._insert_settings))
        except OperationalError:
            raise
        except DatabaseError as exc:
            if len(messages) == 1:
                self._dead_letter(messages[0], rejection_reason(exc))
                return
            middle = len(messages) // 2
            self._insert(destination, fields, messages[:middle])
            self._insert(destination, fields, messages[middle:])
            return
        self.stats.landed += len(messages)

    def _with_retries(self, destination: Destination, insert: Callable[[], object]) -> None:
        delay = BACKOFF_S
        for attempt in range(1, INSERT_ATTEMPTS + 1):
            try:
                insert()
                return
            except OperationalError as exc:  # ClickHouse unreachable or overloaded: try again
                if attempt == INSERT_ATTEMPTS:
                    raise SinkError(
                        f"sink {self.plan.name}: insert into {destination.name} failed {attempt} times "
                        f"({type(exc).__name__}); offsets not committed, restart to resume"
                    ) from exc
                log.warning("sink %s: insert into %s failed (%s), retry in %.1fs", self.plan.name, destination.name, type(exc).__name__, delay)
                time.sleep(delay)
                delay *= 2

    def _dead_letter(self, message: Message, reason: str) -> None:
        assert self._producer is not None
        headers = list(message.headers() or [])
        headers += [
            ("error.reason", reason.encode()),
            ("error.stage", STAGE.encode()),
            ("error.topic", message.topic().encode()),
            ("error.partition", str(message.partition()).encode()),
            ("error.offset", str(message.offset()).encode()),
        ]
        self._producer.produce(DLQ_TOPIC, key=message.key(), value=message.value(), headers=headers)
        self._producer.poll(0)
        self.stats.dead_lettered += 1
        log.warning("sink %s: %s:%s@%s to %s: %s", self.plan.name, message.topic(), message.partition(), message.offset(), DLQ_TOPIC, reason)

    def close(self) -> None:
        """Leave the consumer group and flush the DLQ producer (pending rows are not landed)."""
        if self._consumer is not None:
            try:
                self._consumer.close()
            except RuntimeError:
                pass
            self._consumer = None
        if self._producer is not None:
            self._producer.flush(self.settings.kafka_timeout_s)
            self._producer = None
        on_close, self.on_close = self.on_close, None
        if on_close is not None:
            on_close()


def sinks_for(settings: Settings, charter: Charter, client: Client | Callable[[], Client], registry: SchemaRegistryClient,
              recipients: Iterable[str] | None = None, audit: bool = True) -> list[Sink]:
    """One sink per recipient (and the audit sink); the fraud recipient's runs the fraud rules.

    Given a client factory (e.g. `lambda: make_client(dsn)`), each sink and the fraud rules get a
    client of their own, closed with the sink: chDB serialises calls per client, so one shared
    client makes every sink wait for the others (and for the fraud rules). The fraud rules then run
    on their own thread, at most every `fraud_interval_s`, instead of inside the fraud sink's batch.
    """
    from consumers.fraud import BackgroundDetection, FraudDetector

    make = client if callable(client) and not isinstance(client, Client) else None
    chosen = sorted(set(recipients) if recipients is not None else {a.recipient for a in charter.agreements})
    sinks = []
    for recipient in chosen:
        plan = recipient_plan(settings, charter, recipient)
        own = make() if make else client
        hook, closers = None, [own.close] if make else []
        if recipient == settings.fraud_recipient:
            if make:
                rules_client = make()
                background = BackgroundDetection(FraudDetector(settings, rules_client, registry), settings.fraud_interval_s)
                hook = background.after_batch
                closers = [background.close, rules_client.close, *closers]
            else:
                hook = FraudDetector(settings, own, registry).after_batch
        sinks.append(Sink(settings, plan, own, registry, after_batch=hook, on_close=_chain(closers)))
    if audit:
        own = make() if make else client
        sinks.append(Sink(settings, audit_plan(settings), own, registry, on_close=own.close if make else None))
    return sinks


def _chain(calls: list[Callable[[], None]]) -> Callable[[], None] | None:
    if not calls:
        return None

    def run() -> None:
        for call in calls:
            call()

    return run
