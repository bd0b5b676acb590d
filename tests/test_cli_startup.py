"""The `backbone` command starts quickly because each command imports only its own module: the
command list in `backbone --help` comes from `app.cli.COMMANDS` and must match what the modules register."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from typer.main import get_command

from tests.cli import clean_env

MODULES_AFTER = (
    "import json, sys\n"
    "sys.argv = ['backbone', *sys.argv[1:]]\n"
    "from app.cli import main\n"
    "try:\n    main()\nexcept SystemExit:\n    pass\n"
    "print(json.dumps(sorted(m for m in sys.modules if m.startswith('app.cli.'))), file=sys.stderr)\n"
)


def modules_loaded_by(*args: str) -> tuple[str, list[str]]:
    """What `backbone ARGS` prints, and the app.cli modules it imported."""
    result = subprocess.run([sys.executable, "-c", MODULES_AFTER, *args], capture_output=True, text=True, timeout=60, env=clean_env())
    return result.stdout, json.loads(result.stderr.strip().splitlines()[-1])


def test_every_command_is_listed_with_the_module_that_registers_it_and_its_help() -> None:
    from app.cli import COMMANDS, _register, app

    _register()
    registered = get_command(app).commands
    assert set(registered) == set(COMMANDS) | {"version"}
    for name, (modules, help_line) in COMMANDS.items():
        command = registered[name]
        module = command.callback.__module__ if command.callback else None
        assert module in (None, *(f"app.cli.{m}" for m in modules.split())), name
        real = " ".join((command.short_help or command.help or "").split())
        assert real.startswith(help_line.removesuffix("...").rstrip(" ,.")), name


def test_the_help_lists_every_command_without_importing_any_command_module() -> None:
    from app.cli import COMMANDS

    out, loaded = modules_loaded_by("--help")
    assert loaded == []
    for name in COMMANDS:
        assert re.search(rf"│ {re.escape(name)}\s", out), name


def test_a_command_imports_only_its_own_module() -> None:
    out, loaded = modules_loaded_by("registry", "--help")
    assert loaded == ["app.cli.registry"] and "users" in out
    _, loaded = modules_loaded_by("agreements", "--help")
    assert "app.cli.agreement_changes" in loaded  # `agreements apply` lives there
    assert not {"app.cli.schemas", "app.cli.demo", "app.cli.produce", "app.cli.audit"} & set(loaded)


def test_produce_help_names_every_synthetic_agency() -> None:
    from app.cli.produce import AGENCY_NAMES
    from producers.synthetic import AGENCIES

    assert AGENCY_NAMES == AGENCIES


def test_an_unknown_command_is_a_usage_error(backbone_cli) -> None:  # noqa: ANN001 - the conftest fixture
    result = backbone_cli("no-such-command")
    assert result.returncode == 2 and "no-such-command" in result.stderr


# What a command's help must not import: settings (pydantic-settings) and the client libraries are most
# of a command's start-up time, and help needs none of them (a command imports them when it runs).
NOT_FOR_HELP = ("pydantic_settings", "backbone.settings", "faust", "confluent_kafka", "clickhouse_connect", "chdb")
EVERY_HELP = (
    "import json, sys\n"
    "from typer.main import get_command\n"
    "from app.cli import _register, app\n"
    "_register()\n"
    "def walk(command, ctx):\n"
    "    command.get_help(ctx)\n"
    "    for name, sub in sorted(getattr(command, 'commands', {}).items()):\n"
    "        walk(sub, type(ctx)(sub, info_name=name, parent=ctx))\n"
    "root = get_command(app)\n"
    "from typer._click import Context\n"
    "walk(root, Context(root, info_name='backbone'))\n"
    f"print(json.dumps(sorted(m for m in {NOT_FOR_HELP!r} if m in sys.modules)))\n"
)
LOADED_AFTER = (
    "import json, sys\n"
    "sys.argv = ['backbone', *sys.argv[1:]]\n"
    "from app.cli import main\n"
    "try:\n    main()\nexcept SystemExit:\n    pass\n"
    f"print(json.dumps(sorted(m for m in {NOT_FOR_HELP!r} if m in sys.modules)), file=sys.stderr)\n"
)


def test_the_help_of_every_command_imports_no_settings_and_no_client_library() -> None:
    result = subprocess.run([sys.executable, "-c", EVERY_HELP], capture_output=True, text=True, timeout=120, env=clean_env())
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_a_subcommands_help_through_the_backbone_command_loads_no_settings() -> None:
    # the root's callback (logging set-up from the settings) runs before a subcommand reads its --help
    for args in (("registry", "users", "list", "--help"), ("-v", "dlq", "replay", "--help")):
        result = subprocess.run([sys.executable, "-c", LOADED_AFTER, *args], capture_output=True, text=True, timeout=60, env=clean_env())
        assert "Usage" in result.stdout, result.stderr[-2000:]
        assert json.loads(result.stderr.strip().splitlines()[-1]) == [], args


# Exactly the project modules a command's help imports: the CLI's root, the command's own module(s),
# the role table (`needs`) and the few leaves they name; no keyring, settings, codec or client.
HELP_IMPORTS = (
    "import json, sys\n"
    "sys.argv = ['backbone', *sys.argv[1:]]\n"
    "from app.cli import main\n"
    "try:\n    main()\nexcept SystemExit:\n    pass\n"
    "mine = ('app', 'backbone', 'processors', 'consumers', 'producers', 'cryptography', 'fastavro', 'yaml', 'httpx')\n"
    "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in mine)), file=sys.stderr)\n"
)
BASE = {"app", "app.cli", "backbone", "backbone.errors", "backbone.files", "backbone.files.private"}
ROLE_TABLE = {"app.cli.roles", "backbone.keys", "backbone.keys.role_names"}


@pytest.mark.parametrize(("args", "own"), [
    (("registry", "users", "list"), {"app.cli.registry"}),
    (("audit", "keys"), {"app.cli.audit"} | ROLE_TABLE),  # an oversight command: its role named without its keyring
    (("agreements", "apply"), {"app.cli.agreements", "app.cli.agreement_changes"} | ROLE_TABLE),
])
def test_a_commands_help_imports_its_own_module_and_nothing_it_runs_with(args: tuple[str, ...], own: set[str]) -> None:
    result = subprocess.run([sys.executable, "-c", HELP_IMPORTS, *args, "--help"], capture_output=True, text=True,
                            timeout=60, env=clean_env())
    assert "Usage" in result.stdout, result.stderr[-2000:]
    assert set(json.loads(result.stderr.strip().splitlines()[-1])) == BASE | own
