"""What the console shows, read from the same sources as `backbone status` (`app.status.collect`)
plus the charter and the audit trail's recent decisions per provider and recipient.

`Snapshot` is plain data; `collect_snapshot(settings)` is the one blocking read, asked at most every
few seconds however many browsers watch (`SnapshotCache`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from app.status import Status, _ask, collect
from backbone.policy.agreements import Charter
from backbone.settings import Settings

PERMIT = "permit"


@dataclass(slots=True, frozen=True)
class Flow:
    """Decisions of the last `window_s` seconds on one provider -> recipient edge, by outcome
    (`permit` or the denial's reason)."""

    provider: str
    recipient: str
    outcome: str
    count: int


@dataclass(slots=True, frozen=True)
class AuditState:
    """The last verification of the landed audit trail (`backbone audit verify`)."""

    ok: bool
    checkpoints: int
    decisions: int
    operations: int
    failures: tuple[str, ...]
    checked_at: float


@dataclass
class Snapshot:
    status: Status
    charter: Charter | None = None
    flows: list[Flow] = field(default_factory=list)
    window_s: float = 300.0
    taken_at: float = field(default_factory=time.time)
    audit: AuditState | None = None


# The whole landed trail is verified at most this often (the snapshot is taken every few seconds;
# a verification reads every record).
AUDIT_VERIFY_EVERY_S = 60.0
_verified: dict[tuple[str, str], tuple[float, AuditState]] = {}


def recent_flows(settings: Settings, minutes: int) -> list[Flow]:
    """Decisions of the last `minutes` per (provider, recipient, outcome) from `<prefix>audit.decisions`."""
    from backbone.clickhouse.client import make_client

    client = make_client(settings.clickhouse_dsn or "", read_only=True)
    try:
        view = f"{settings.clickhouse_database_prefix}audit.decisions"
        exists = client.query("SELECT count() FROM system.tables WHERE database = {d:String} AND name = 'decisions'",
                              parameters={"d": f"{settings.clickhouse_database_prefix}audit"}).result_rows[0][0]
        if not exists:
            return []
        rows = client.query(
            f"SELECT provider, recipient, if(decision = 'permit', 'permit', assumeNotNull(reason)) AS outcome, count() "
            f"FROM {view} WHERE decided_at >= now64(3) - INTERVAL {int(minutes)} MINUTE "
            "GROUP BY provider, recipient, outcome ORDER BY provider, recipient, outcome"
        ).result_rows
        return [Flow(str(p), str(r), str(o), int(n)) for p, r, o, n in rows]
    finally:
        client.close()


def audit_state(settings: Settings) -> AuditState:
    """The landed trail verified against the keyring's public keys, at most every AUDIT_VERIFY_EVERY_S."""
    key = (settings.clickhouse_dsn or "", settings.clickhouse_database_prefix)
    cached = _verified.get(key)
    if cached is not None and time.monotonic() - cached[0] < AUDIT_VERIFY_EVERY_S:
        return cached[1]
    from backbone.audit.log import CheckpointCodec, public_key_map
    from backbone.audit.published import verifier_keys
    from backbone.clickhouse.client import make_client
    from backbone.events.catalog import AUDIT_CHECKPOINT, load_catalog
    from consumers.audit_heads import check_not_emptied, known_heads
    from consumers.audit_trail import ClickHouseTrail

    keys = public_key_map(verifier_keys(settings))
    catalog = load_catalog(settings.schemas_dir)
    # as `backbone audit verify` does: the heads known apart from the trail first, then the trail
    known = known_heads(settings, CheckpointCodec(catalog.internal_schema(AUDIT_CHECKPOINT)), keys, (), from_kafka_too=True)
    client = make_client(settings.clickhouse_dsn or "", read_only=True)
    try:
        report = ClickHouseTrail(client, settings.clickhouse_database_prefix, catalog).verify(keys)
        check_not_emptied(report, client, settings.clickhouse_database_prefix,
                          sorted({a.recipient for a in load_charter(settings).agreements}))
    finally:
        client.close()
    known.check(report, "landed trail")
    state = AuditState(report.ok, report.checkpoints, report.decisions, report.operations,
                       tuple(str(f) for f in report.failures[:5]), time.time())
    _verified[key] = (time.monotonic(), state)
    return state


def load_charter(settings: Settings) -> Charter:
    from backbone.events.catalog import load_catalog
    from backbone.policy.agreements import load_agreements

    return load_agreements(settings.agreements_dir, load_catalog(settings.schemas_dir))


def collect_snapshot(settings: Settings, minutes: int = 5, timeout: float = 3.0) -> Snapshot:
    """Every part asked once; what does not answer is named in `status.unreachable`."""
    status = collect(settings, minutes, timeout)
    charter = _ask(status, "charter", lambda: load_charter(settings))
    flows: list[Flow] = []
    audit = None
    if "clickhouse" not in status.unreachable:
        flows = _ask(status, "audit decisions", lambda: recent_flows(settings, minutes)) or []
        audit = _ask(status, "audit trail", lambda: audit_state(settings))
    return Snapshot(status, charter, flows, window_s=minutes * 60.0, audit=audit)


class SnapshotCache:
    """One snapshot shared by every page and stream, taken again once it is `max_age_s` old."""

    def __init__(self, take: Callable[[], Snapshot], max_age_s: float = 5.0) -> None:
        self.take = take
        self.max_age_s = max_age_s
        self._snapshot: Snapshot | None = None
        self._taken = 0.0
        self._lock = asyncio.Lock()

    async def get(self) -> Snapshot:
        async with self._lock:
            if self._snapshot is None or time.monotonic() - self._taken >= self.max_age_s:
                self._snapshot = await asyncio.get_running_loop().run_in_executor(None, self.take)
                self._taken = time.monotonic()
            return self._snapshot
