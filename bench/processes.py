"""The processes a benchmark starts, seen from the benchmark: their resident memory, and a clean stop
on every way a run can end (an exception, Ctrl-C, SIGTERM, SIGHUP, or the run's own hard deadline).

The broker, registry and workers run in sessions of their own (`backbone.stack.embedded.ChildProcess`),
so a signal to the benchmark never reaches them: they stop only through the `finally` blocks and
context managers of the benchmark. Turning SIGTERM, SIGHUP and a deadline into exceptions of the
main thread is what lets those blocks run. Only PIDs started by this process are read or signalled.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType


class RunDeadline(BaseException):
    """The run passed its hard deadline; raised in the main thread so cleanup runs. A BaseException,
    like KeyboardInterrupt, so no `except Exception` on the way swallows it."""


def memory_mb(pid: int | None) -> tuple[float | None, float | None]:
    """(VmRSS, VmHWM) of `pid` in MiB, from /proc; (None, None) once it has exited."""
    if pid is None:
        return None, None
    values: dict[str, float] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                values[line[:5]] = int(line.split()[1]) / 1024
    except OSError:
        return None, None
    return values.get("VmRSS"), values.get("VmHWM")


def rss_mb(pid: int | None) -> float | None:
    return memory_mb(pid)[0]


def stack_children() -> dict[str, int]:
    """PIDs of the broker and the registry: the children of this process that run them."""
    found: dict[str, int] = {}
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid != me:
                continue
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if (len(argv) > 1 and argv[1] == b"broker" and b"tansu" in argv[0].rsplit(b"/", 1)[-1]) or b"backbone.broker" in argv:
            found["broker"] = int(entry.name)  # Tansu, or the disk broker (BACKBONE_EMBEDDED_BROKER=disk)
        elif b"backbone.registry" in argv:
            found["registry"] = int(entry.name)
    return found


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds `pid` has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def clean_stop(deadline_s: float | None = None) -> Iterator[None]:
    """Within this block SIGTERM and SIGHUP raise KeyboardInterrupt in the main thread (Ctrl-C
    already does), and after `deadline_s` seconds RunDeadline is raised: either way the `finally`
    blocks inside stop every process the run started. Main thread only."""

    def interrupt(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    def expired(_signum: int, _frame: FrameType | None) -> None:
        raise RunDeadline(f"the run passed its hard deadline of {deadline_s:g}s")

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    previous_alarm = signal.signal(signal.SIGALRM, expired) if deadline_s else None
    if deadline_s:
        signal.setitimer(signal.ITIMER_REAL, deadline_s)
    try:
        yield
    finally:
        if deadline_s:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous_alarm)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
