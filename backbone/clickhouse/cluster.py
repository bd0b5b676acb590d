"""The ClickHouse cluster the sinks' DDL runs on, when one is configured (`BACKBONE_CLICKHOUSE_CLUSTER`).

Pure SQL fragments, no I/O. Without a cluster every statement stays the single-node one (chDB, one
server). With one, tables are `Replicated*` (the `{shard}` and `{replica}` macros each server
defines), every DDL, grant and erasure runs `ON CLUSTER`, and when the cluster has several shards
(`BACKBONE_CLICKHOUSE_SHARDED`) each table is a replicated `<table>_local` on every shard under a
`Distributed` table of the table's own name, sharded by a hash of the subject, so one subject's rows
(and every copy of one event) sit on one shard: `FINAL`, the fraud rules' per-subject joins and
an erasure's `DELETE` each find them there.
"""

from __future__ import annotations

from dataclasses import dataclass

from backbone.settings import Settings

# Keeper path of each replicated table: one per shard, macros expanded when the table is created.
REPLICA_PATH = "/clickhouse/tables/{shard}/{database}/{table}"
LOCAL_SUFFIX = "_local"


def _quote(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def sql_string(value: str) -> str:
    """`value` as a ClickHouse string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


_string = sql_string


@dataclass(slots=True, frozen=True)
class Cluster:
    """A ClickHouse cluster as `remote_servers` names it; `sharded` when it has more than one shard."""

    name: str
    sharded: bool = False

    @property
    def on(self) -> str:
        """` ON CLUSTER <name>`, to put after the object a statement names."""
        return f" ON CLUSTER {_quote(self.name)}"

    def engine(self, engine: str, path: str = REPLICA_PATH) -> str:
        """`ReplacingMergeTree` -> `ReplicatedReplacingMergeTree('<keeper path>', '{replica}')`; an
        engine's own arguments follow those (`ReplacingMergeTree(v)` -> `...('{replica}', v)`)."""
        name, _, arguments = engine.partition("(")
        tail = f", {arguments[:-1]}" if arguments else ""
        return f"Replicated{name}({_string(path)}, '{{replica}}'{tail})"

    @property
    def insert_settings(self) -> dict[str, int]:
        """Settings of an insert into a table of this cluster: when sharded the insert goes through a
        `Distributed` table, which by default queues the rows and sends them to the shards later;
        foreground, the insert returns once every shard holds its rows, so what reads next (a
        scorecard, a fraud run, a sink's commit) sees them."""
        return {"distributed_foreground_insert": 1} if self.sharded else {}

    @property
    def read_settings(self) -> dict[str, str]:
        """Settings of a query whose `IN` or `JOIN` reads a table of this cluster inside a query over
        another: when sharded both are `Distributed`, which ClickHouse's default
        (`distributed_product_mode = 'deny'`) refuses; `'local'` has each shard read its own local
        table instead, exact when both tables place a key's rows on one shard (sharded by the subject).
        A set that must span shards (keyed by something else) says `GLOBAL IN` itself."""
        return {"distributed_product_mode": "local"} if self.sharded else {}

    def local(self, table: str) -> str:
        """The table holding the rows on each shard: `<table>_local` when sharded, else the table itself."""
        return f"{table}{LOCAL_SUFFIX}" if self.sharded else table

    def distributed_engine(self, database: str, table: str, shard_key: str) -> str:
        """The `Distributed` engine over `table`'s local tables, rows placed by `cityHash64(shard_key)`."""
        return f"Distributed({_string(self.name)}, {_string(database)}, {_string(self.local(table))}, cityHash64({shard_key}))"


def cluster_of(settings: Settings) -> Cluster | None:
    """The configured cluster, or None for single-node DDL (the default, and chDB's)."""
    if not settings.clickhouse_cluster:
        return None
    return Cluster(settings.clickhouse_cluster, settings.clickhouse_sharded)


def on_cluster(cluster: Cluster | None) -> str:
    return cluster.on if cluster is not None else ""


def engine(cluster: Cluster | None, engine: str = "ReplacingMergeTree", path: str = REPLICA_PATH) -> str:
    return cluster.engine(engine, path) if cluster is not None else engine


def insert_settings(cluster: Cluster | None) -> dict[str, int]:
    """`Cluster.insert_settings`, none for one node."""
    return cluster.insert_settings if cluster is not None else {}


def read_settings(cluster: Cluster | None) -> dict[str, str]:
    """`Cluster.read_settings`, none for one node."""
    return cluster.read_settings if cluster is not None else {}


def generation_path(generation: str) -> str:
    """The Keeper path of a table made again under a name its predecessor had (`backbone fraud
    migrate` each time): `REPLICA_PATH` with a generation suffix, so it never meets the path of a
    table made by an earlier migration (after `EXCHANGE TABLES` the live table keeps the path it was
    created with, `{table}` expanded to the new table's name)."""
    if not generation.isalnum():
        raise ValueError(f"generation {generation!r} must be letters and digits")
    return f"{REPLICA_PATH}.{generation}"


def local_table(cluster: Cluster | None, table: str) -> str:
    """The table rows are deleted and mutated in (the local one on a sharded cluster)."""
    return cluster.local(table) if cluster is not None else table
