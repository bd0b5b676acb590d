"""Guard the compacted state topics against repartitioning.

Consent records (and their tombstones) are placed on the partition of the subject's key for the
topic's partition count (`backbone.kafka.topics.subject_partition`); compaction only meets a record
and its tombstone on one partition. Adding partitions to `consent.changes`, `agreements.changes` or
`erasures` therefore leaves records no tombstone ever removes. A worker records each state topic's
partition count the first time it starts (in `<data dir>/state-partitions.json`) and refuses to
start when a topic no longer has it, naming the topic and the fix.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from backbone.errors import BackboneError
from backbone.settings import Settings

RECORD_FILE = "state-partitions.json"


class RepartitionedStateTopic(BackboneError):
    """A compacted state topic has another partition count than the one recorded for it."""


def record_path(settings: Settings) -> Path:
    return settings.data_dir / RECORD_FILE


def check_partitions(counts: Mapping[str, int], path: Path) -> None:
    """Compare `counts` (topic -> partitions now) with those recorded in `path`; record new topics."""
    recorded: dict[str, int] = json.loads(path.read_text()) if path.exists() else {}
    for topic, count in sorted(counts.items()):
        expected = recorded.get(topic)
        if expected is not None and expected != count:
            raise RepartitionedStateTopic(
                f"topic {topic} has {count} partitions, {expected} when this worker first read it ({path}): compacted state "
                f"topics must never be repartitioned (a key's tombstone lands on another partition than its records); recreate "
                f"{topic} with {expected} partitions and publish its records again, or, once every record was republished "
                f"for {count} partitions, remove {topic} from {path}")
    if any(topic not in recorded for topic in counts):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**recorded, **counts}, sort_keys=True))


def guard(settings: Settings, topics: Iterable[str]) -> None:
    """Refuse to start when a state topic's partition count changed since this worker recorded it."""
    from backbone.errors import TopicError
    from backbone.kafka.topics import Topics

    admin = Topics(settings)
    counts = {}
    for topic in topics:
        try:
            counts[topic] = admin.describe(topic).partitions
        except TopicError:  # not made yet: nothing to compare, recorded at the next start
            continue
    check_partitions(counts, record_path(settings))
