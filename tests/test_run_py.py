"""`python3 run.py <command>` as a user or a service manager runs it: a signal sent to run.py's PID
stops the command and everything it started, and run.py exits with the command's code."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.cli import clean_env
from tests.processes import as_at_a_terminal, descendants, pid_alive

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.integration


def installed() -> bool:
    """Whether run.py would use the existing .venv as it is (no install during the test)."""
    stamp = ROOT / ".venv" / ".installed"
    return stamp.exists() and stamp.read_text() == hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_to_run_py_stops_the_command_and_every_process_it_started(tmp_path: Path, signum: int) -> None:
    if not installed():
        pytest.skip("run.py's .venv is not installed for this pyproject.toml (run `python3 run.py test` once)")
    env = clean_env({"BACKBONE_DATA_DIR": str(tmp_path), "BACKBONE_BROKER_PORT": "0", "BACKBONE_SCHEMA_REGISTRY_PORT": "0",
                     "PYTHONUNBUFFERED": "1"})
    process = subprocess.Popen([sys.executable, str(ROOT / "run.py"), "up"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=env, cwd=tmp_path, preexec_fn=as_at_a_terminal)
    lines: list[str] = []
    up = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if "Ctrl-C stops everything" in line:
                up.set()
        up.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    started: list[int] = []
    try:
        up.wait(180)
        assert process.poll() is None and "embedded stack is up" in "".join(lines), "".join(lines)[-3000:]
        assert "broker: the disk broker" in "".join(lines) and "keeps: each topic's messages on disk under" in "".join(lines)  # said at start
        started = descendants(process.pid)  # the broker and the registry
        assert started, "the stack started no process"
        process.send_signal(signum)
        code = process.wait(90)
        reader.join(10)
        assert code == 0, "".join(lines)[-3000:]
        assert "stopped" in "".join(lines)
        deadline = time.monotonic() + 30
        while [pid for pid in started if pid_alive(pid)] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert [pid for pid in started if pid_alive(pid)] == [], "processes the command started outlived run.py"
    finally:  # by PID: what this test started, if it is still there
        for pid in [process.pid, *started]:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        process.wait(10)
