"""Checks of what the catalogue writes against the vendored specifications (`vendor/`, no network):
OpenLineage events against the OpenLineage JSON schemas (and each facet against the schema its
`_schemaURL` names), AsyncAPI documents against the AsyncAPI 3.0.0 JSON schema. Each returns the
problems found, empty when the document conforms. The DCAT-AP SHACL check is `dcat.conforms`."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft7Validator, Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from backbone.catalog.openlineage import FACETS_SCHEMA
from backbone.settings import PROJECT_ROOT

VENDOR = PROJECT_ROOT / "vendor"
OPENLINEAGE_SPEC = VENDOR / "openlineage" / "spec"
ASYNCAPI_SCHEMA = VENDOR / "asyncapi" / "asyncapi-3.0.0.json"


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


@cache
def _openlineage_registry() -> tuple[Registry, dict[str, Any]]:
    schemas = [_load(OPENLINEAGE_SPEC / "OpenLineage.json"), _load(FACETS_SCHEMA),
               *(_load(path) for path in sorted((OPENLINEAGE_SPEC / "facets").glob("*.json")))]
    registry = Registry().with_resources((schema["$id"], Resource.from_contents(schema)) for schema in schemas)
    return registry, {schema["$id"]: schema for schema in schemas}


def _errors(validator: Any, instance: Any, where: str) -> list[str]:
    return [f"{where}{'/' + '/'.join(str(p) for p in error.absolute_path) if error.absolute_path else ''}: {error.message}"
            for error in validator.iter_errors(instance)]


def _facets(event: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    found = [(f"run.facets.{k}", v) for k, v in event.get("run", {}).get("facets", {}).items()]
    found += [(f"job.facets.{k}", v) for k, v in event.get("job", {}).get("facets", {}).items()]
    for side in ("inputs", "outputs"):
        for i, dataset in enumerate(event.get(side, [])):
            found += [(f"{side}[{i}].facets.{k}", v) for k, v in dataset.get("facets", {}).items()]
    return found


def openlineage_problems(event: dict[str, Any], kind: str = "RunEvent") -> list[str]:
    """Problems of one OpenLineage event (as JSON): the event against `kind` (`RunEvent`, `JobEvent`),
    and every facet against the definition its `_schemaURL` points to; a facet without a vendored
    schema is one."""
    _, by_id = _openlineage_registry()
    core = _load(OPENLINEAGE_SPEC / "OpenLineage.json")["$id"]
    problems = _errors(_openlineage_validator(f"{core}#/$defs/{kind}"), event, "event")
    for where, facet in _facets(event):
        url = facet.get("_schemaURL", "")
        if url.partition("#")[0] not in by_id:
            problems.append(f"{where}: no vendored schema for {url!r}")
            continue
        problems += _errors(_openlineage_validator(url), facet, where)
    return problems


@cache
def _openlineage_validator(url: str) -> Draft202012Validator:
    registry, _ = _openlineage_registry()
    return Draft202012Validator({"$ref": url}, registry=registry)


@cache
def _asyncapi_validator() -> Draft7Validator:
    schema = _load(ASYNCAPI_SCHEMA)
    # every definition is a resource of its own, named by its `$id` (the bundle's `$ref`s use them)
    resources = [(schema["$id"], DRAFT7.create_resource(schema))]
    resources += [(key, DRAFT7.create_resource(value)) for key, value in schema.get("definitions", {}).items()]
    return Draft7Validator(schema, registry=Registry().with_resources(resources))


def asyncapi_problems(document: dict[str, Any]) -> list[str]:
    """Problems of one AsyncAPI document against the AsyncAPI 3.0.0 JSON schema."""
    return _errors(_asyncapi_validator(), document, "asyncapi")
