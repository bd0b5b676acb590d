"""The DCAT-AP 3 catalogue: each agreement's released view as a dataset, from the charter.

One `dcat:Dataset` per agreement id (its version in force, else its highest), published by the
providing agency, with two distributions (the shared Kafka topic and the recipient's ClickHouse
view), restricted access rights, the GDPR as applicable legislation with the lawful basis in words,
the DPV purposes, the temporal resolution the recipient gets and a contact point. `conforms(graph)`
checks it against the official DCAT-AP 3.0.1 SHACL shapes vendored in `vendor/dcat-ap/`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from urllib.parse import quote

from rdflib import BNode, Graph, Literal, Namespace, URIRef
from rdflib.namespace import DCAT, DCTERMS, FOAF, RDF, RDFS, XSD

from backbone.catalog.flows import agreement_flows
from backbone.catalog.terms import GDPR_ELI, LAWFUL_BASES, agreement_hash, purpose_iri, temporal_resolution
from backbone.policy.agreements import Agreement, Charter
from backbone.settings import PROJECT_ROOT

DCATAP = Namespace("http://data.europa.eu/r5r/")
ELI = Namespace("http://data.europa.eu/eli/ontology#")
VCARD = Namespace("http://www.w3.org/2006/vcard/ns#")
DPV = Namespace("https://w3id.org/dpv#")
OWL_VERSION = URIRef("http://www.w3.org/2002/07/owl#versionInfo")
RESTRICTED = URIRef("http://publications.europa.eu/resource/authority/access-right/RESTRICTED")
PUBLIC_AUTHORITY = URIRef("http://purl.org/adms/publishertype/NationalAuthority")
SHAPES = tuple(PROJECT_ROOT / "vendor" / "dcat-ap" / name for name in (
    "dcat-ap-SHACL.ttl", "shapes.ttl", "range.ttl", "mdr-vocabularies.shape.ttl"))
SKOS_IN_SCHEME = URIRef("http://www.w3.org/2004/02/skos/core#inScheme")


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Where the distributions are reached, and who answers questions about the catalogue."""

    base: str = "urn:data-sharing-backbone:"
    kafka: str = "kafka://127.0.0.1:9092"
    clickhouse: str = "clickhouse://localhost:8123"
    contact: str = "the backbone's operators"


def _agent(graph: Graph, endpoints: Endpoints, agency: str) -> URIRef:
    agent = URIRef(f"{endpoints.base}agency:{quote(agency)}")
    graph.add((agent, RDF.type, FOAF.Agent))
    graph.add((agent, FOAF.name, Literal(agency)))
    graph.add((agent, DCTERMS.type, PUBLIC_AUTHORITY))
    graph.add((PUBLIC_AUTHORITY, RDF.type, URIRef("http://www.w3.org/2004/02/skos/core#Concept")))
    graph.add((PUBLIC_AUTHORITY, URIRef("http://www.w3.org/2004/02/skos/core#prefLabel"), Literal("National authority", lang="en")))
    graph.add((PUBLIC_AUTHORITY, SKOS_IN_SCHEME, URIRef("http://purl.org/adms/publishertype/1.0")))
    return agent


def _typed(graph: Graph, node: URIRef | BNode, kind: URIRef, label: str | None = None) -> URIRef | BNode:
    graph.add((node, RDF.type, kind))
    if label is not None:
        graph.add((node, RDFS.label, Literal(label, lang="en")))
    return node


def dataset(graph: Graph, agreement: Agreement, charter: Charter, endpoints: Endpoints) -> URIRef:
    """Add one agreement's released view as a dataset, with its distributions."""
    node = URIRef(f"{endpoints.base}dataset:{quote(agreement.id)}")
    basis = LAWFUL_BASES[agreement.lawful_basis]
    flows = agreement_flows(agreement, charter)
    fields = "; ".join(f"{f.event_type}: {', '.join(f'{c.name} ({c.treatment})' for c in f.columns)}" for f in flows)
    graph.add((node, RDF.type, DCAT.Dataset))
    graph.add((node, DCTERMS.title, Literal(agreement.title, lang="en")))
    graph.add((node, DCTERMS.description, Literal(
        f"{agreement.title}: {', '.join(agreement.event_types)} from {agreement.provider} as released to {agreement.recipient} "
        f"under agreement {agreement.key} ({agreement.status}). Fields: {fields}.", lang="en")))
    graph.add((node, DCTERMS.identifier, Literal(agreement.key)))
    graph.add((node, OWL_VERSION, Literal(str(agreement.version))))
    graph.add((node, DCTERMS.publisher, _agent(graph, endpoints, agreement.provider)))
    graph.add((node, DCTERMS.accessRights, _typed(graph, RESTRICTED, DCTERMS.RightsStatement)))
    graph.add((RESTRICTED, SKOS_IN_SCHEME, URIRef("http://publications.europa.eu/resource/authority/access-right")))
    graph.add((node, DCATAP.applicableLegislation, _typed(graph, URIRef(GDPR_ELI), ELI.LegalResource)))
    rights = _typed(graph, BNode(), DCTERMS.RightsStatement, f"Lawful basis: {basis.article}, {basis.label}; "
                    f"purposes: {', '.join(agreement.purposes)}; terms SHA-256 {agreement_hash(agreement)}")
    graph.add((node, DCTERMS.rights, rights))
    graph.add((node, DCAT.temporalResolution, Literal(temporal_resolution(agreement), datatype=XSD.duration)))
    for purpose in agreement.purposes:
        graph.add((node, DCAT.keyword, Literal(charter.catalog.purposes[purpose].label, lang="en")))
        graph.add((node, DPV.hasPurpose, URIRef(purpose_iri(charter.catalog, purpose))))
    graph.add((node, DPV.hasLegalBasis, URIRef(basis.dpv)))
    contact = _typed(graph, BNode(), VCARD.Kind)
    graph.add((contact, RDF.type, VCARD.Organization))
    graph.add((contact, VCARD.fn, Literal(f"{agreement.provider}: data protection officer, via {endpoints.contact}")))
    graph.add((node, DCAT.contactPoint, contact))
    for flow in flows:
        for title, url in ((f"Kafka topic {flow.shared_topic}", f"{endpoints.kafka}/{flow.shared_topic}"),
                           (f"ClickHouse view {flow.database}.{flow.view}", f"{endpoints.clickhouse}/{flow.database}.{flow.view}")):
            distribution = URIRef(f"{endpoints.base}distribution:{quote(agreement.id)}:{quote(url, safe='')}")
            graph.add((distribution, RDF.type, DCAT.Distribution))
            graph.add((distribution, DCAT.accessURL, _typed(graph, URIRef(url), RDFS.Resource)))
            graph.add((distribution, DCTERMS.title, Literal(title, lang="en")))
            graph.add((distribution, DCTERMS.rights, rights))
            graph.add((node, DCAT.distribution, distribution))
    return node


def graph(charter: Charter, endpoints: Endpoints | None = None) -> Graph:
    """The catalogue of every agreement's released view."""
    endpoints = endpoints or Endpoints()
    out = Graph()
    for prefix, namespace in (("dcat", DCAT), ("dct", DCTERMS), ("foaf", FOAF), ("dcatap", DCATAP), ("eli", ELI),
                              ("vcard", VCARD), ("dpv", DPV)):
        out.bind(prefix, namespace)
    catalog = URIRef(f"{endpoints.base}catalog")
    out.add((catalog, RDF.type, DCAT.Catalog))
    out.add((catalog, DCTERMS.title, Literal("Data sharing backbone: released views", lang="en")))
    out.add((catalog, DCTERMS.description, Literal(
        "Every data-sharing agreement's released view, generated from the agreements the backbone enforces.", lang="en")))
    out.add((catalog, DCTERMS.publisher, _agent(out, endpoints, "backbone")))
    for agreement_id in sorted({a.id for a in charter.agreements}):
        out.add((catalog, DCAT.dataset, dataset(out, charter.current(agreement_id), charter, endpoints)))
    return out


@cache
def shapes() -> Graph:
    """The vendored DCAT-AP 3.0.1 SHACL shapes, parsed once."""
    out = Graph()
    for path in SHAPES:
        out.parse(path, format="turtle")
    return out


def conforms(data: Graph) -> tuple[bool, str]:
    """Whether `data` passes the DCAT-AP 3.0.1 shapes (violations only; warnings do not count), and
    pyshacl's report."""
    from pyshacl import validate

    ok, _, report = validate(data, shacl_graph=shapes(), inference="none", allow_warnings=True, advanced=True)
    return bool(ok), str(report)
