"""The role each command needs, stated in its help and checked before it runs.

`@needs("oversight")` on a command: in an environment that says it runs as another role
(`BACKBONE_ROLE`), the command stops with one line naming the role and its keyring, before opening
any key. Without `BACKBONE_ROLE` one keyring holds every key (one person, one machine) and every
command runs. `COMMAND_ROLES` is the table of every command so marked, for the README and tests.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from typer._click.globals import get_current_context  # typer vendors click: its context, not the click package's

from app.cli import get_settings
from backbone.errors import BackboneError
from backbone.keys.role_names import WHAT_EACH_HOLDS, Role  # not backbone.keys.roles: help imports no keyring

F = TypeVar("F", bound=Callable[..., Any])

# function qualified name -> the role it needs (filled by `needs`)
COMMAND_ROLES: dict[str, Role] = {}


class WrongRole(BackboneError):
    """This environment runs as another role than the command needs."""


def _article(role: str) -> str:
    return "an" if role[0] in "aeiou" else "a"


def check_role(command: str, role: Role) -> None:
    """Refuse `command` unless this environment may act as `role`."""
    current = get_settings().role
    if current is None or current == role:
        return
    raise WrongRole(f"{command} needs the {role} role's keyring (BACKBONE_ROLE={role}, its keyring <data dir>/{role}.keyring or "
                    f"BACKBONE_KEYRING_PATH, and its master key); this environment is {_article(current)} {current}'s")


def needs(role: Role) -> Callable[[F], F]:
    """Mark a typer command as needing `role`: its help says so and it refuses other roles."""

    def mark(function: F) -> F:
        @functools.wraps(function)
        def checked(*args: Any, **kwargs: Any) -> Any:
            names, context = [], get_current_context(silent=True)
            while context is not None and context.parent is not None:  # the root's name is the program's: skipped
                names.append(context.info_name or "")
                context = context.parent
            check_role(" ".join(["backbone", *reversed(names)]) if names else f"backbone {function.__name__}", role)
            return function(*args, **kwargs)

        checked.__doc__ = f"{(function.__doc__ or '').rstrip()}\n\nRole: {role} ({WHAT_EACH_HOLDS[role]})."
        COMMAND_ROLES[f"{function.__module__}.{function.__qualname__}"] = role
        return checked  # type: ignore[return-value]

    return mark
