"""Who may do what in the registry (pure: no I/O).

Three roles, in the spirit of Confluent's RBAC but small enough to audit at a glance:
- `read`: every GET (subjects, versions, schemas by id, config, mode);
- `write`: read, plus register, look up, check compatibility and set the compatibility level of
  subjects that start with one of the user's prefixes (an agency: `raw.<agency>.`; the processor:
  `shared.`, `audit.decisions`, `alerts.fraud`). Its text form is `write:raw.tax.,raw.consent`;
- `admin`: everything, including the global `/config`, `/mode` and every DELETE.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, StrEnum


class Role(StrEnum):
    READ = "read"
    WRITE = "write"
    ADMIN = "admin"


class Access(Enum):
    """What a route needs."""

    READ = "read"  # GET requests
    SUBJECT = "subject"  # writes scoped to the subject in the path
    ADMIN = "admin"  # global configuration, mode, deletes


@dataclass(frozen=True, slots=True)
class Grant:
    """A role and, for `write`, the subject prefixes it covers."""

    role: Role
    subjects: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.role is Role.WRITE and not self.subjects:
            raise ValueError("a write user needs at least one subject prefix, e.g. raw.tax.")
        if self.role is not Role.WRITE and self.subjects:
            raise ValueError(f"subject prefixes apply to write users only, not to {self.role.value}")
        for prefix in self.subjects:
            if not prefix or prefix != prefix.strip() or "/" in prefix:
                raise ValueError(f"subject prefix {prefix!r} must be non-empty, without spaces or '/'")

    @classmethod
    def of(cls, role: str, subjects: list[str] | tuple[str, ...] = ()) -> Grant:
        """`role` (read, write, admin) with `subjects`; each entry may hold comma-separated prefixes."""
        try:
            parsed = Role(role.strip().lower())
        except ValueError:
            raise ValueError(f"unknown role {role!r}; one of read, write, admin") from None
        prefixes = [part.strip() for entry in subjects for part in entry.split(",") if part.strip()]
        return cls(parsed, tuple(dict.fromkeys(prefixes)))

    @classmethod
    def parse(cls, text: str) -> Grant:
        """`read`, `admin` or `write:<prefix>[,<prefix>...]`."""
        role, _, prefixes = text.partition(":")
        return cls.of(role, [prefixes] if prefixes else [])

    def __str__(self) -> str:
        return f"{self.role.value}:{','.join(self.subjects)}" if self.subjects else self.role.value

    def covers(self, subject: str) -> bool:
        return any(subject.startswith(prefix) for prefix in self.subjects)

    def permits(self, access: Access, subject: str | None) -> bool:
        """May a holder of this grant do something needing `access` (on `subject`, when scoped)?"""
        if self.role is Role.ADMIN or access is Access.READ:
            return True
        if access is Access.SUBJECT and self.role is Role.WRITE:
            return subject is not None and self.covers(subject)
        return False


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request comes from."""

    name: str
    grant: Grant


ANONYMOUS = Principal("anonymous", Grant(Role.ADMIN))
