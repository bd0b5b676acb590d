"""Writing the lineage and catalogue (`backbone catalog`, the demo): the documents `backbone.catalog`
generates from the charter, each checked against its vendored specification before it is written,
in one directory per kind:

    <out>/ropa/<agency>.md|.html|.json        GDPR Art. 30 record of processing, per controller agency
    <out>/asyncapi/<agency>.json              AsyncAPI 3.0: what the agency sends and exactly what it receives
    <out>/dcat/catalog.ttl|.jsonld            DCAT-AP 3: each agreement's released view as a dataset
    <out>/openlineage/<id>@<version>.json     OpenLineage job event: each agreement version's static lineage
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from backbone.catalog import asyncapi, dcat, ropa
from backbone.errors import BackboneError
from backbone.policy.agreements import Charter
from backbone.settings import Settings

KINDS = ("ropa", "asyncapi", "dcat", "openlineage")


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)  # documentation, no personal data: wherever the user says
    path.write_text(text)
    return path


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


def write_ropa(charter: Charter, out: Path, agencies: list[str] | None = None) -> list[Path]:
    records = ropa.records(charter)
    chosen = agencies or sorted(records)
    unknown = sorted(set(chosen) - set(records))
    if unknown:
        raise BackboneError(f"no agreement names agency {', '.join(unknown)}; agencies of the charter: {', '.join(sorted(records))}")
    written = []
    for agency in chosen:
        written += [_write(out / "ropa" / f"{agency}.md", ropa.markdown(records[agency])),
                    _write(out / "ropa" / f"{agency}.html", ropa.html_page(records[agency])),
                    _write(out / "ropa" / f"{agency}.json", _json(records[agency]))]
    return written


def servers(settings: Settings) -> asyncapi.Servers:
    return asyncapi.Servers(settings.kafka_bootstrap, settings.kafka_security_protocol, settings.kafka_sasl_mechanism,
                            settings.schema_registry_url, settings.kafka_partitions)


def write_asyncapi(charter: Charter, settings: Settings, out: Path, agencies: list[str] | None = None) -> list[Path]:
    from backbone.catalog.validation import asyncapi_problems

    known = asyncapi.agencies(charter)
    chosen = agencies or known
    unknown = sorted(set(chosen) - set(known))
    if unknown:
        raise BackboneError(f"agency {', '.join(unknown)} neither publishes nor receives events; agencies: {', '.join(known)}")
    written = []
    for agency in chosen:
        document = asyncapi.document(agency, charter, servers(settings))
        problems = asyncapi_problems(document)
        if problems:  # a bug of the generator, never of the user's input: say what the schema refused
            raise BackboneError(f"the AsyncAPI document of {agency} does not validate against AsyncAPI 3.0.0: {problems[0]}")
        written.append(_write(out / "asyncapi" / f"{agency}.json", _json(document)))
    return written


def endpoints(settings: Settings) -> dcat.Endpoints:
    from processors.lineage import namespaces

    names = namespaces(settings)
    return dcat.Endpoints(kafka=names.kafka, clickhouse=names.clickhouse)


def write_dcat(charter: Charter, settings: Settings, out: Path) -> list[Path]:
    graph = dcat.graph(charter, endpoints(settings))
    ok, report = dcat.conforms(graph)
    if not ok:
        raise BackboneError(f"the DCAT-AP catalogue does not pass the DCAT-AP 3.0.1 shapes: {report.splitlines()[3:8]}")
    return [_write(out / "dcat" / "catalog.ttl", graph.serialize(format="turtle")),
            _write(out / "dcat" / "catalog.jsonld", graph.serialize(format="json-ld", indent=2))]


def write_openlineage(charter: Charter, settings: Settings, out: Path) -> list[Path]:
    from openlineage.client.serde import Serde

    from backbone.catalog.openlineage import job_event
    from backbone.catalog.validation import openlineage_problems
    from processors.lineage import namespaces

    written = []
    now = datetime.now(UTC)
    for agreement in sorted(charter.agreements, key=lambda a: (a.id, a.version)):
        event = Serde.to_dict(job_event(agreement, charter, now, namespaces(settings), settings.clickhouse_database_prefix))
        problems = openlineage_problems(event, "JobEvent")
        if problems:
            raise BackboneError(f"the OpenLineage job event of {agreement.key} does not validate: {problems[0]}")
        written.append(_write(out / "openlineage" / f"{agreement.key}.json", _json(event)))
    return written


def write_all(charter: Charter, settings: Settings, out: Path) -> dict[str, list[Path]]:
    """Every kind, under `out`; kind -> the files written."""
    return {"ropa": write_ropa(charter, out), "asyncapi": write_asyncapi(charter, settings, out),
            "dcat": write_dcat(charter, settings, out), "openlineage": write_openlineage(charter, settings, out)}


def default_directory(settings: Settings) -> Path:
    return settings.data_dir / "catalog"


def entry(charter: Charter, settings: Settings, kind: str, name: str) -> tuple[str, str]:
    """One catalogue entry as (content type, text), for the console's links: `lineage/<id@version>`,
    `asyncapi/<agency>`, `ropa/<agency>`, `dcat/catalog`. `KeyError` when there is no such entry."""
    if kind == "lineage":
        from openlineage.client.serde import Serde

        from backbone.catalog.openlineage import job_event
        from processors.lineage import namespaces

        agreement = next((a for a in charter.agreements if a.key == name), None)
        if agreement is None:
            raise KeyError(name)
        event = job_event(agreement, charter, datetime.now(UTC), namespaces(settings), settings.clickhouse_database_prefix)
        return "application/json", _json(Serde.to_dict(event))
    if kind == "asyncapi" and name in asyncapi.agencies(charter):
        return "application/json", _json(asyncapi.document(name, charter, servers(settings)))
    if kind == "ropa" and name in (records := ropa.records(charter)):
        return "text/html", ropa.html_page(records[name])
    if kind == "dcat" and name == "catalog":
        return "text/turtle", dcat.graph(charter, endpoints(settings)).serialize(format="turtle")
    raise KeyError(f"{kind}/{name}")
