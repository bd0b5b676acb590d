"""Processes a test started and what they started, read from /proc: to check every one has stopped."""

from __future__ import annotations

import os
import signal
from pathlib import Path


def descendants(pid: int) -> list[int]:
    """PIDs of every living process below `pid` (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie has stopped; only its parent has not collected it yet
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def as_at_a_terminal() -> None:
    """`preexec_fn` for a command a test stops as a user at a terminal would (Ctrl-C, a closed
    terminal's SIGHUP): SIGINT and SIGHUP at their defaults in the child, whatever this test process
    inherited (a suite started with `nohup`, or as a background job of a non-interactive shell, has
    both ignored, and an ignored signal stays ignored across exec: the backbone honours that on
    purpose, so the test would see a command that never stops)."""
    for signum in (signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
