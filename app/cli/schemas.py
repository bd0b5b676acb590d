"""`backbone schemas register|list|check|show`: event schemas in the schema registry."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from app.cli import app, console, get_settings
from backbone.errors import RegistryError, RegistryUnavailable, SchemaIncompatible, registry_unavailable

if TYPE_CHECKING:
    from backbone.settings import Settings

schemas_app = typer.Typer(help="Register, list, check and show event schemas in the schema registry.", no_args_is_help=True)
app.add_typer(schemas_app, name="schemas")

_REQUEST_TIMEOUT_S = 10.0


def _unavailable(settings: Settings, exc: BaseException) -> RegistryUnavailable:
    return registry_unavailable(settings.schema_registry_url, type(exc).__name__)


@contextmanager
def _registry_errors(settings: Settings, what: str) -> Iterator[None]:
    """Turn registry client failures into one-line `RegistryError`s."""
    import requests
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    try:
        yield
    except RegistryError:
        raise
    except SchemaRegistryError as exc:
        raise RegistryError(f"{what}: {exc.error_message} (error code {exc.error_code})", exc.error_code) from None
    except (OSError, requests.RequestException) as exc:
        raise _unavailable(settings, exc) from exc
    except Exception as exc:  # httpx transport errors from the confluent client
        if type(exc).__module__.startswith(("httpx", "httpcore")):
            raise _unavailable(settings, exc) from exc
        raise


def _subject(event_type: str) -> str:
    from backbone.kafka.topics import raw_topic

    return f"{raw_topic(event_type)}-value"


@schemas_app.command("register")
def register_all(
    directory: Path = typer.Argument(None, help="Schema directory (default BACKBONE_SCHEMAS_DIR: the repository's schemas/)"),
) -> None:
    """Register every event schema under `raw.<event_type>-value`."""
    from confluent_kafka.schema_registry import Schema

    from backbone.events.catalog import load_catalog
    from backbone.events.serde import register, registry_client

    settings = get_settings()
    catalog = load_catalog(directory or settings.schemas_dir)
    client = registry_client(settings)
    table = Table("subject", "id", "version")
    for event_type, event in sorted(catalog.events.items()):
        subject = _subject(event_type)
        schema_id = register(client, subject, event.avro)
        with _registry_errors(settings, f"subject {subject}"):
            version = client.lookup_schema(subject, Schema(event.avro_json, "AVRO")).version
        table.add_row(subject, str(schema_id), str(version))
    console.print(table)


@schemas_app.command("list")
def list_subjects() -> None:
    """List subjects with their latest version and schema id."""
    from backbone.events.serde import registry_client

    settings = get_settings()
    client = registry_client(settings)
    table = Table("subject", "latest version", "id", "versions")
    with _registry_errors(settings, "listing subjects"):
        for subject in client.get_subjects():
            latest = client.get_latest_version(subject)
            table.add_row(subject, str(latest.version), str(latest.schema_id), str(len(client.get_versions(subject))))
    console.print(table)


def _read_schema(path: Path, settings: Settings) -> dict[str, Any]:
    """The schema in `path`, with shared `backbone.*` records expanded like the catalog does."""
    from backbone.events.catalog import CatalogError, load_event_schema

    if not path.is_file():
        raise CatalogError(f"{path}: no such schema file")
    shared: dict[str, dict[str, Any]] = {}
    for directory in {path.parent, settings.schemas_dir}:
        for shared_path in sorted(directory.glob("backbone.*.avsc")):
            try:
                document = json.loads(shared_path.read_text())
                shared[f"{document.get('namespace', '')}.{document['name']}"] = document
            except (OSError, ValueError, KeyError):
                continue
    try:
        return load_event_schema(path, shared).avro
    except CatalogError:
        pass  # not an event schema (no header fields): check it as it is
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CatalogError(f"{path}: not a readable JSON Avro schema ({exc})") from None


@schemas_app.command("check")
def check(
    file: Path = typer.Argument(..., help="An .avsc file"),
    subject: str = typer.Option(None, "--subject", "-s", help="Subject to check against (default raw.<file name>-value)"),
) -> None:
    """Check a schema against a subject's compatibility level; exit 1 when incompatible."""
    import requests

    settings = get_settings()
    subject = subject or _subject(file.name.removesuffix(".avsc"))
    avro = _read_schema(file, settings)
    url = f"{settings.schema_registry_url}/compatibility/subjects/{subject}/versions/latest?verbose=true"
    with _registry_errors(settings, f"checking {file} against {subject}"):
        answer = requests.post(
            url, data=json.dumps({"schema": json.dumps(avro)}), timeout=_REQUEST_TIMEOUT_S,
            headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
            auth=settings.schema_registry_credentials(),
        )
    body = answer.json() if answer.headers.get("Content-Type", "").find("json") >= 0 else {}
    if answer.status_code == 404 and body.get("error_code") in (40401, 40402):
        console.print(f"[green]compatible[/green]: {subject} has no versions yet; `backbone schemas register` adds it")
        return
    if answer.status_code != 200:
        raise RegistryError(
            f"checking {file} against {subject}: {body.get('message', answer.reason)} (HTTP {answer.status_code})",
            body.get("error_code"),
        )
    if body.get("is_compatible"):
        console.print(f"[green]compatible[/green] with {subject}")
        return
    messages = body.get("messages") or ["(the registry gave no reasons)"]
    console.print(f"[red]incompatible[/red] with {subject}:")
    for message in messages:
        console.print(f"  - {message}", highlight=False, soft_wrap=True)
    raise SchemaIncompatible(f"{file} is incompatible with {subject} ({len(messages)} reason(s) above)")


def _type_name(avro_type: Any) -> str:
    if isinstance(avro_type, list):
        return " | ".join(_type_name(branch) for branch in avro_type)
    if isinstance(avro_type, dict):
        if "logicalType" in avro_type:
            return f"{avro_type['type']} ({avro_type['logicalType']})"
        if avro_type.get("type") == "array":
            return f"array<{_type_name(avro_type['items'])}>"
        return str(avro_type.get("name", avro_type.get("type")))
    return str(avro_type)


@schemas_app.command("show")
def show(
    subject: str = typer.Argument(..., help="Subject, e.g. raw.welfare.benefit_claimed-value"),
    version: str = typer.Option("latest", "--version", "-v", help="Version number or latest"),
) -> None:
    """Show one version of a subject: id and fields with their types and tags."""
    from backbone.events.serde import registry_client

    if version != "latest" and not version.isdigit():
        raise RegistryError(f"--version must be a version number or latest, not {version!r}")
    settings = get_settings()
    client = registry_client(settings)
    with _registry_errors(settings, f"subject {subject} version {version}"):
        registered = client.get_latest_version(subject) if version == "latest" else client.get_version(subject, int(version))
    schema = json.loads(registered.schema.schema_str)
    console.print(
        f"[bold]{subject}[/bold] version {registered.version}, id {registered.schema_id}: "
        f"{schema.get('namespace', '')}.{schema.get('name', '')}",
        highlight=False,
    )
    table = Table("field", "type", "tags", "doc")
    for field in schema.get("fields", []):
        table.add_row(field["name"], _type_name(field["type"]), ", ".join(field.get("confluent:tags", [])), field.get("doc", ""))
    console.print(table)
