"""Reference sets a validity rule checks values against (`reference: <name>`), such as known postcodes.

A contract names each set it uses in its `references:` mapping, name -> a versioned file under
`schemas/reference/` (one value a line, `#` comments; a new version is a new file the contract
names). A set is held in memory for the checks in flight: exactly as a frozenset up to
`BLOOM_ABOVE` values, above that as a Bloom filter (`rbloom`) sized for a false-positive rate of
`BLOOM_FPR`: an unknown value is then taken for a known one with that probability (it passes:
the invalid count can be low by that share of the unknown values, never high), and a known value
is never refused. The SHA-256 of the sorted values pins the version a contract was checked against.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Above this many values a set is held as a Bloom filter: ~1.8 bytes a value at 0.1% instead of ~90
# as a frozenset of short strings (measured on the postcode list: tests/test_quality_reference.py).
BLOOM_ABOVE = 1_000_000
BLOOM_FPR = 0.001


@dataclass(frozen=True)
class ReferenceSet:
    """The values of one reference file, as checked in flight."""

    name: str
    source: str
    sha256: str
    size: int
    members: Any = field(repr=False)  # frozenset[str] or rbloom.Bloom: both answer `value in members`
    false_positive_rate: float = field(default=0.0)  # 0: exact

    @property
    def exact(self) -> bool:
        return self.false_positive_rate == 0.0

    def __contains__(self, value: object) -> bool:
        return isinstance(value, str) and value in self.members

    @classmethod
    def of(cls, name: str, values: Iterable[str], source: str = "(in memory)", bloom_above: int | None = None) -> ReferenceSet:
        """A set of `values`; a Bloom filter above `bloom_above` values (`BLOOM_ABOVE` by default)."""
        distinct = sorted(set(values))
        digest = hashlib.sha256("\n".join(distinct).encode()).hexdigest()
        if len(distinct) <= (BLOOM_ABOVE if bloom_above is None else bloom_above):
            return cls(name, source, digest, len(distinct), frozenset(distinct))
        from rbloom import Bloom

        bloom = Bloom(len(distinct), BLOOM_FPR)
        bloom.update(distinct)
        return cls(name, source, digest, len(distinct), bloom, BLOOM_FPR)


def read_reference(name: str, path: Path, bloom_above: int | None = None) -> ReferenceSet:
    """The reference set in `path`; raises ValueError saying what is wrong with the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"reference {name}: no file {path}; put one value a line there") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"reference {name}: {path} cannot be read as UTF-8 text ({type(exc).__name__})") from None
    values = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not values:
        raise ValueError(f"reference {name}: {path} holds no values; put one value a line there")
    return ReferenceSet.of(name, values, str(path), bloom_above)
