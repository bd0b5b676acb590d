"""`backbone catalog ropa|asyncapi|dcat|lineage|all`: the lineage and catalogue of what the backbone
enforces, generated from the loaded schemas and agreements (`app/catalog.py`, `backbone.catalog`)."""

from __future__ import annotations

from pathlib import Path

import typer

from app.cli import app, console

catalog_app = typer.Typer(help="Lineage and catalogue from the enforced agreements: record of processing, "
                               "AsyncAPI, DCAT-AP, OpenLineage.", no_args_is_help=True)
app.add_typer(catalog_app, name="catalog")

OUTPUT = typer.Option(None, "--output", "-o", help="Directory to write into (default <data dir>/catalog)")
AGENCY = typer.Option(None, "--agency", help="Only this agency (repeatable; default every agency)")


def _setup(output: Path | None):  # noqa: ANN202 - (charter, settings, directory)
    from app.catalog import default_directory
    from backbone.policy.agreements import default_charter
    from backbone.settings import get_settings

    settings = get_settings()
    return default_charter(), settings, output or default_directory(settings)


def _report(kind: str, paths: list[Path]) -> None:
    console.print(f"{kind}: {len(paths)} files in {paths[0].parent if paths else '-'}", soft_wrap=True, markup=False)
    for path in paths:
        console.print(f"  {path}", soft_wrap=True, markup=False, highlight=False)


@catalog_app.command("ropa")
def ropa_command(output: Path | None = OUTPUT, agency: list[str] | None = AGENCY) -> None:
    """GDPR Art. 30 record of processing per controller agency (Markdown, HTML, JSON)."""
    from app.catalog import write_ropa

    charter, _, directory = _setup(output)
    _report("record of processing", write_ropa(charter, directory, agency or None))


@catalog_app.command("asyncapi")
def asyncapi_command(output: Path | None = OUTPUT, agency: list[str] | None = AGENCY) -> None:
    """AsyncAPI 3.0 per agency: its raw channels, and exactly the fields it receives on its shared channels."""
    from app.catalog import write_asyncapi

    charter, settings, directory = _setup(output)
    _report("AsyncAPI 3.0 (validated)", write_asyncapi(charter, settings, directory, agency or None))


@catalog_app.command("dcat")
def dcat_command(output: Path | None = OUTPUT) -> None:
    """DCAT-AP 3 (Turtle and JSON-LD): each agreement's released view as a dataset, checked with the SHACL shapes."""
    from app.catalog import write_dcat

    charter, settings, directory = _setup(output)
    _report("DCAT-AP 3 (passes the DCAT-AP 3.0.1 shapes)", write_dcat(charter, settings, directory))


@catalog_app.command("lineage")
def lineage_command(output: Path | None = OUTPUT) -> None:
    """OpenLineage job events: each agreement version's static lineage, column by column."""
    from app.catalog import write_openlineage

    charter, settings, directory = _setup(output)
    _report("OpenLineage (validated)", write_openlineage(charter, settings, directory))


@catalog_app.command("all")
def all_command(output: Path | None = OUTPUT) -> None:
    """Every document above."""
    from app.catalog import write_all

    charter, settings, directory = _setup(output)
    for kind, paths in write_all(charter, settings, directory).items():
        _report(kind, paths)
