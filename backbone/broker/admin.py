"""The cluster, topic and group APIs of the disk broker: Metadata, DescribeCluster, FindCoordinator
(it is every group's coordinator), CreateTopics/DeleteTopics/CreatePartitions, DescribeConfigs,
AlterConfigs and IncrementalAlterConfigs (topics; the broker's own configs are described read-only),
the group protocol's JoinGroup/SyncGroup/Heartbeat/LeaveGroup (`groups.Coordinator`), ListGroups,
DescribeGroups, OffsetCommit and OffsetFetch. Topics are not created by Metadata: the backbone
creates its topics itself.
"""

from __future__ import annotations

import re
from typing import Any

from kio.schema.errors import ErrorCode

from backbone.broker.data import attr
from backbone.broker.groups import Coordinator
from backbone.broker.state import BrokerState
from backbone.broker.wire import ms

NODE_ID = 0
CLUSTER_ID = "backbone-disk-broker"
TOPIC_NAME = re.compile(r"^[a-zA-Z0-9._-]{1,249}$")
TOPIC, BROKER = 2, 4  # config resource types
SET, DELETE = 0, 1  # IncrementalAlterConfigs operations (APPEND/SUBTRACT are for list configs the backbone does not use)


class AdminApis:
    def __init__(self, state: BrokerState, host: str, port: int) -> None:
        self.state = state
        self.host, self.port = host, port
        self.groups = Coordinator()

    # --- cluster
    def _broker(self) -> dict[str, Any]:
        return {"node_id": NODE_ID, "broker_id": NODE_ID, "host": self.host, "port": self.port, "rack": None}

    def metadata(self, request: Any) -> dict[str, Any]:
        names = [t.name for t in request.topics] if request.topics is not None else sorted(self.state.topics)
        topics = []
        for name in names:
            topic = self.state.topics.get(name)
            if topic is None:
                topics.append({"error_code": ErrorCode.unknown_topic_or_partition, "name": name, "is_internal": False, "partitions": []})
                continue
            topics.append({"error_code": 0, "name": name, "is_internal": False, "topic_authorized_operations": -2147483648,
                           "partitions": [{"error_code": 0, "partition_index": p, "leader_id": NODE_ID, "leader_epoch": -1,
                                           "replica_nodes": [NODE_ID], "isr_nodes": [NODE_ID], "offline_replicas": []}
                                          for p in range(len(topic.logs))]})
        return {"throttle_time": 0, "brokers": [self._broker()], "cluster_id": CLUSTER_ID, "controller_id": NODE_ID,
                "topics": topics, "cluster_authorized_operations": -2147483648}

    def describe_cluster(self, request: Any) -> dict[str, Any]:
        return {"throttle_time": 0, "error_code": 0, "error_message": None, "cluster_id": CLUSTER_ID, "controller_id": NODE_ID,
                "brokers": [self._broker()], "cluster_authorized_operations": -2147483648}

    def find_coordinator(self, request: Any) -> dict[str, Any]:
        return {"throttle_time": 0, "error_code": 0, "error_message": None, "node_id": NODE_ID, "host": self.host, "port": self.port}

    # --- topics
    def create_topics(self, request: Any) -> dict[str, Any]:
        results = []
        for wanted in request.topics:
            error, message = 0, None
            partitions = wanted.num_partitions if wanted.num_partitions > 0 else 1
            if wanted.name in self.state.topics:
                error, message = ErrorCode.topic_already_exists, f"topic {wanted.name} already exists"
            elif not TOPIC_NAME.match(wanted.name) or wanted.name in {".", ".."}:
                error, message = ErrorCode.invalid_topic_exception, f"invalid topic name {wanted.name!r}"
            elif wanted.replication_factor > 1:
                error, message = ErrorCode.invalid_replication_factor, "the disk broker is one node: replication factor 1"
            elif not request.validate_only:
                self.state.create_topic(wanted.name, partitions, {c.name: c.value for c in wanted.configs})
            results.append({"name": wanted.name, "error_code": error, "error_message": message,
                            "num_partitions": partitions, "replication_factor": 1, "configs": []})
        return {"throttle_time": 0, "topics": results}

    def delete_topics(self, request: Any) -> dict[str, Any]:
        responses = []
        for name in request.topic_names:
            if name in self.state.topics:
                self.state.delete_topic(name)
                responses.append({"name": name, "error_code": 0})
            else:
                responses.append({"name": name, "error_code": ErrorCode.unknown_topic_or_partition})
        return {"throttle_time": 0, "responses": responses}

    def create_partitions(self, request: Any) -> dict[str, Any]:
        results = []
        for wanted in request.topics:
            topic = self.state.topics.get(wanted.name)
            if topic is None:
                results.append({"name": wanted.name, "error_code": ErrorCode.unknown_topic_or_partition, "error_message": None})
            elif wanted.count <= len(topic.logs):
                results.append({"name": wanted.name, "error_code": ErrorCode.invalid_partitions,
                                "error_message": f"topic has {len(topic.logs)} partitions already"})
            else:
                if not request.validate_only:
                    self.state.add_partitions(topic, wanted.count)
                results.append({"name": wanted.name, "error_code": 0, "error_message": None})
        return {"throttle_time": 0, "results": results}

    # --- configs
    def describe_configs(self, request: Any) -> dict[str, Any]:
        results = []
        for resource in request.resources:
            keys = resource.configuration_keys
            if resource.resource_type == TOPIC:
                topic = self.state.topics.get(resource.resource_name)
                if topic is None:
                    results.append({"error_code": ErrorCode.unknown_topic_or_partition, "error_message": "no such topic",
                                    "resource_type": TOPIC, "resource_name": resource.resource_name, "configs": []})
                    continue
                values = {**self.state.defaults, **topic.configs}
                own = set(topic.configs)
            else:
                values, own = dict(self.state.defaults), set()
            configs = [{"name": k, "value": v, "read_only": resource.resource_type != TOPIC, "is_default": k not in own,
                        "config_source": 1 if k in own else 5, "is_sensitive": False, "synonyms": []}
                       for k, v in sorted(values.items()) if keys is None or k in keys]
            results.append({"error_code": 0, "error_message": None, "resource_type": resource.resource_type,
                            "resource_name": resource.resource_name, "configs": configs})
        return {"throttle_time": 0, "results": results}

    def _alter(self, request: Any, incremental: bool) -> dict[str, Any]:
        responses = []
        for resource in request.resources:
            topic = self.state.topics.get(resource.resource_name) if resource.resource_type == TOPIC else None
            error, message = 0, None
            if topic is None:
                error, message = ErrorCode.unknown_topic_or_partition, "only topic configs can be altered"
            else:
                bad = [c.name for c in resource.configs if c.value is not None and not _valid(c.name, c.value)]
                if bad:
                    error, message = ErrorCode.invalid_config, f"invalid value for {', '.join(bad)}"
                elif not request.validate_only:
                    if incremental:
                        changes = {c.name: (c.value if c.config_operation == SET else None) for c in resource.configs}
                    else:  # AlterConfigs replaces the topic's whole config
                        changes = {k: None for k in topic.configs} | {c.name: c.value for c in resource.configs}
                    self.state.set_configs(topic, changes)
            responses.append({"error_code": error, "error_message": message, "resource_type": resource.resource_type,
                              "resource_name": resource.resource_name})
        return {"throttle_time": 0, "responses": responses}

    def alter_configs(self, request: Any) -> dict[str, Any]:
        return self._alter(request, incremental=False)

    def incremental_alter_configs(self, request: Any) -> dict[str, Any]:
        return self._alter(request, incremental=True)

    # --- groups
    async def join_group(self, request: Any, client_id: str, host: str) -> dict[str, Any]:
        session = ms(request.session_timeout)
        rebalance = ms(attr(request, "rebalance_timeout", default=session))
        answer = await self.groups.join(request.group_id, request.member_id, client_id or "", host, request.protocol_type,
                                        [(p.name, bytes(p.metadata)) for p in request.protocols], session, rebalance,
                                        attr(request, "group_instance_id"))
        return {"throttle_time": 0, **answer}

    async def sync_group(self, request: Any) -> dict[str, Any]:
        answer = await self.groups.sync(request.group_id, request.member_id, request.generation_id,
                                        {a.member_id: bytes(a.assignment) for a in request.assignments})
        return {"throttle_time": 0, **answer}

    def heartbeat(self, request: Any) -> dict[str, Any]:
        return {"throttle_time": 0, "error_code": self.groups.heartbeat(request.group_id, request.member_id, request.generation_id)}

    def leave_group(self, request: Any) -> dict[str, Any]:
        if hasattr(request, "members"):
            members = [{"member_id": m.member_id, "group_instance_id": m.group_instance_id,
                        "error_code": self.groups.leave(request.group_id, m.member_id)} for m in request.members]
            return {"throttle_time": 0, "error_code": 0, "members": members}
        return {"throttle_time": 0, "error_code": self.groups.leave(request.group_id, request.member_id)}

    def list_groups(self, request: Any) -> dict[str, Any]:
        groups = [{"group_id": g.group_id, "protocol_type": g.protocol_type or "consumer", "group_state": g.state}
                  for g in self.groups.groups.values()]
        known = {g["group_id"] for g in groups}
        groups += [{"group_id": name, "protocol_type": "consumer", "group_state": "Empty"}
                   for name in self.state.offsets if name not in known]
        return {"throttle_time": 0, "error_code": 0, "groups": groups}

    def describe_groups(self, request: Any) -> dict[str, Any]:
        out = []
        for group_id in request.groups:
            group = self.groups.groups.get(group_id)
            if group is None:
                out.append({"error_code": 0, "group_id": group_id, "group_state": "Dead" if group_id not in self.state.offsets else "Empty",
                            "protocol_type": "", "protocol_data": "", "members": [], "authorized_operations": -2147483648})
                continue
            members = [{"member_id": m.member_id, "group_instance_id": m.group_instance_id, "client_id": m.client_id,
                        "client_host": m.client_host, "member_metadata": dict(m.protocols).get(group.protocol, b""),
                        "member_assignment": m.assignment} for m in group.members.values()]
            out.append({"error_code": 0, "group_id": group_id, "group_state": group.state, "protocol_type": group.protocol_type,
                        "protocol_data": group.protocol, "members": members, "authorized_operations": -2147483648})
        return {"throttle_time": 0, "groups": out}

    def offset_commit(self, request: Any) -> dict[str, Any]:
        generation = attr(request, "generation_id_or_member_epoch", "generation_id", default=-1)
        error = self.groups.commit_allowed(request.group_id, request.member_id, generation)
        topics, offsets = [], {}
        for wanted in request.topics:
            parts = []
            for p in wanted.partitions:
                if not error:
                    offsets[(wanted.name, p.partition_index)] = (p.committed_offset, p.committed_metadata or "")
                parts.append({"partition_index": p.partition_index, "error_code": error})
            topics.append({"name": wanted.name, "partitions": parts})
        if offsets:
            self.state.commit(request.group_id, offsets)
        return {"throttle_time": 0, "topics": topics}

    def offset_fetch(self, request: Any) -> dict[str, Any]:
        committed = self.state.offsets.get(request.group_id, {})
        if request.topics is None:
            wanted = {}
            for t, p in committed:
                wanted.setdefault(t, []).append(p)
        else:
            wanted = {t.name: list(t.partition_indexes) for t in request.topics}
        topics = []
        for name, partitions in wanted.items():
            parts = []
            for p in partitions:
                offset, metadata = committed.get((name, p), (-1, ""))
                parts.append({"partition_index": p, "committed_offset": offset, "committed_leader_epoch": -1,
                              "metadata": metadata, "error_code": 0})
            topics.append({"name": name, "partitions": parts})
        return {"throttle_time": 0, "topics": topics, "error_code": 0}


def _valid(name: str, value: str) -> bool:
    if name in {"retention.ms", "retention.bytes", "segment.bytes", "segment.ms", "max.message.bytes"}:
        try:
            number = int(value)
        except ValueError:
            return False
        return number >= -1 if name.startswith("retention") else number > 0
    if name == "cleanup.policy":
        return set(value.split(",")) <= {"delete", "compact"}
    return True
