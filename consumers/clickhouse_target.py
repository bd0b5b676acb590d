"""The ClickHouse target of a sink: lands a batch of Confluent-wire-format Avro messages in the
tables of a `SinkPlan`.

Per batch:
1. messages are grouped by table (the plan routes each topic) and writer schema id;
2. each group is inserted as one `FORMAT AvroConfluent` block: ClickHouse decodes the wire format
   itself, fetching writer schemas from the schema registry, so no Avro is decoded in Python;
   new fields of a newer writer schema are added to the table first (`ADD COLUMN IF NOT EXISTS`);
3. an unreachable or overloaded ClickHouse or schema registry (connection errors, timeouts, 5xx,
   ClickHouse's own failure to fetch a writer schema) raises `TargetUnavailable`: the batching
   loop retries the whole batch with backoff and commits nothing meanwhile; only a group ClickHouse
   rejects as data is bisected down to the rejected rows, returned as rejections for the DLQ
   (`clickhouse_rejected`, the ClickHouse error code as detail).

Tables are ReplacingMergeTrees keyed on the event id and views read them with `FINAL`, so rows
landed twice (a redelivery after a crash) never show twice.
"""

from __future__ import annotations

import json
import logging
import re

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError
from confluent_kafka import Message
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from backbone.clickhouse.cluster import insert_settings
from backbone.errors import SinkError
from backbone.events.serde import HEADER_SIZE, MAGIC
from backbone.settings import Settings
from consumers import ddl
from consumers.batching import Rejection, TargetUnavailable, Written
from consumers.plans import Destination, SinkPlan
from consumers.typemap import Column, TypeMappingError, table_columns

log = logging.getLogger("backbone.sink")

# ClickHouse error codes that say "not now" rather than "not this data": the batch is retried.
TRANSIENT_CODES = frozenset({
    3,    # UNEXPECTED_END_OF_FILE (connection cut)
    159,  # TIMEOUT_EXCEEDED
    164,  # READONLY (a replica in read-only mode)
    202,  # TOO_MANY_SIMULTANEOUS_QUERIES
    209,  # SOCKET_TIMEOUT
    210,  # NETWORK_ERROR (also: the schema registry did not answer ClickHouse)
    241,  # MEMORY_LIMIT_EXCEEDED
    242,  # TABLE_IS_READ_ONLY
    243,  # NOT_ENOUGH_SPACE
    252,  # TOO_MANY_PARTS
    319,  # UNKNOWN_STATUS_OF_INSERT
    425,  # SYSTEM_ERROR
    999,  # KEEPER_EXCEPTION
})
# A table or database this sink has just created, not there yet: on a cluster the CREATE ran on
# another server (a service balancing requests over replicas) and replicates `ON CLUSTER` shortly.
# Retried like the codes above (the sink creates the table again first), never dead-lettered.
UNKNOWN_OBJECT_CODES = frozenset({
    60,   # UNKNOWN_TABLE
    81,   # UNKNOWN_DATABASE
})
# ClickHouse fetches writer schemas from the registry itself; any failure to do so is the registry's,
# never the row's (this sink looked the same schema id up just before).
_SCHEMA_FETCH = "while fetching schema id"
SCHEMA_NOT_FOUND = 40403  # the registry's error code for an unknown schema id
_CODE = re.compile(r"Code: (\d+)")
_NAME = re.compile(r"\(([A-Z][A-Z0-9_]+)\)")


def clickhouse_error(exc: BaseException) -> str:
    """ClickHouse's error code and name only (`code 27 CANNOT_PARSE_INPUT`): its messages may quote values."""
    text = str(exc)
    code = _CODE.search(text)
    names = _NAME.findall(text)
    parts = [f"code {code.group(1)}" if code else type(exc).__name__]
    if names:
        parts.append(names[-1])
    return " ".join(parts)


def same_type(existing: str, wanted: str) -> bool:
    """Whether a column's type as `system.columns` reports it is the type a schema maps to
    (ClickHouse reports tuple element names unquoted)."""
    return existing.replace("`", "") == wanted.replace("`", "")


def transient(exc: BaseException) -> bool:
    """Whether a ClickHouse error says "try again later" (overload, network, the registry) rather
    than "this row is wrong"."""
    text = str(exc)
    code = _CODE.search(text)
    return _SCHEMA_FETCH in text or (code is not None and int(code.group(1)) in TRANSIENT_CODES | UNKNOWN_OBJECT_CODES)


def unknown_object(exc: BaseException) -> bool:
    """Whether ClickHouse says the table or database does not exist (yet, on the server that answered)."""
    code = _CODE.search(str(exc))
    return code is not None and int(code.group(1)) in UNKNOWN_OBJECT_CODES


class _Refused(Exception):
    """A writer schema this table cannot hold; carries the DLQ reason code and a detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


class ClickHouseTarget:
    """Writes batches into the tables of one plan through one clickhouse-connect client."""

    def __init__(self, settings: Settings, plan: SinkPlan, client: Client, registry: SchemaRegistryClient) -> None:
        self.settings = settings
        self.plan = plan
        self.name = plan.name
        self.client = client
        self.registry = registry
        self._columns: dict[Destination, dict[str, str]] = {}  # table -> column name -> type
        self._fields: dict[tuple[Destination, int], list[str]] = {}  # (table, schema id) -> field names
        # ClickHouse fetches writer schemas itself and takes registry credentials only in the URL. On a
        # sharded cluster a batch is on its shards when the insert returns (the sink commits then, and
        # the fraud rules' next run reads it), not queued on the server that took it.
        self._insert_settings = {"format_avro_schema_registry_url": settings.schema_registry_url_with_credentials(),
                                 **insert_settings(plan.cluster)}

    # set-up ---------------------------------------------------------------------------------
    def setup(self) -> None:
        """Create the databases, tables and views of the plan (idempotent)."""
        try:
            for database in self.plan.databases:
                self.client.command(ddl.create_database_sql(database, self.plan.cluster))
            for destination, columns in self.plan.tables.items():
                self._create_table(destination, columns)
            for statement in self.plan.views:
                self.client.command(statement)
        except DatabaseError as exc:
            raise SinkError(f"sink {self.name}: ClickHouse refused the schema set-up ({clickhouse_error(exc)})") from exc

    def _create_table(self, destination: Destination, columns: list[Column]) -> None:
        cluster = self.plan.cluster
        for statement in ddl.table_sql(destination.database, destination.table, columns, destination.order_by,
                                       destination.retention_days, cluster, destination.shard_by, destination.projections):
            self.client.command(statement)
        known = self._table_columns(destination)
        missing = [column for column in columns if column.name not in known]
        if missing:
            for table in ddl.cluster_tables(destination.table, cluster):
                self.client.command(ddl.add_columns_sql(destination.database, table, missing, cluster))  # type: ignore[arg-type]
            known.update((column.name, column.type) for column in missing)
        default = self.client.query(
            "SELECT default_expression FROM system.columns WHERE database = {db:String} AND table = {t:String} AND name = {c:String}",
            parameters={"db": destination.database, "t": destination.table, "c": ddl.LANDED_AT}).result_rows
        if default and default[0][0] != ddl.LANDED_AT_DEFAULT:
            statements = ddl.coarsen_landed_at_sql(destination.database, destination.table, cluster)
            try:
                for statement in statements:
                    self.client.command(statement)
            except DatabaseError as exc:  # e.g. a sink user without ALTER: the operator runs it once
                log.warning("sink %s: %s keeps _landed_at to the second (%s); run as an administrator: %s", self.name,
                            ddl.qualified(destination.database, destination.table), clickhouse_error(exc), "; ".join(statements))

    def _table_columns(self, destination: Destination) -> dict[str, str]:
        if destination not in self._columns:
            result = self.client.query(
                "SELECT name, type FROM system.columns WHERE database = {db:String} AND table = {t:String}",
                parameters={"db": destination.database, "t": destination.table},
            )
            self._columns[destination] = {name: kind for name, kind in result.result_rows}
        return self._columns[destination]

    # writing --------------------------------------------------------------------------------
    def write(self, messages: list[Message]) -> Written:
        try:
            return self._write(messages)
        except OperationalError as exc:  # a DDL or system.columns lookup met an unreachable ClickHouse
            raise TargetUnavailable(f"ClickHouse did not answer ({type(exc).__name__})") from None
        except DatabaseError as exc:  # a DDL right after another server's: retried, the batch kept
            if transient(exc):
                raise TargetUnavailable(f"ClickHouse: {clickhouse_error(exc)}") from None
            raise

    def _write(self, messages: list[Message]) -> Written:
        written = Written()
        groups: dict[Destination, list[Message]] = {}
        for message in messages:
            groups.setdefault(self.plan.route(message.topic()), []).append(message)
        for destination, group in groups.items():
            self._land(destination, group, written)
            written.destinations.add(destination)
        return written

    def _land(self, destination: Destination, messages: list[Message], written: Written) -> None:
        by_schema: dict[int, list[Message]] = {}
        for message in messages:
            value = message.value()
            if not value:
                written.rejected.append(Rejection(message, "empty_value"))
            elif len(value) < HEADER_SIZE:
                written.rejected.append(Rejection(message, "truncated_message"))
            elif value[0] != MAGIC:
                written.rejected.append(Rejection(message, "bad_magic_byte"))
            else:
                by_schema.setdefault(int.from_bytes(value[1:HEADER_SIZE], "big"), []).append(message)
        for schema_id, group in by_schema.items():
            try:
                fields = self._fields_for(destination, schema_id)
            except _Refused as refused:
                written.rejected.extend(Rejection(message, refused.reason, refused.detail) for message in group)
                continue
            self._insert(destination, fields, group, written)

    def _fields_for(self, destination: Destination, schema_id: int) -> list[str]:
        cached = self._fields.get((destination, schema_id))
        if cached is not None:
            return cached
        try:
            registered = self.registry.get_schema(schema_id)
            schema = json.loads(registered.schema_str)
        except SchemaRegistryError as exc:
            if exc.error_code == SCHEMA_NOT_FOUND or exc.http_status_code == 404:
                raise _Refused("unknown_schema_id", f"schema id {schema_id}: registry error {exc.error_code}") from None
            # 5xx, or 401/403 (credentials the operator must fix): the registry's trouble, not the row's
            raise TargetUnavailable(f"schema registry answered {exc.http_status_code} for schema id {schema_id}") from None
        except Exception as exc:  # noqa: BLE001 - transport errors: connection refused, timeouts
            raise TargetUnavailable(f"schema registry did not answer for schema id {schema_id} ({type(exc).__name__})") from None
        if registered.references:
            # ClickHouse reads the writer schema's own text and cannot follow references. Shared
            # topics carry the processor's self-contained recipient schemas, so this is no event of ours.
            raise _Refused("schema_unreadable", f"schema id {schema_id} uses schema references, which ClickHouse's "
                                                "AvroConfluent format cannot resolve; write self-contained schemas to shared topics")
        try:
            columns = table_columns(schema)
        except TypeMappingError as exc:
            raise _Refused("schema_unreadable", f"schema id {schema_id}: {exc}") from None
        known = self._table_columns(destination)
        if not known:
            self._create_table(destination, columns)
            known = self._table_columns(destination)
        for column in columns:
            if column.name in known and not same_type(known[column.name], column.type):
                raise _Refused("type_mismatch", f"schema id {schema_id}: field {column.name} is {column.type}, "
                                                f"column {destination.name}.{column.name} is {known[column.name]}")
        self._create_table(destination, columns)  # adds the fields the table lacks
        names = [column.name for column in columns]
        self._fields[(destination, schema_id)] = names
        return names

    def _insert(self, destination: Destination, fields: list[str], messages: list[Message], written: Written) -> None:
        block = b"".join(message.value() for message in messages)
        try:
            summary = self.client.raw_insert(destination.name, fields, insert_block=block, fmt="AvroConfluent",
                                             settings=self._insert_settings)
        except OperationalError as exc:  # ClickHouse unreachable
            raise TargetUnavailable(f"insert into {destination.name}: {type(exc).__name__}") from None
        except DatabaseError as exc:
            if unknown_object(exc):  # created again before the retry, in case it was lost rather than late
                self._columns.pop(destination, None)
                self._fields = {key: names for key, names in self._fields.items() if key[0] != destination}
            if transient(exc):
                raise TargetUnavailable(f"insert into {destination.name}: {clickhouse_error(exc)}") from None
            if len(messages) == 1:
                written.rejected.append(Rejection(messages[0], "clickhouse_rejected", clickhouse_error(exc)))
                return
            middle = len(messages) // 2
            self._insert(destination, fields, messages[:middle], written)
            self._insert(destination, fields, messages[middle:], written)
            return
        written.landed += landed_rows(summary, len(messages))

    def close(self) -> None:
        """Nothing to release: the client belongs to whoever made the target."""


def landed_rows(summary: object, messages: int) -> int:
    """Rows an insert wrote, as ClickHouse reports them: a message of `audit.decisions` carries up to
    64 audit records, each a row (`backbone.audit.batches`). A server that reports no rows (an
    asynchronous insert not waited for) counts one row per message, as before."""
    rows = getattr(summary, "written_rows", 0)
    return rows if isinstance(rows, int) and rows > 0 else messages
