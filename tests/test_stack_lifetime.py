"""The embedded stack's processes never outlive what started them: a Tansu broker left running for
hours with parent 1 after a bench had ended was the bug."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.processes import pid_alive

# The broker, and a Python child started the way the registry and the workers are (ChildProcess).
STARTER = """
import json, sys, time
from pathlib import Path
from backbone.stack.embedded import ChildProcess, EmbeddedBroker
broker = EmbeddedBroker(Path(sys.argv[1])).start()
child = ChildProcess("a python child", [sys.executable, "-c", "import time; time.sleep(120)"], Path(sys.argv[1]) / "logs" / "child.log")
child.start()
print(json.dumps({"broker": broker.pid, "python child": child.pid}), flush=True)
time.sleep(120)
"""


def test_the_broker_and_other_children_stop_when_what_started_them_is_killed(tmp_path: Path) -> None:
    # SIGKILL (or a crash) runs no `finally`: only the kernel can stop the children then.
    starter = subprocess.Popen([sys.executable, "-c", STARTER, str(tmp_path / "stack")],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert starter.stdout is not None
        pids = json.loads(starter.stdout.readline())
        assert all(pid_alive(pid) for pid in pids.values())
    finally:
        starter.send_signal(signal.SIGKILL)
        starter.wait(10)
    deadline = time.monotonic() + 20
    while any(pid_alive(pid) for pid in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = {name: pid for name, pid in pids.items() if pid_alive(pid)}
    for pid in survivors.values():  # only the PIDs this test's child started, and only if the test fails
        subprocess.run(["kill", "-KILL", str(pid)], check=False)
    assert not survivors, f"still running after their parent was killed: {survivors}"
