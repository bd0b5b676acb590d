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


# Inside the core: one package per concept, each docstring stating what it may import (issue 24).
CORE = PROJECT_ROOT / "backbone"
TOP_MODULES = {"__init__.py", "settings.py", "errors.py"}
MAX_LINES = 450  # a module past this holds more than one idea: split it (README, "Where things are")


def core_packages() -> list[Path]:
    return sorted(p for p in CORE.iterdir() if p.is_dir() and (p / "__init__.py").exists())


def package_rules(package: Path) -> tuple[set[str], set[str]]:
    """The backbone modules a package may import and the libraries it never imports, from the
    `May import:` and `Never imports:` lines of its docstring."""
    doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text())) or ""
    lines = {line.split(":", 1)[0]: line.split(":", 1)[1] for line in doc.splitlines() if ":" in line}
    assert "May import" in lines, f"{package.relative_to(PROJECT_ROOT)}/__init__.py: docstring has no 'May import:' line"

    def names(key: str) -> set[str]:
        return {name.strip().rstrip(".") for name in lines.get(key, "").split(",") if name.strip().rstrip(".")}

    return names("May import"), names("Never imports")


def imported_modules(path: Path) -> set[str]:
    """Every module an import names, dotted in full (`from backbone import x` counts as backbone.x)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            if node.module == "backbone":
                names.update(f"backbone.{alias.name}" for alias in node.names)
    return names


def test_the_core_top_level_holds_only_settings_and_errors() -> None:
    loose = sorted(p.name for p in CORE.glob("*.py") if p.name not in TOP_MODULES)
    assert not loose, f"modules at the top of backbone/ belong in a package by concept: {loose}"


@pytest.mark.parametrize("package", core_packages(), ids=lambda p: p.name)
def test_each_core_package_imports_only_what_its_docstring_allows(package: Path) -> None:
    allowed, never = package_rules(package)
    own = f"backbone.{package.name}"
    wrong = set()
    for path in sorted(package.rglob("*.py")):
        for name in imported_modules(path):
            top = name.split(".")[0]
            if top in never:
                wrong.add(f"{path.relative_to(PROJECT_ROOT)}: {name} (the docstring says never)")
            if top != "backbone" or name == "backbone" or name == own or name.startswith(own + "."):
                continue
            core = ".".join(name.split(".")[:2])
            if core not in allowed:
                wrong.add(f"{path.relative_to(PROJECT_ROOT)}: {name} (not in 'May import')")
    assert not wrong, sorted(wrong)


def test_core_packages_depend_on_each_other_without_cycles() -> None:
    graph = {f"backbone.{p.name}": {n for n in package_rules(p)[0] if n.count(".") == 1} for p in core_packages()}
    for package in core_packages():  # every named package exists
        for name in graph[f"backbone.{package.name}"]:
            assert name in graph or name in {"backbone.errors", "backbone.settings"}, f"{package.name}: unknown {name}"
    done: set[str] = set()

    def visit(node: str, path: tuple[str, ...]) -> None:
        assert node not in path, f"import cycle: {' -> '.join(path + (node,))}"
        if node in done or node not in graph:
            return
        for nxt in sorted(graph[node]):
            visit(nxt, path + (node,))
        done.add(node)

    for node in sorted(graph):
        visit(node, ())


@pytest.mark.parametrize("folder", ["backbone", "processors", "consumers", "producers", "app"])
def test_no_module_holds_more_than_one_idea(folder: str) -> None:
    long = {f"{p.relative_to(PROJECT_ROOT)}: {len(p.read_text().splitlines())} lines"
            for p in (PROJECT_ROOT / folder).rglob("*.py") if len(p.read_text().splitlines()) > MAX_LINES}
    assert not long, sorted(long)


def test_a_rule_a_package_breaks_is_reported(tmp_path: Path) -> None:
    """The checker itself: a module importing past its package's rules is named."""
    package = tmp_path / "demo"
    package.mkdir()
    (package / "__init__.py").write_text('"""A package.\n\nMay import: backbone.errors.\nNever imports: chdb.\n"""\n')
    (package / "bad.py").write_text("import chdb\nfrom backbone.kafka import topics\nfrom backbone.errors import BackboneError\n")
    allowed, never = package_rules(package)
    assert allowed == {"backbone.errors"} and never == {"chdb"}
    assert imported_modules(package / "bad.py") == {"chdb", "backbone.kafka", "backbone.errors"}
