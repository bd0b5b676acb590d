"""The quality area's errors: each message names the file, the rule and the fix."""

from __future__ import annotations

from backbone.errors import BackboneError


class QualityContractError(BackboneError):
    """One or more `quality:` sections are invalid; `problems` lists each (file, rule, fix)."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            message = f"{len(self.problems)} problems in quality contracts:\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(message)


class QualityStateError(BackboneError):
    """A serialised quality window could not be read (not written by this version, or corrupt)."""


class MarkerSpillError(BackboneError):
    """The quality monitor's uniqueness markers could not be written under the data dir (unwritable, disk full)."""
