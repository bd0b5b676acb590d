"""`backbone contract export --odcs EVENT_TYPE`: an event type's data contract (its Avro schema and
its quality rules) as an Open Data Contract Standard v3.1.0 document, validated before it is written."""

from __future__ import annotations

from pathlib import Path

import typer

from app.cli import app, console, get_settings
from backbone.errors import BackboneError

contract_app = typer.Typer(help="Event types' data contracts: export one as an Open Data Contract Standard document.",
                           no_args_is_help=True)
app.add_typer(contract_app, name="contract")


@contract_app.command("export")
def export(event_type: str = typer.Argument(..., help="The event type, e.g. welfare.benefit_claimed"),
           odcs: bool = typer.Option(False, "--odcs", help="As an Open Data Contract Standard v3.1.0 document (YAML)"),
           output: Path = typer.Option(None, "--output", "-o", help="Write it here (default: standard output)")) -> None:
    """Export EVENT_TYPE's contract: its fields with their classification and its quality rules as ODCS
    quality checks (nullValues, invalidValues, duplicateValues, rowCount) and the latency SLA."""
    import yaml

    from backbone.events.catalog import load_catalog
    from backbone.quality.contract import load_quality
    from backbone.quality.odcs import odcs_document, validate_odcs

    if not odcs:
        raise BackboneError("choose the format: --odcs (the only one so far)")
    settings = get_settings()
    catalog = load_catalog(settings.schemas_dir)
    schema = catalog.event(event_type)
    document = odcs_document(schema, load_quality(settings.schemas_dir, catalog).get(event_type))
    validate_odcs(document)
    text = yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
    if output is None:
        console.print(text, markup=False, highlight=False, soft_wrap=True, end="")
    else:
        output.write_text(text)
        console.print(f"wrote {output}: ODCS {document['apiVersion']} contract of {event_type}, validated against its JSON schema",
                      highlight=False)
