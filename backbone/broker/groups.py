"""Consumer groups with Kafka's classic protocol: JoinGroup gathers the members (a rebalance waits
for every known member to join again, up to the longest rebalance timeout, and drops those that do
not), the leader gets every member's metadata and sends the assignment in SyncGroup, which the
others wait for; Heartbeat says REBALANCE_IN_PROGRESS while one runs and keeps a member alive; a
member silent past its session timeout is dropped (`expire`) and the rest rebalance. Generations
count completed joins; a request of an older generation gets ILLEGAL_GENERATION.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from kio.schema.errors import ErrorCode

INITIAL_DELAY_S = 0.3  # the first join of an empty group waits this long for the others


@dataclass
class Member:
    member_id: str
    client_id: str
    client_host: str
    session_timeout_ms: int
    rebalance_timeout_ms: int
    protocols: list[tuple[str, bytes]]
    group_instance_id: str | None = None
    assignment: bytes = b""
    last_seen: float = field(default_factory=time.monotonic)
    join: asyncio.Future[dict[str, Any]] | None = None
    sync: asyncio.Future[dict[str, Any]] | None = None


@dataclass
class Group:
    group_id: str
    state: str = "Empty"  # Empty, PreparingRebalance, CompletingRebalance, Stable
    generation: int = 0
    protocol_type: str = ""
    protocol: str = ""
    leader: str = ""
    members: dict[str, Member] = field(default_factory=dict)
    rebalance: asyncio.TimerHandle | None = None
    initial: bool = False


class Coordinator:
    """Every group of one broker, driven from its event loop."""

    def __init__(self) -> None:
        self.groups: dict[str, Group] = {}

    def group(self, group_id: str) -> Group:
        return self.groups.setdefault(group_id, Group(group_id))

    async def join(self, group_id: str, member_id: str, client_id: str, host: str, protocol_type: str,
                   protocols: list[tuple[str, bytes]], session_ms: int, rebalance_ms: int,
                   instance_id: str | None = None) -> dict[str, Any]:
        group = self.group(group_id)
        if group.members and protocol_type != group.protocol_type:
            return _join_error(ErrorCode.inconsistent_group_protocol, member_id)
        if group.members and not any(set(n for n, _ in protocols) & set(n for n, _ in m.protocols) for m in group.members.values()):
            return _join_error(ErrorCode.inconsistent_group_protocol, member_id)
        if member_id and member_id not in group.members:
            return _join_error(ErrorCode.unknown_member_id, member_id)
        if not member_id:
            member_id = f"{client_id}-{uuid.uuid4()}"
        member = group.members.get(member_id)
        if member is None:
            member = Member(member_id, client_id, host, session_ms, rebalance_ms, protocols, instance_id)
            group.members[member_id] = member
        else:
            member.protocols, member.session_timeout_ms, member.rebalance_timeout_ms = protocols, session_ms, rebalance_ms
        group.protocol_type = protocol_type
        member.last_seen = time.monotonic()
        if member.join is not None and not member.join.done():
            member.join.set_result(_join_error(ErrorCode.unknown_member_id, member_id))
        member.join = waiter = asyncio.get_running_loop().create_future()
        if group.state != "PreparingRebalance":  # any join outside a rebalance starts one
            self._prepare(group, initial=group.state == "Empty")
        self._maybe_complete(group)
        return await waiter

    def _prepare(self, group: Group, initial: bool) -> None:
        group.state, group.initial = "PreparingRebalance", initial
        for member in group.members.values():
            if member.sync is not None and not member.sync.done():
                member.sync.set_result({"error_code": ErrorCode.rebalance_in_progress, "assignment": b""})
        delay = INITIAL_DELAY_S if initial else max(m.rebalance_timeout_ms for m in group.members.values()) / 1000
        if group.rebalance is not None:
            group.rebalance.cancel()
        group.rebalance = asyncio.get_running_loop().call_later(delay, self._deadline, group)

    def _deadline(self, group: Group) -> None:
        """The rebalance's time is up: members that did not join again are dropped, the rest complete it."""
        group.rebalance = None
        if group.state != "PreparingRebalance":
            return
        for member_id in [m for m, member in group.members.items() if member.join is None or member.join.done()]:
            del group.members[member_id]
        self._complete(group)

    def _maybe_complete(self, group: Group) -> None:
        """Complete the rebalance once every member joined again (a first one waits its initial delay)."""
        if group.state == "PreparingRebalance" and not group.initial and _all_joined(group):
            if group.rebalance is not None:
                group.rebalance.cancel()
                group.rebalance = None
            self._complete(group)

    def _complete(self, group: Group) -> None:
        if not group.members:
            group.state, group.leader, group.protocol = "Empty", "", ""
            group.generation += 1
            return
        group.generation += 1
        if group.leader not in group.members:
            group.leader = next(iter(group.members))
        leader = group.members[group.leader]
        common = set.intersection(*(set(n for n, _ in m.protocols) for m in group.members.values()))
        group.protocol = next((n for n, _ in leader.protocols if n in common), leader.protocols[0][0])
        group.state = "CompletingRebalance"
        everyone = [{"member_id": m.member_id, "group_instance_id": m.group_instance_id,
                     "metadata": dict(m.protocols).get(group.protocol, b"")} for m in group.members.values()]
        for member in group.members.values():
            member.assignment = b""
            if member.join is not None and not member.join.done():
                member.join.set_result({"error_code": 0, "generation_id": group.generation, "protocol_type": group.protocol_type,
                                        "protocol_name": group.protocol, "leader": group.leader, "member_id": member.member_id,
                                        "members": everyone if member.member_id == group.leader else []})
            member.join = None
            member.last_seen = time.monotonic()

    async def sync(self, group_id: str, member_id: str, generation: int, assignments: dict[str, bytes]) -> dict[str, Any]:
        group = self.groups.get(group_id)
        member = group.members.get(member_id) if group else None
        if group is None or member is None:
            return {"error_code": ErrorCode.unknown_member_id, "assignment": b""}
        if generation != group.generation:
            return {"error_code": ErrorCode.illegal_generation, "assignment": b""}
        if group.state == "PreparingRebalance":
            return {"error_code": ErrorCode.rebalance_in_progress, "assignment": b""}
        member.last_seen = time.monotonic()
        if group.state == "Stable":
            return {"error_code": 0, "assignment": member.assignment, "protocol_type": group.protocol_type,
                    "protocol_name": group.protocol}
        member.sync = waiter = asyncio.get_running_loop().create_future()
        if member_id == group.leader:
            for other in group.members.values():
                other.assignment = assignments.get(other.member_id, b"")
            group.state = "Stable"
            for other in group.members.values():
                if other.sync is not None and not other.sync.done():
                    other.sync.set_result({"error_code": 0, "assignment": other.assignment,
                                           "protocol_type": group.protocol_type, "protocol_name": group.protocol})
        try:
            return await waiter
        finally:
            member.sync = None

    def heartbeat(self, group_id: str, member_id: str, generation: int) -> int:
        group = self.groups.get(group_id)
        member = group.members.get(member_id) if group else None
        if group is None or member is None:
            return ErrorCode.unknown_member_id
        member.last_seen = time.monotonic()
        if generation != group.generation:
            return ErrorCode.illegal_generation
        if group.state == "PreparingRebalance":
            return ErrorCode.rebalance_in_progress
        return 0

    def leave(self, group_id: str, member_id: str) -> int:
        group = self.groups.get(group_id)
        if group is None or member_id not in group.members:
            return ErrorCode.unknown_member_id
        self._remove(group, member_id)
        return 0

    def _remove(self, group: Group, member_id: str) -> None:
        member = group.members.pop(member_id)
        if member.join is not None and not member.join.done():
            member.join.set_result(_join_error(ErrorCode.unknown_member_id, member_id))
        if group.members:
            if group.state == "PreparingRebalance":
                self._maybe_complete(group)
            else:
                self._prepare(group, initial=False)
                self._maybe_complete(group)
        else:
            if group.rebalance is not None:
                group.rebalance.cancel()
                group.rebalance = None
            group.state, group.leader = "Empty", ""
            group.generation += 1

    def commit_allowed(self, group_id: str, member_id: str, generation: int) -> int:
        """Error of an OffsetCommit: none for a group-less commit (generation -1) or the current members'."""
        if generation < 0 and not member_id:
            return 0
        group = self.groups.get(group_id)
        if group is None or member_id not in group.members:
            return ErrorCode.unknown_member_id
        if generation != group.generation:
            return ErrorCode.illegal_generation
        group.members[member_id].last_seen = time.monotonic()
        return 0

    def expire(self) -> None:
        """Drop members silent past their session timeout (members waiting in a join are not)."""
        now = time.monotonic()
        for group in list(self.groups.values()):
            for member_id, member in list(group.members.items()):
                waiting = member.join is not None and not member.join.done()
                if not waiting and (now - member.last_seen) * 1000 > member.session_timeout_ms:
                    self._remove(group, member_id)


def _all_joined(group: Group) -> bool:
    return all(m.join is not None and not m.join.done() for m in group.members.values())


def _join_error(error: int, member_id: str) -> dict[str, Any]:
    return {"error_code": error, "generation_id": -1, "protocol_name": "", "leader": "", "member_id": member_id, "members": []}
