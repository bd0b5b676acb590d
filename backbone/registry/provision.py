"""Registry users the embedded stack provisions for itself: an `admin` for the operator and the
`backbone` service user every backbone client sends, each with a fresh random password per start."""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from backbone.files.private import make_private_dirs
from backbone.registry.roles import Grant, Role
from backbone.registry.users import User, UsersFile, new_password


@dataclass(frozen=True, slots=True)
class RegistryUser:
    """A registry user's name and password, as the embedded stack hands them to clients."""

    name: str
    password: SecretStr

    def authorization(self) -> str:
        """The value of an HTTP Basic `Authorization` header."""
        token = base64.b64encode(f"{self.name}:{self.password.get_secret_value()}".encode()).decode()
        return f"Basic {token}"


ADMIN_USER = "admin"
SERVICE_USER = "backbone"


def provision_registry_users(users_path: Path, admin_password_path: Path) -> tuple[RegistryUser, RegistryUser]:
    """(admin, service): both `admin` with fresh random passwords, written (hashed) to `users_path`
    beside any other users already there. The embedded stack is single-tenant, so the one service
    user every backbone client sends may do everything; a deployment gives each principal its own
    user and role instead (README, "Registry access"). The admin password also goes to
    `admin_password_path` (mode 0600) for the operator; the service password only to clients."""
    users_file = UsersFile(users_path)
    users = users_file.read() if users_file.exists() else {}
    made = []
    for name in (ADMIN_USER, SERVICE_USER):
        password = new_password()
        users[name] = User.create(name, Grant(Role.ADMIN), password)
        made.append(RegistryUser(name, SecretStr(password)))
    users_file.write(users)
    make_private_dirs(admin_password_path.parent)
    admin_password_path.touch(mode=0o600, exist_ok=True)
    os.chmod(admin_password_path, 0o600)
    admin_password_path.write_text(made[0].password.get_secret_value() + "\n")
    return made[0], made[1]
