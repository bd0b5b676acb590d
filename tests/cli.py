"""Running the `backbone` command in tests as a user would: one way for every test file.

`run_backbone(*args, env=...)` runs it in a child process with the caller's BACKBONE_* variables
removed (only what the test passes configures it), a wide terminal so rich tables do not wrap, and a
bounded time. `CLI` is the argv prefix for tests that start it themselves (`Popen`, signals).
The `backbone_cli` fixture (conftest.py) runs it in-process, for fast checks of exit codes and output.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from backbone.settings import PROJECT_ROOT

CLI = [sys.executable, "-c", "from app.cli import main; main()"]


def clean_env(values: Mapping[str, str] | None = None, **more: str) -> dict[str, str]:
    """This process's environment without any BACKBONE_* variable, plus `values` and a wide terminal."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("BACKBONE_")}
    return env | {"COLUMNS": "200"} | dict(values or {}) | more


def run_backbone(*args: str, env: Mapping[str, str] | None = None, timeout: float = 120.0, cwd: Path = PROJECT_ROOT,
                 input: str | None = None) -> subprocess.CompletedProcess[str]:  # noqa: A002 - subprocess's name
    """`backbone ARGS` in a child process configured only by `env`: exit code, stdout and stderr."""
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=clean_env(env),
                          input=input)
