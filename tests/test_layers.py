"""The layers point one way (DESIGN, Layout): app -> producers/processors/consumers -> backbone.
The core imports no layer above it, not even lazily inside a function; consumers import nothing
from producers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from backbone.settings import PROJECT_ROOT

ABOVE_THE_CORE = ("producers", "processors", "consumers", "bench", "app")


def imported(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):  # every import, at module level or inside functions and TYPE_CHECKING blocks
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize(("package", "forbidden"), [
    ("backbone", ABOVE_THE_CORE),
    ("producers", ("processors", "consumers", "bench", "app")),
    ("processors", ("producers", "consumers", "bench", "app")),
    ("consumers", ("producers", "processors", "bench", "app")),
])
def test_no_package_imports_a_layer_above_or_beside_it(package: str, forbidden: tuple[str, ...]) -> None:
    wrong = {f"{path.relative_to(PROJECT_ROOT)}: {name}" for path in sorted((PROJECT_ROOT / package).rglob("*.py"))
             for name in imported(path) & set(forbidden)
             # the demo data generator plants fraud with the rules' own kinds and thresholds (issue 11)
             if not (path.is_relative_to(PROJECT_ROOT / "producers" / "synthetic") and name == "consumers")}
    assert not wrong, sorted(wrong)
