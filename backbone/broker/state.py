"""What the disk broker keeps besides the logs, in files under its data dir: the topics with their
partition counts and configs (`topics.json`), each group's committed offsets (`groups/<hex of the
group id>.json`) and the next producer id (`producers.json`). Each is written whole to a temporary
file and renamed over the old one, so a crash leaves the old or the new, never half. Offsets are
written at most every `FLUSH_S` by the broker (`flush`) and at shutdown: a crash loses at most that
much of the commits, and the consumers read those records again (at least once, as on Kafka).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backbone.broker.compaction import compact
from backbone.broker.log import PartitionLog
from backbone.files.private import private_directory

FLUSH_S = 0.5
DAY_MS = 86_400_000

# The broker's defaults, as Kafka's are (`log.retention.hours=168`); a topic's own config wins.
DEFAULTS: dict[str, str] = {
    "cleanup.policy": "delete",
    "retention.ms": str(7 * DAY_MS),
    "retention.bytes": "-1",
    "segment.bytes": str(64 * 1024 * 1024),
    "segment.ms": str(3_600_000),
    "max.message.bytes": str(8 * 1024 * 1024),
    "message.timestamp.type": "CreateTime",
    "delete.retention.ms": str(DAY_MS),
}
RECOMPACT_S = 600.0  # a compacted partition is cleaned when its active segment rolled, or this often (tombstones expire)


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as file:
        json.dump(data, file)
    tmp.replace(path)


@dataclass
class Topic:
    name: str
    configs: dict[str, str]
    defaults: dict[str, str] = field(default_factory=lambda: DEFAULTS)  # the broker's
    logs: list[PartitionLog] = field(default_factory=list)

    def config(self, key: str) -> str:
        return self.configs.get(key, self.defaults.get(key, ""))

    def compacted(self) -> bool:
        return "compact" in self.config("cleanup.policy") and "delete" not in self.config("cleanup.policy")

    def retention(self) -> tuple[int, int]:
        """(retention.ms, retention.bytes) to apply; (-1, -1) for a compacted topic: compaction, not age, removes its records."""
        if self.compacted():
            return -1, -1
        return int(self.config("retention.ms")), int(self.config("retention.bytes"))


class BrokerState:
    """Topics, configs, committed offsets and producer ids of one broker, on disk under `root`."""

    def __init__(self, root: Path, retention_ms: int | None = None) -> None:
        """`retention_ms`: the broker's default for topics that set none (Kafka's log.retention.ms)."""
        # Raw events (personal data) and offsets live here: this user's only, or the broker does not start.
        self.root = private_directory(root, "disk broker's data directory")
        self.defaults = {**DEFAULTS, **({"retention.ms": str(retention_ms)} if retention_ms is not None else {})}
        for sub in ("topics", "groups"):
            (root / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        self._topics_file = root / "topics.json"
        self._producers_file = root / "producers.json"
        self.topics: dict[str, Topic] = {}
        saved = json.loads(self._topics_file.read_text()) if self._topics_file.exists() else {}
        for name, spec in saved.items():
            topic = Topic(name, dict(spec["configs"]), self.defaults)
            topic.logs = [self._open_log(topic, p) for p in range(spec["partitions"])]
            self.topics[name] = topic
        self.next_producer_id = json.loads(self._producers_file.read_text())["next"] if self._producers_file.exists() else 1000
        self.offsets: dict[str, dict[tuple[str, int], tuple[int, str]]] = {}
        for path in (root / "groups").glob("*.json"):
            saved_group = json.loads(path.read_text())
            self.offsets[saved_group["group"]] = {(t, int(p)): (o, m) for t, p, o, m in saved_group["offsets"]}
        self._dirty: set[str] = set()
        self._flushed = time.monotonic()

    def _open_log(self, topic: Topic, partition: int) -> PartitionLog:
        return PartitionLog(self.root / "topics" / f"{topic.name.encode().hex()}-{partition}",
                            int(topic.config("segment.bytes")), int(topic.config("segment.ms")))

    def _save_topics(self) -> None:
        write_json(self._topics_file, {t.name: {"partitions": len(t.logs), "configs": t.configs} for t in self.topics.values()})

    def create_topic(self, name: str, partitions: int, configs: dict[str, str]) -> Topic:
        topic = Topic(name, {k: v for k, v in configs.items() if v is not None}, self.defaults)
        topic.logs = [self._open_log(topic, p) for p in range(partitions)]
        self.topics[name] = topic
        self._save_topics()
        return topic

    def add_partitions(self, topic: Topic, count: int) -> None:
        topic.logs += [self._open_log(topic, p) for p in range(len(topic.logs), count)]
        self._save_topics()

    def delete_topic(self, name: str) -> None:
        topic = self.topics.pop(name)
        self._save_topics()
        for log in topic.logs:
            log.remove()
        for group, offsets in self.offsets.items():
            if any(t == name for t, _ in offsets):
                self.offsets[group] = {k: v for k, v in offsets.items() if k[0] != name}
                self._dirty.add(group)

    def set_configs(self, topic: Topic, configs: dict[str, str | None]) -> None:
        for key, value in configs.items():
            if value is None:
                topic.configs.pop(key, None)
            else:
                topic.configs[key] = value
        for log in topic.logs:
            log.segment_bytes, log.segment_ms = int(topic.config("segment.bytes")), int(topic.config("segment.ms"))
        self._save_topics()

    def new_producer_id(self) -> int:
        producer_id = self.next_producer_id
        self.next_producer_id += 1
        write_json(self._producers_file, {"next": self.next_producer_id})
        return producer_id

    def commit(self, group: str, offsets: dict[tuple[str, int], tuple[int, str]]) -> None:
        self.offsets.setdefault(group, {}).update(offsets)
        self._dirty.add(group)

    def flush(self, force: bool = False) -> None:
        """Write the groups whose offsets changed, at most every FLUSH_S unless `force`."""
        if not self._dirty or (not force and time.monotonic() - self._flushed < FLUSH_S):
            return
        for group in sorted(self._dirty):
            rows = [[t, p, o, m] for (t, p), (o, m) in self.offsets.get(group, {}).items()]
            write_json(self.root / "groups" / f"{group.encode().hex()[:200]}.json", {"group": group, "offsets": rows})
        self._dirty.clear()
        self._flushed = time.monotonic()

    def enforce_retention(self) -> tuple[int, int]:
        """Retention (whole old segments) and compaction (superseded and expired records of compacted
        topics); (segments deleted, records compacted away)."""
        deleted = removed = 0
        now = time.monotonic()
        for topic in self.topics.values():
            retention_ms, retention_bytes = topic.retention()
            compacted = "compact" in topic.config("cleanup.policy")
            for log in topic.logs:
                deleted += log.enforce_retention(retention_ms, retention_bytes)
                active = log.segments[-1].base
                if compacted and len(log.segments) > 1 and (active != log.compacted_active or now - log.compacted_time > RECOMPACT_S):
                    removed += compact(log, int(topic.config("delete.retention.ms")))
                    log.compacted_active, log.compacted_time = active, now
        return deleted, removed

    def close(self) -> None:
        self.flush(force=True)
        for topic in self.topics.values():
            for log in topic.logs:
                log.close()
