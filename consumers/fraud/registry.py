"""Fraud rules: a registry of small rule objects, found by kind, each one SQL query.

A rule says which landed tables and columns it reads (`needs`) and builds its SELECT of
`(kind, subject, period, details)` from the fraud database's name and the actual column types, so
it follows how the agreements release each field. A rule whose tables or columns are missing (no
agreement releases them to the fraud team) is off: `applicable()` leaves it out.

A rule may also say which columns its findings are keyed by (`scope`, e.g. `national_id, period`):
then, once it has run, the detector runs it on the keys that landed since (`select_sql(..., since=)`,
a `Since`: the landing its last run resumes from, or the day where a table has no landing column),
each over its whole history, which finds what a run over every row finds (the other keys' findings
are unchanged and recorded already) for the work of what landed, not of everything that ever did.

The built-in rules are registered in `consumers/fraud/rules/__init__.py`; adding a rule is one
module there and one `register()` call.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from consumers.ddl import LANDED_AT, LANDED_SEQ
from consumers.fraud.errors import DuplicateRule, FraudRuleError, UnknownRule

# table -> column -> ClickHouse type, as `system.columns` reports them for the fraud database
Columns = Mapping[str, Mapping[str, str]]


@dataclass(slots=True, frozen=True)
class Since:
    """Where an incremental run resumes: rows of landing `landed_seq` or later (microseconds, in a
    table with `_landed_seq`; None: not known), else rows landed on `day` (unix seconds) or later."""

    day: int
    landed_seq: int | None = None

    def condition(self, table_columns: Mapping[str, str]) -> str:
        if self.landed_seq is not None and LANDED_SEQ in table_columns:
            return f"{LANDED_SEQ} >= {int(self.landed_seq)}"
        return f"{LANDED_AT} >= toDateTime({int(self.day)})"


# (database, columns[, where]) -> SELECT kind, subject, period, details; `where` (scoped rules only)
# is a condition each of its subqueries over a needed table adds, "1" for every row
RuleSql = Callable[..., str]


@dataclass(slots=True, frozen=True)
class Rule:
    """One fraud rule: `kind` names its alerts; `needs` maps each table it reads to the columns it
    reads there; `sql(database, columns)` is its SELECT of `(kind, subject, period, details)`."""

    kind: str
    doc: str
    needs: Mapping[str, tuple[str, ...]]
    sql: RuleSql
    scope: tuple[str, ...] = ()  # the columns a finding depends on the rows of (empty: every run reads all)
    # the column naming the subject in the tables it reads: what a sharded cluster places their rows by
    subject: str = "national_id"

    @property
    def spans_shards(self) -> bool:
        """True when one key's rows may sit on several shards of a sharded cluster (the key does not
        start with the subject the tables are sharded by): its touched keys are then one set sent to
        every shard (`GLOBAL IN`), not each shard's own."""
        return bool(self.scope) and self.scope[0] != self.subject

    def missing(self, columns: Columns) -> list[str]:
        """`table.column` of every needed column the database lacks (empty: the rule can run)."""
        return [f"{table}.{column}" for table, needed in self.needs.items()
                for column in needed if column not in columns.get(table, {})]

    def select_sql(self, database: str, columns: Columns, since: Since | str | None = None, sharded: bool = False) -> str:
        """The rule's SELECT: over every row, or (`since`, scoped rules only: a `Since`, or a
        `_landed_at` SQL literal) over the whole history of the keys that landed since (`sharded`:
        on a sharded cluster, see `touched`)."""
        if not self.scope:
            return self.sql(database, columns)
        if since is None:
            return self.sql(database, columns, "1")
        return self.sql(database, columns, self.touched(database, since, columns, sharded))

    def touched(self, database: str, since: Since | str, columns: Columns | None = None, sharded: bool = False) -> str:
        """`(scope) IN (the scope keys of rows landed since in the needed tables)`: by landing where a
        table has `_landed_seq` (its projection by landing reads just those), else by landing day.
        On a `sharded` cluster a key kept on one shard (the subject's) is looked up in each shard's own
        landed rows (the query runs with `distributed_product_mode = 'local'`), and a key spanning
        shards (`spans_shards`: a bank account's claimants) with `GLOBAL IN`: every shard reads the
        rows of each key that landed on any shard, else a claimant on another shard would be missed."""
        keys = ", ".join(self.scope)
        where = (lambda table: since.condition((columns or {}).get(table, {}))) if isinstance(since, Since) \
            else (lambda table: f"{LANDED_AT} >= {since}")
        sources = [f"SELECT {keys} FROM {database_table(database, table)} WHERE {where(table)}"
                   for table, needed in self.needs.items() if set(self.scope) <= set(needed)]
        operator = "GLOBAL IN" if sharded and self.spans_shards else "IN"
        return f"({keys}) {operator} ({' UNION ALL '.join(sources)})"


def database_table(database: str, table: str) -> str:
    return f"`{database}`.`{table}`"


RULES: dict[str, Rule] = {}
# kinds are written into SQL literals and topic records: plain snake_case only
_KIND = re.compile(r"[a-z][a-z0-9_]*")


def register(rule: Rule) -> Rule:
    """Add `rule` under its kind; a kind is registered once (unregister the old rule first)."""
    if not _KIND.fullmatch(rule.kind):
        raise FraudRuleError(f"fraud rule kind {rule.kind!r} is not snake_case; name it like `claim_after_death`")
    if rule.kind in RULES:
        raise DuplicateRule(f"fraud rule {rule.kind!r} is registered already; give the new rule another kind "
                            "or unregister the old one first")
    RULES[rule.kind] = rule
    return rule


def unregister(kind: str) -> Rule:
    """Remove the rule of `kind` and return it."""
    lookup(kind)
    return RULES.pop(kind)


@contextmanager
def registered(rule: Rule) -> Iterator[Rule]:
    """`rule` is registered inside the `with` block only (tests, experiments)."""
    register(rule)
    try:
        yield rule
    finally:
        RULES.pop(rule.kind, None)


def lookup(kind: str, rules: Mapping[str, Rule] | None = None) -> Rule:
    """The rule of `kind`; `UnknownRule` names the known kinds."""
    rules = RULES if rules is None else rules
    try:
        return rules[kind]
    except KeyError:
        raise UnknownRule(f"unknown fraud kind {kind!r}; use one of {', '.join(rules) or '(none registered)'}") from None


def applicable(columns: Columns, rules: Iterable[Rule] | None = None) -> list[Rule]:
    """The rules (all registered ones by default) whose tables and columns all exist."""
    return [rule for rule in (RULES.values() if rules is None else rules) if not rule.missing(columns)]
