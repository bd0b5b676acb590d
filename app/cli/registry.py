"""`backbone registry users add|list|remove|provision`: the users of the backbone's schema registry.

Edits `BACKBONE_SCHEMA_REGISTRY_USERS_FILE` (default `<data dir>/registry-users.json`); a running
registry picks the change up at its next request. Passwords are read from a file, standard input or
a hidden prompt, stored only as scrypt hashes, and never printed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from app.cli import app, console, get_settings
from backbone.errors import BackboneError
from backbone.files.private import make_private_dirs

if TYPE_CHECKING:
    from backbone.registry.users import UsersFile

registry_app = typer.Typer(help="The backbone's schema registry: its users.", no_args_is_help=True)
users_app = typer.Typer(help="Add, list and remove registry users (HTTP Basic; roles read, write, admin).", no_args_is_help=True)
registry_app.add_typer(users_app, name="users")
app.add_typer(registry_app, name="registry")

_USERS_FILE_HELP = "Users file (default BACKBONE_SCHEMA_REGISTRY_USERS_FILE, else <data dir>/registry-users.json)"


def _users_file(path: Path | None) -> UsersFile:
    from backbone.registry.users import UsersFile  # scrypt (cryptography): when a command runs, not for --help

    chosen = path or get_settings().schema_registry_users_file
    assert chosen is not None  # the settings default it to <data dir>/registry-users.json
    return UsersFile(chosen)


def _password(password_file: Path | None, from_stdin: bool) -> str:
    if password_file is not None:
        try:
            lines = password_file.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise BackboneError(f"cannot read the password file {password_file}: {exc.strerror}") from None
        password = lines[0] if lines else ""
    elif from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    else:
        raise BackboneError("give the password with --password-file F or --password-stdin (no terminal to prompt on)")
    return password


@users_app.command("add")
def add(
    name: str = typer.Argument(..., help="User name (letters, digits, . _ @ -)"),
    role: str = typer.Option(..., "--role", "-r", help="read (GET only), write (register under --subjects), admin (everything)"),
    subjects: list[str] = typer.Option(
        [], "--subjects", "-s", help="write only: subject prefixes, comma-separated or repeated (e.g. raw.tax.)"
    ),
    password_file: Path = typer.Option(None, "--password-file", help="Read the password from the first line of this file"),
    password_stdin: bool = typer.Option(False, "--password-stdin", help="Read the password from the first line of standard input"),
    replace: bool = typer.Option(False, "--replace", help="Change the role and password of an existing user"),
    users_file: Path = typer.Option(None, "--users-file", help=_USERS_FILE_HELP),
) -> None:
    """Add a user (or, with --replace, change one); the password is stored as an scrypt hash only."""
    from backbone.registry.roles import Grant
    from backbone.registry.users import User, check_name

    try:
        grant = Grant.of(role, subjects)
        user = User.create(check_name(name), grant, _password(password_file, password_stdin))
    except ValueError as exc:
        raise BackboneError(str(exc)) from None
    target = _users_file(users_file)
    replaced = target.put(user, replace=replace)
    console.print(f"{'changed' if replaced else 'added'} user [bold]{user.name}[/bold] ({user.grant}) in {target.path}", highlight=False)


@users_app.command("list")
def list_users(users_file: Path = typer.Option(None, "--users-file", help=_USERS_FILE_HELP)) -> None:
    """Every user with its role and subject prefixes (never a password or hash)."""
    target = _users_file(users_file)
    table = Table(title=str(target.path))
    for column in ("user", "role", "subject prefixes"):
        table.add_column(column)
    for user in target.read().values():
        table.add_row(user.name, user.grant.role.value, ", ".join(user.grant.subjects) or "-")
    console.print(table)


@users_app.command("remove")
def remove(
    name: str = typer.Argument(..., help="User name"),
    users_file: Path = typer.Option(None, "--users-file", help=_USERS_FILE_HELP),
) -> None:
    """Remove a user; a running registry refuses its credentials from its next request on."""
    target = _users_file(users_file)
    target.remove(name)
    console.print(f"removed user [bold]{name}[/bold] from {target.path}", highlight=False)


@users_app.command("provision")
def provision(
    passwords_dir: Path = typer.Option(..., "--passwords-dir", help="One <user>.password file per user (0600): kept, or made when missing"),
    users_file: Path = typer.Option(None, "--users-file", help=_USERS_FILE_HELP),
) -> None:
    """Make the users the charter needs (each agency, each backbone workload), each allowed to write
    exactly the subjects its code registers (`backbone.access.registry_users`); other users are kept."""
    from backbone.access.registry_users import plan_for_charter
    from backbone.policy.agreements import default_charter
    from backbone.registry.users import User, new_password

    target = _users_file(users_file)
    users = target.read() if target.exists() else {}
    make_private_dirs(passwords_dir)
    table = Table("user", "role", "subject prefixes", title=str(target.path))
    for name, grant in plan_for_charter(default_charter(), fraud_recipient=get_settings().fraud_recipient).items():
        password_file = passwords_dir / f"{name}.password"
        if not password_file.exists():
            with os.fdopen(os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
                out.write(new_password() + "\n")
        users[name] = User.create(name, grant, _password(password_file, False))
        table.add_row(name, grant.role.value, ", ".join(grant.subjects) or "-")
    target.write(users)
    console.print(table)
