"""What the read-only chDB endpoint runs: reads of existing tables and views, nothing else.

Checked on ClickHouse's own parse of the statement (`EXPLAIN AST`, which parses and runs nothing)
against allow-lists, never a list of names to refuse, so a function, table function or statement
that is not named here is refused, whatever a newer ClickHouse adds:

- statements: one SELECT (or WITH ... SELECT, UNION, INTERSECT, EXCEPT), `DESCRIBE TABLE` of a table,
  `EXISTS`; a trailing `FORMAT name`; no `SETTINGS`, no `INTO OUTFILE`;
- syntax: the node kinds a read needs (`NODES`); a table function (`file()`, `url()`, `numbers()`,
  `remote()`, ...) in FROM, JOIN or DESCRIBE is refused by its position, whatever its name;
- functions: those `system.functions` files under categories that compute on their arguments only
  (`CATEGORIES`: arithmetic, strings, dates, arrays, aggregates, ...), their aliases, aggregate
  combinators of an allowed aggregate, and `EXTRA_FUNCTIONS`. Not `file()`, `dictGet()`, `joinGet()`,
  `sleep()`, `getSetting()` or anything filed under "Other", "Dictionary", "Introspection",
  "Encryption", "Machine Learning", "AI", ...;
- tables: a reference to an existing table must be one of the agencies' (a `*MergeTree` table or a
  `View`, outside the system databases) or a system table in `SYSTEM_TABLES` (what clickhouse-connect
  and the reading commands ask: tables, columns, databases, settings).

The parse is read from `EXPLAIN AST`'s indented text: a node per line, `(children N)` at its end. A
backquoted name can hold a newline and so forge lines; the tree is refused unless every node has
exactly the children it declares, which a forged line cannot keep true (it adds a child to a real
node or takes the real node's declaration), so the check fails closed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

# Roots a read may have, and what may sit under a SELECT.
STATEMENTS = frozenset({"SelectWithUnionQuery", "DescribeQuery", "ExistsTableQuery", "ExistsDatabaseQuery"})
NODES = frozenset({
    "SelectWithUnionQuery", "SelectIntersectExceptQuery", "SelectQuery", "ExpressionList", "Function", "Literal",
    "Identifier", "TableIdentifier", "Asterisk", "QualifiedAsterisk", "ColumnsRegexpMatcher", "QualifiedColumnsRegexpMatcher",
    "ColumnsListMatcher", "QualifiedColumnsListMatcher", "ColumnsTransformerList", "ColumnsExceptTransformer",
    "TablesInSelectQuery", "TablesInSelectQueryElement", "TableExpression", "TableJoin", "ArrayJoin", "Subquery",
    "WithElement", "OrderByElement", "WindowListElement", "WindowDefinition", "SampleRatio",
    "DescribeQuery", "ExistsTableQuery", "ExistsDatabaseQuery",
})
# system.functions categories whose functions compute on their arguments and nothing else.
CATEGORIES = frozenset({
    "Aggregate Functions", "Arithmetic", "Arrays", "Bit", "Comparison", "Conditional", "Dates and Times", "Distance",
    "Encoding", "Hash", "IP Address", "JSON", "Logical", "Map", "Mathematical", "Null", "Random Number", "Rounding",
    "String", "String Replacement", "String Search", "String Splitting", "Tuple", "Type Conversion", "URL", "UUID",
})
# Syntax the parser writes as functions (x -> y, EXISTS (subquery), a bound {name:Type} as _CAST) and
# harmless ones filed under "Other" or "Internal".
EXTRA_FUNCTIONS = frozenset({"lambda", "exists", "_CAST", "version", "currentDatabase", "toTypeName", "ignore", "identity", "materialize"})
COMBINATORS = ("If", "Array", "Map", "State", "Merge", "MergeState", "ForEach", "Distinct", "OrDefault", "OrNull",
               "Resample", "SimpleState", "ArgMin", "ArgMax")
SET_FUNCTIONS = frozenset({"in", "notIn", "globalIn", "globalNotIn", "nullIn", "notNullIn", "globalNullIn", "globalNotNullIn"})
SYSTEM_DATABASES = frozenset({"system", "information_schema", "INFORMATION_SCHEMA"})
SYSTEM_TABLES = frozenset({"tables", "columns", "databases", "settings", "one", "numbers"})

FUNCTIONS_SQL = "SELECT name, is_aggregate, case_insensitive, alias_to, categories FROM system.functions"
_LINE = re.compile(r"^( *)([A-Za-z_][A-Za-z0-9_]*)(.*)$")
_CHILDREN = re.compile(r" \(children (\d+)\)$")


class NotARead(ValueError):
    """The statement is not one the endpoint runs; the message says what is served instead."""


@dataclass(slots=True)
class Node:
    kind: str
    name: str  # the first word after the kind: a function's, identifier's or table's name
    declared: int
    children: list[Node] = field(default_factory=list)

    def walk(self) -> Iterator[tuple[Node, Node | None]]:
        """Every node under (and including) this one, with its parent."""
        stack: list[tuple[Node, Node | None]] = [(self, None)]
        while stack:
            node, parent = stack.pop()
            yield node, parent
            stack.extend((child, node) for child in reversed(node.children))


def parse_ast(text: str) -> Node:
    """The tree `EXPLAIN AST` printed; `NotARead` unless it is one well-formed tree."""
    roots: list[Node] = []
    path: list[Node] = []
    for line in text.rstrip("\n").split("\n"):
        match = _LINE.match(line)
        if match is None:
            raise NotARead("the statement's parse could not be read")
        depth, kind, rest = len(match.group(1)), match.group(2), match.group(3)
        if depth > len(path):
            raise NotARead("the statement's parse could not be read")
        declared = _CHILDREN.search(rest)
        node = Node(kind, rest.split(" ", 2)[1] if rest.startswith(" ") and len(rest) > 1 else "",
                    int(declared.group(1)) if declared else 0)
        del path[depth:]
        (path[-1].children if path else roots).append(node)
        path.append(node)
    if len(roots) != 1:
        raise NotARead("one statement at a time is served")
    for node, _ in roots[0].walk():
        if len(node.children) != node.declared:
            raise NotARead("the statement's parse could not be read")
    return roots[0]


@dataclass(frozen=True, slots=True)
class TableRef:
    database: str | None  # None: the session's current database (or a WITH name)
    table: str


class ReadPolicy:
    """The allow-lists of one chDB build: its functions, read once from `system.functions` rows."""

    def __init__(self, function_rows: list[tuple[str, int, int, str, str]]) -> None:
        allowed: set[str] = set(EXTRA_FUNCTIONS)
        aggregates: set[str] = set()
        for name, is_aggregate, _, alias_to, categories in function_rows:
            if (categories in CATEGORIES or is_aggregate) and not alias_to:
                allowed.add(name)
                if is_aggregate:
                    aggregates.add(name)
        for name, _, _, alias_to, _ in function_rows:
            if alias_to and alias_to in allowed:
                allowed.add(name)
                if alias_to in aggregates:
                    aggregates.add(name)
        insensitive = {name.lower() for name, _, case_insensitive, _, _ in function_rows if case_insensitive and name in allowed}
        self.functions = frozenset(allowed)
        self.aggregates = frozenset(aggregates)
        self.case_insensitive = frozenset(insensitive)

    def function_allowed(self, name: str) -> bool:
        if name in self.functions or name.lower() in self.case_insensitive:
            return True
        for suffix in COMBINATORS:  # countIf, sumArray, uniqExactState, ...: an allowed aggregate underneath
            if name.endswith(suffix) and len(name) > len(suffix) and self._aggregate(name[: -len(suffix)]):
                return True
        return False

    def _aggregate(self, name: str) -> bool:
        if name in self.aggregates or name.lower() in self.case_insensitive & self.aggregates:
            return True
        return any(name.endswith(s) and len(name) > len(s) and self._aggregate(name[: -len(s)]) for s in COMBINATORS)

    def check(self, root: Node) -> set[TableRef]:
        """The tables the statement references (for `table_allowed`); `NotARead` naming the first
        thing that is not served."""
        if root.kind not in STATEMENTS:
            raise NotARead("only SELECT, DESCRIBE TABLE and EXISTS statements are served")
        if root.kind in ("ExistsTableQuery", "ExistsDatabaseQuery"):  # names (and a FORMAT) only: nothing is read
            if any(child.kind != "Identifier" for child in root.children):
                raise NotARead("EXISTS takes a name")
            return set()
        body, *tail = root.children
        if len(tail) > 1 or any(child.kind != "Identifier" for child in tail):  # FORMAT is an Identifier; OUTFILE, SETTINGS are not
            raise NotARead("SETTINGS and INTO OUTFILE are not served (the server sets the limits)")
        if root.kind == "DescribeQuery" and [c.kind for c in body.children] != ["TableIdentifier"]:
            raise NotARead("DESCRIBE TABLE is served for tables and views only, not table functions")
        tables: set[TableRef] = set()
        for node, parent in body.walk():
            if node.kind not in NODES:
                raise NotARead(f"{node.kind} is not served in a read")
            if node.kind == "Function":
                if parent is not None and parent.kind == "TableExpression":
                    raise NotARead(f"table function {node.name}() is not served: read tables and views")
                if not self.function_allowed(node.name):
                    raise NotARead(f"function {node.name}() is not served (only functions that compute on their arguments)")
                arguments = node.children[0].children if node.children else []
                if node.name in SET_FUNCTIONS and len(arguments) == 2 and arguments[1].kind == "Identifier":
                    tables.add(_table_ref(arguments[1].name))  # x IN db.table reads that table
            elif node.kind == "TableIdentifier":
                tables.add(_table_ref(node.name))
        return tables

    @staticmethod
    def table_allowed(database: str, table: str, engine: str) -> bool:
        """Whether an existing table may be read: an agency's table or view, or a listed system table."""
        if database == "system":
            return table in SYSTEM_TABLES
        if database in SYSTEM_DATABASES:
            return False
        return engine.endswith("MergeTree") or engine == "View"


def _table_ref(name: str) -> TableRef:
    database, dot, table = name.partition(".")
    return TableRef(database, table) if dot else TableRef(None, name)


@dataclass(frozen=True, slots=True)
class ReadLimits:
    """What one query on the endpoint may use, set by the server on the query's connection (under
    readonly=1, so neither the client's settings nor a SETTINGS clause can loosen them).

    chDB cannot cancel a running query from another thread (`StreamingResult.cancel()` waits for the
    query, checked on chDB 4.4 / ClickHouse 26.9), so a query whose client went away runs on until
    it ends or meets `max_execution_time`; `concurrent` bounds how many run at once (503 beyond)."""

    max_execution_time: int = 60  # seconds
    max_memory_usage: int = 1 << 30  # bytes
    max_result_rows: int = 1_000_000
    max_result_bytes: int = 256 << 20
    concurrent: int = 4

    def connection_settings(self) -> str:
        """The settings as chDB connection-string parameters (after `readonly=1`)."""
        return (f"readonly=1&max_execution_time={self.max_execution_time}&max_memory_usage={self.max_memory_usage}"
                f"&max_result_rows={self.max_result_rows}&max_result_bytes={self.max_result_bytes}&result_overflow_mode=throw")
