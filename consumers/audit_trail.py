"""Reading the landed audit trail back and verifying it (`backbone audit verify`, `audit subject`,
`audit receipt`): from the audit database, or from the topics themselves. The trail is the
decision records of every processor writer and the operator actions of the `operations` chain
(`backbone.audit.operations`), each chain sealed by its signed checkpoints.

From ClickHouse, each record's leaf is recomputed from its landed columns: the columns are the
record schema's fields, converted back to Avro values and encoded with the same schema, so an edit
to any of them changes the leaf. Rows are read without `FINAL`: a redelivered row is an identical
copy and counts once; two different rows at one position are reported. Records are read one
window of checkpoints at a time, so memory stays bounded by the window, not the trail.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from clickhouse_connect.driver.client import Client

from backbone.audit import anchors, log
from backbone.audit.log import Checkpoint, CheckpointCodec, Failure, RecordCodec, Report, leaf_hash
from backbone.audit.operations import OPERATIONS_WRITER
from backbone.audit.receipts import make_receipt, sealed_leaves
from backbone.audit.timestamps import Stamp, Trust, check_stamps
from backbone.events.catalog import AUDIT_CHECKPOINT, AUDIT_EVENT, AUDIT_TIMESTAMP, OPERATOR_ACTION, Catalog
from backbone.keys.keyring import PublicKey
from backbone.privacy import ledger
from backbone.quality.gating import release_event_id
from consumers import ddl
from consumers.plans import CHECKPOINTS_TABLE, TIMESTAMPS_TABLE
from consumers.typemap import quote_identifier

WINDOW_RECORDS = 50_000  # records read per query: bounds memory, not the trail's size
Position = tuple[str, int]  # (writer, checkpoint sequence)


@dataclass
class Trail:
    """What was read: checkpoints by writer, and per checkpoint the distinct leaf hashes per leaf."""

    checkpoints: dict[str, list[Checkpoint]] = field(default_factory=lambda: defaultdict(list))
    leaves: dict[Position, dict[int, set[bytes]]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(set)))
    decisions: dict[Position, dict[int, int]] = field(default_factory=lambda: defaultdict(dict))
    unreadable: dict[Position, list[int]] = field(default_factory=lambda: defaultdict(list))
    rows: dict[Position, int] = field(default_factory=lambda: defaultdict(int))
    stamps: list[Stamp] = field(default_factory=list)  # RFC 3161 timestamps of checkpoints
    actions: dict[int, dict[str, Any]] = field(default_factory=dict)  # the operator action at each operations checkpoint

    def add(self, position: Position, index: int, content: bytes, decisions: int) -> None:
        self.leaves[position][index].add(leaf_hash(content))
        self.decisions[position][index] = decisions
        self.rows[position] += 1


def codecs(catalog: Catalog) -> tuple[RecordCodec, CheckpointCodec]:
    return (RecordCodec.for_audit_schema(catalog.internal_schema(AUDIT_EVENT)),
            CheckpointCodec(catalog.internal_schema(AUDIT_CHECKPOINT)))


def operations_codec(catalog: Catalog) -> RecordCodec:
    """The content encoding of operator actions, which the `operations` chain seals."""
    return RecordCodec.for_audit_schema(catalog.internal_schema(OPERATOR_ACTION))


def verify_trail(trail: Trail, codec: RecordCodec, checkpoint_codec: CheckpointCodec, keys: Mapping[str, PublicKey],
                 only: set[Position] | None = None, operations: RecordCodec | None = None, trust: Trust | None = None) -> Report:
    """Every writer's chain, and the records of each checkpoint (of `only`, when given) against its
    root; the `operations` chain's records are operator actions (`operations` codec); the
    checkpoints' RFC 3161 timestamps against the chains, their tokens under `trust` (without it
    they are counted as unchecked)."""
    report = Report()
    sealed: set[Position] = set()
    chains: dict[str, dict[int, Checkpoint]] = {}
    for writer, checkpoints in sorted(trail.checkpoints.items()):
        good, interrupted, failures = log.check_chain(checkpoint_codec, writer, checkpoints, keys)
        chains[writer] = good
        report.chains[writer] = {sequence: checkpoint_codec.hash(checkpoint) for sequence, checkpoint in good.items()}
        report.failures += failures
        report.writers.add(writer)
        sealed |= {(writer, c.sequence) for c in checkpoints}
        for sequence, checkpoint in sorted(good.items()):
            position = (writer, sequence)
            if only is not None and position not in only:
                continue
            expected = operations if writer == OPERATIONS_WRITER and operations is not None else codec
            if checkpoint.schema != expected.fingerprint:
                report.failures.append(Failure(log.OTHER_SCHEMA, writer, sequence, "sealed under another audit record schema "
                                                                                   "than this catalog's; verify with that schema"))
                continue
            if trail.unreadable.get(position):
                report.failures.append(Failure(log.UNREADABLE_RECORD, writer, sequence, "records at leaf "
                                               f"{log._spans(trail.unreadable[position])} no longer fit the record schema: edited"))  # noqa: SLF001
                continue
            found = trail.leaves.get(position, {})
            problems = log.check_records(checkpoint, found, interrupted=sequence in interrupted)
            report.failures += [p for p in problems if p.kind != log.INTERRUPTED]
            report.warnings += [p for p in problems if p.kind == log.INTERRUPTED]
            if not problems:
                report.checkpoints += 1
                report.records += checkpoint.records
                report.decisions += sum(trail.decisions[position].values())
                if writer == OPERATIONS_WRITER:
                    report.operations += checkpoint.records
    for (writer, sequence), count in sorted(trail.rows.items()):
        if (writer, sequence) in sealed or (only is not None and (writer, sequence) not in only):
            continue
        if writer:
            report.failures.append(Failure(log.ORPHAN_RECORDS, writer, sequence, f"{count} records name this checkpoint, which does not exist"))
        else:
            report.failures.append(Failure(log.UNSEALED_RECORDS, "", None, f"{count} records carry no checkpoint "
                                                                           "(written before checkpoints existed, or forged)"))
    if only is None:  # who signed each operator action, the operations chain against the processors' anchors, and every DP spend
        anchors.check(report, chains, trail.actions, keys)
        report.failures += [Failure(p.kind, OPERATIONS_WRITER, p.sequence, p.detail) for p in ledger.recompute(trail.actions)[1]]
    if trail.stamps:
        _check_timestamps(report, trail.stamps, chains, checkpoint_codec, sealed, trust)
    return report


def _check_timestamps(report: Report, stamps: list[Stamp], chains: Mapping[str, Mapping[int, Checkpoint]],
                      checkpoint_codec: CheckpointCodec, present: set[Position], trust: Trust | None) -> None:
    hashes = {(writer, sequence): checkpoint_codec.hash(checkpoint)
              for writer, good in chains.items() for sequence, checkpoint in good.items()}
    found = check_stamps(stamps, hashes, present, trust)
    report.failures += found.failures
    report.warnings += found.warnings
    report.timestamps += found.verified
    report.timestamps_unchecked += found.unchecked
    report.timestamped_until = found.latest
    # a timestamp of checkpoint n vouches for the writer's chain up to n
    report.timestamped += sum(1 for writer, highest in found.highest.items() for sequence in chains.get(writer, {}) if sequence <= highest)


# --- from ClickHouse ---------------------------------------------------------------------------
def _named(schema: Any, named: dict[str, Any]) -> None:
    if isinstance(schema, list):
        for branch in schema:
            _named(branch, named)
    elif isinstance(schema, dict):
        if schema.get("type") in ("record", "enum", "fixed"):
            named[schema["name"]] = schema
        for key in ("type", "items", "values"):
            _named(schema.get(key), named)
        for item in schema.get("fields", []):
            _named(item["type"], named)


def from_clickhouse(value: Any, avro_type: Any, named: Mapping[str, Any]) -> Any:
    """A value as ClickHouse returns a column mapped from `avro_type` (`consumers.typemap`), back
    as the value Avro encodes."""
    if isinstance(avro_type, list):
        branches = [branch for branch in avro_type if branch != "null"]
        return None if value is None else from_clickhouse(value, branches[0], named)
    if isinstance(avro_type, str):
        if avro_type in named:
            return from_clickhouse(value, named[avro_type], named)
        return value.encode() if avro_type == "bytes" and isinstance(value, str) else value
    kind, logical = avro_type.get("type"), avro_type.get("logicalType")
    if logical == "uuid":
        return str(value) if isinstance(value, uuid.UUID) else value
    if logical in ("timestamp-millis", "timestamp-micros") and isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
        micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
        return micros // 1000 if logical == "timestamp-millis" else micros
    if kind == "record":
        items = value.values() if isinstance(value, dict) else value
        return {item["name"]: from_clickhouse(v, item["type"], named) for item, v in zip(avro_type["fields"], items, strict=True)}
    if kind == "array":
        return [from_clickhouse(item, avro_type["items"], named) for item in value]
    if kind == "map":
        return {k: from_clickhouse(v, avro_type["values"], named) for k, v in value.items()}
    if isinstance(kind, str | list) and kind not in ("enum", "fixed"):
        return from_clickhouse(value, kind, named)
    return value


def _select(schema: Mapping[str, Any], present: Collection[str] | None = None) -> str:
    columns = []
    for item in schema["fields"]:
        name = quote_identifier(item["name"])
        if present is not None and item["name"] not in present:
            columns.append("NULL")  # a column a newer schema brings, not landed yet (e.g. anchors)
            continue
        logical = item["type"].get("logicalType") if isinstance(item["type"], dict) else None
        columns.append(f"toUnixTimestamp64Milli({name})" if logical == "timestamp-millis" else name)
    return ", ".join(columns)


class ClickHouseTrail:
    """The landed trail in `<prefix>audit`: `events` (decision records), `operations` (operator
    actions) and `checkpoints` (of both)."""

    def __init__(self, client: Client, database_prefix: str, catalog: Catalog) -> None:
        self.client = client
        self.database = ddl.database_name(database_prefix, ddl.AUDIT_DATABASE)
        self.events = ddl.qualified(self.database, ddl.AUDIT_EVENTS_TABLE)
        self.operations_table = ddl.qualified(self.database, ddl.OPERATIONS_TABLE)
        self.checkpoints_table = ddl.qualified(self.database, CHECKPOINTS_TABLE)
        self.timestamps_table = ddl.qualified(self.database, TIMESTAMPS_TABLE)
        self._timestamp_schema = catalog.internal_schema(AUDIT_TIMESTAMP)
        self.codec, self.checkpoint_codec = codecs(catalog)
        self.operations_codec = operations_codec(catalog)
        self._checkpoint_schema = catalog.internal_schema(AUDIT_CHECKPOINT)
        self._record_fields = self.codec.schema["fields"]
        self._named: dict[str, Any] = {}
        _named(self.codec.schema, self._named)
        _named(self.operations_codec.schema, self._named)
        self._sealed_operations: bool | None = None

    def _records_table(self, writer: str) -> tuple[str, RecordCodec]:
        """Where a writer's records land, and their codec."""
        return (self.operations_table, self.operations_codec) if writer == OPERATIONS_WRITER else (self.events, self.codec)

    def _operations_landed(self) -> bool:
        """Whether operator actions have landed with their positions (a trail from before actions
        were sealed has no such columns, or no table)."""
        if self._sealed_operations is None:
            table = ddl.OPERATIONS_TABLE
            found = self.client.query("SELECT count() FROM system.columns WHERE database = {d:String} AND table = {t:String} "
                                      "AND name IN ('writer', 'checkpoint', 'leaf')", parameters={"d": self.database, "t": table})
            self._sealed_operations = int(found.result_rows[0][0]) == 3
        return self._sealed_operations

    def read_checkpoints(self, trail: Trail, writers: Iterable[str] | None = None) -> None:
        where, parameters = "", {}
        if writers is not None:
            where, parameters = "WHERE writer IN {w:Array(String)}", {"w": sorted(set(writers))}
        present = [name for (name,) in self.client.query("SELECT name FROM system.columns WHERE database = {d:String} AND "
                                                         "table = {t:String}", parameters={"d": self.database, "t": CHECKPOINTS_TABLE}).result_rows]
        rows = self.client.query(f"SELECT {_select(self._checkpoint_schema, present)} FROM {self.checkpoints_table} {where}",
                                 parameters=parameters).result_rows
        names = [item["name"] for item in self._checkpoint_schema["fields"]]
        for row in rows:
            checkpoint = Checkpoint.from_record(dict(zip(names, row, strict=True)))
            trail.checkpoints[checkpoint.writer].append(checkpoint)

    def read_timestamps(self, trail: Trail) -> None:
        """The landed RFC 3161 timestamps (none when the table does not exist: a trail from before
        timestamps, or no audit sink ran since)."""
        exists = self.client.query("SELECT count() FROM system.tables WHERE database = {d:String} AND name = {t:String}",
                                   parameters={"d": self.database, "t": TIMESTAMPS_TABLE}).result_rows[0][0]
        if not exists:
            return
        names = [item["name"] for item in self._timestamp_schema["fields"]]
        columns = ", ".join(quote_identifier(name) for name in names)
        for row in self.client.query(f"SELECT {columns} FROM {self.timestamps_table}").result_rows:
            trail.stamps.append(Stamp.from_record(dict(zip(names, row, strict=True))))

    def counts(self, only: set[Position] | None = None) -> dict[Position, int]:
        """Rows per (writer, checkpoint) in the records tables (decisions, and operator actions)."""
        tables = [self.events, *([self.operations_table] if self._operations_landed() else [])]
        counted: dict[Position, int] = defaultdict(int)
        for table in tables:
            for w, s, n in self.client.query(f"SELECT writer, checkpoint, count() FROM {table} GROUP BY writer, checkpoint").result_rows:
                if only is None or (w, int(s)) in only:
                    counted[(w, int(s))] += int(n)
        return dict(counted)

    def read_records(self, trail: Trail, positions: dict[Position, int]) -> None:
        """The records of `positions` (with their row counts), a window of checkpoints per query."""
        by_writer: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for (writer, sequence), rows in positions.items():
            by_writer[writer].append((sequence, rows))
        for writer, sequences in by_writer.items():
            window: list[int] = []
            size = 0
            for sequence, rows in sorted(sequences):
                window.append(sequence)
                size += rows
                if size >= WINDOW_RECORDS:
                    self._read_window(trail, writer, window)
                    window, size = [], 0
            if window:
                self._read_window(trail, writer, window)

    def _read_window(self, trail: Trail, writer: str, sequences: list[int]) -> None:
        table, codec = self._records_table(writer)
        result = self.client.query(
            f"SELECT checkpoint, leaf, {_select(codec.schema)} FROM {table} "
            "WHERE writer = {w:String} AND checkpoint IN {s:Array(Int64)}", parameters={"w": writer, "s": sequences})
        fields = codec.schema["fields"]
        for row in result.result_rows:
            sequence, index, values = int(row[0]), int(row[1]), row[2:]
            record = {item["name"]: from_clickhouse(v, item["type"], self._named) for item, v in zip(fields, values, strict=True)}
            try:
                content = codec.content(record)
            except log.AuditLogError:
                trail.unreadable[(writer, sequence)].append(index)
                continue
            trail.add((writer, sequence), index, content, len(record.get("decisions") or ()))
            if writer == OPERATIONS_WRITER:
                trail.actions[sequence] = record

    def positions_of(self, column: str, value: str) -> set[Position]:
        """(writer, checkpoint) of every row whose `column` is `value` (e.g. a subject token)."""
        rows = self.client.query(f"SELECT DISTINCT writer, checkpoint FROM {self.events} WHERE {quote_identifier(column)} = {{v:String}}",
                                 parameters={"v": value}).result_rows
        return {(w, int(s)) for w, s in rows}

    def verify(self, keys: Mapping[str, PublicKey], only: set[Position] | None = None, trust: Trust | None = None) -> Report:
        """The trail (of `only`, when given); with the whole trail, its timestamps too (`trust`:
        the TSA's certificates, without which the tokens are counted as unchecked)."""
        trail = Trail()
        self.read_checkpoints(trail, None if only is None else {w for w, _ in only})
        self.read_records(trail, self.counts(only))
        if only is None:
            self.read_timestamps(trail)
        return verify_trail(trail, self.codec, self.checkpoint_codec, keys, only, self.operations_codec, trust)

    def receipt(self, event_id: str, recipient: str, keys: Mapping[str, PublicKey]) -> dict[str, Any]:
        """A receipt for the decision about `recipient` in the record of `event_id`, from a copy of
        the record whose checkpoint verifies. A record released when its quality window closed has
        a second record, of its release (`release_event_id`): that one says what was disclosed."""
        released = release_event_id(event_id)
        rows = self.client.query(f"SELECT DISTINCT writer, checkpoint, leaf, toString(event_id) AS row_event, row_event = {{r:String}} AS release "
                                 f"FROM {self.events} WHERE event_id IN (toUUID({{e:String}}), toUUID({{r:String}})) "
                                 "ORDER BY release DESC", parameters={"e": event_id, "r": released}).result_rows
        if not rows:
            raise log.AuditLogError(f"no audit record of event {event_id} in {self.events}")
        problems = []
        for writer, sequence, index, row_event, release in rows:
            position = (writer, int(sequence))
            trail = Trail()
            self.read_checkpoints(trail, [writer])
            self.read_records(trail, self.counts({position}))
            report = verify_trail(trail, self.codec, self.checkpoint_codec, keys, {position})
            # copies inserted later at other leaves of the checkpoint do not void this record's seal: the
            # leaves that reproduce the signed root are chosen below; any other failure does
            blocking = [f for f in report.failures if f.kind != log.CONFLICTING_RECORD or (f.writer, f.sequence) != position]
            checkpoint = next((c for c in trail.checkpoints[writer] if c.sequence == int(sequence) and c.signature), None)
            if blocking or checkpoint is None:
                problems += [str(f) for f in blocking] or [f"checkpoint {sequence} of writer {writer} is not verified"]
                continue
            sealed = None
            for content in self._contents_at(writer, int(sequence), int(index), str(row_event)):  # an edited copy beside it too
                try:
                    sealed = content, sealed_leaves(checkpoint, trail.leaves[position], int(index), leaf_hash(content))
                    break
                except log.AuditLogError as exc:
                    problems.append(str(exc))
            if sealed is None:
                continue
            content, leaves = sealed
            if release and not any(d.get("recipient") == recipient for d in self.codec.read_content(content).get("decisions", [])):
                continue  # the release was for other recipients: the decision record holds this one's
            return make_receipt(recipient=recipient, content=content, codec=self.codec, leaves=leaves, index=int(index),
                                checkpoint=checkpoint, checkpoint_codec=self.checkpoint_codec, key=keys[checkpoint.key_id])
        raise log.AuditLogError(f"the record of event {event_id} does not verify, so no receipt: {'; '.join(problems)}")

    def _contents_at(self, writer: str, sequence: int, index: int, event_id: str) -> list[bytes]:
        """The distinct record contents of `event_id` at one leaf (one, unless copies were inserted)."""
        rows = self.client.query(f"SELECT DISTINCT {_select(self.codec.schema)} FROM {self.events} WHERE writer = {{w:String}} "
                                 "AND checkpoint = {s:Int64} AND leaf = {l:Int32} AND event_id = toUUID({e:String}) LIMIT 16",
                                 parameters={"w": writer, "s": sequence, "l": index, "e": event_id}).result_rows
        found = []
        for row in rows:
            try:
                found.append(self.codec.content({item["name"]: from_clickhouse(v, item["type"], self._named)
                                                 for item, v in zip(self._record_fields, row, strict=True)}))
            except log.AuditLogError:
                continue  # a copy that no longer fits the schema was edited: not the sealed one
        return found


def verify_subject(client: Client, database_prefix: str, catalog: Catalog, keys: Mapping[str, PublicKey],
                   token: str) -> tuple[Report | None, str | None]:
    """Whether the audit records about one subject (by oversight token) verify against their
    checkpoints: (report, None); (None, None) when there are none; (None, why) when the trail
    cannot be checked (e.g. no checkpoints landed yet)."""
    from clickhouse_connect.driver.exceptions import DatabaseError

    trail = ClickHouseTrail(client, database_prefix, catalog)
    try:
        positions = trail.positions_of("subject_token", token)
        return (trail.verify(keys, only=positions) if positions else None), None
    except (log.AuditLogError, DatabaseError) as exc:
        return None, str(exc).splitlines()[0][:300]


def verdict_text(report: Report | None, problem: str | None) -> tuple[bool | None, str]:
    """(verified?, one line) for showing a subject's verification: True, False, or None (nothing to verify)."""
    if problem is not None:
        return False, f"NOT verified: the trail could not be checked ({problem})"
    if report is None:
        return None, "no audit records to verify"
    if report.ok:
        return True, (f"verified: the records shown are sealed, unaltered, in {report.checkpoints} signed checkpoint(s) "
                      f"of {len(report.writers)} writer(s)")
    return False, "NOT verified: the audit records shown do not match their signed checkpoints: " + "; ".join(
        str(f) for f in report.failures[:5])
