"""AsyncAPI 3.0 documents, one per agency, from the catalog and the charter.

An agency's document holds the raw channels it publishes (its own events' full Avro schemas, which
it sends: `send` operations) and the shared channels it receives (`receive`), each with one message
per agreement that fills it, whose payload is the released schema: exactly the fields that agency
receives, in the form it receives them. Nothing about another agency's raw events or another
recipient's channels appears in it. Servers carry the Kafka bindings (the schema registry and its
wire format) and the deployment's security scheme.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

from backbone.catalog.flows import agreement_flows
from backbone.catalog.terms import LAWFUL_BASES
from backbone.kafka.topics import raw_topic
from backbone.policy.agreements import Charter

VERSION = "3.0.0"
AVRO = "application/vnd.apache.avro+json;version=1.9.0"
KAFKA_BINDING = "0.5.0"
SCRAM = {"SCRAM-SHA-256": "scramSha256", "SCRAM-SHA-512": "scramSha512"}


@dataclass(frozen=True, slots=True)
class Servers:
    """Where agencies connect: the Kafka bootstrap servers, their security, and the registry."""

    kafka_bootstrap: str = "127.0.0.1:9092"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    registry_url: str = "http://127.0.0.1:8081"
    partitions: int = 6


def _id(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


def _security(servers: Servers) -> tuple[dict[str, Any], list[dict[str, str]]]:
    schemes: dict[str, Any] = {"registryBasic": {"type": "http", "scheme": "basic",
                                                 "description": "the schema registry (schemaRegistryUrl) takes HTTP Basic credentials of a registry user"}}
    uses = []
    protocol = servers.security_protocol
    if protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        mechanism = servers.sasl_mechanism or "SCRAM-SHA-512"
        schemes["kafka"] = {"type": SCRAM.get(mechanism, "plain"), "description": f"SASL {mechanism} user of the agency"}
        uses.append({"$ref": "#/components/securitySchemes/kafka"})
    elif protocol == "SSL":
        schemes["kafka"] = {"type": "X509", "description": "the agency's client certificate"}
        uses.append({"$ref": "#/components/securitySchemes/kafka"})
    return schemes, uses


def _server(servers: Servers, uses: list[dict[str, str]]) -> dict[str, Any]:
    secure = servers.security_protocol in ("SSL", "SASL_SSL")
    return {
        "host": servers.kafka_bootstrap.split(",")[0],
        "protocol": "kafka-secure" if secure else "kafka",
        "description": f"the backbone's Kafka ({servers.security_protocol}); bootstrap servers {servers.kafka_bootstrap}",
        "security": uses,
        "bindings": {"kafka": {"schemaRegistryUrl": servers.registry_url, "schemaRegistryVendor": "confluent",
                               "bindingVersion": KAFKA_BINDING}},
    }


def _message(name: str, title: str, summary: str, avro: dict[str, Any], key: str) -> dict[str, Any]:
    return {
        "name": name, "title": title, "summary": summary, "contentType": "application/octet-stream",
        "payload": {"schemaFormat": AVRO, "schema": avro},
        "bindings": {"kafka": {"key": {"type": "string", "description": key}, "schemaIdLocation": "payload",
                               "schemaIdPayloadEncoding": "confluent", "schemaLookupStrategy": "TopicNameStrategy",
                               "bindingVersion": KAFKA_BINDING}},
    }


def _channel(topic: str, description: str, messages: dict[str, Any], servers: Servers) -> dict[str, Any]:
    return {"address": topic, "description": description, "messages": messages, "servers": [{"$ref": "#/servers/kafka"}],
            "bindings": {"kafka": {"topic": topic, "partitions": servers.partitions, "bindingVersion": KAFKA_BINDING}}}


def document(agency: str, charter: Charter, servers: Servers | None = None) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of one agency: what it sends and exactly what it receives."""
    servers = servers or Servers()
    schemes, uses = _security(servers)
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for event_type, schema in sorted(charter.catalog.events.items()):
        if schema.provider != agency or event_type not in charter.catalog.raw_event_types:
            continue
        channel = _id(raw_topic(event_type))
        message = _id(schema.avro["name"])
        channels[channel] = _channel(raw_topic(event_type), f"{event_type} events as {agency} publishes them (raw: only the processors read it)",
                                     {message: _message(message, event_type, schema.avro.get("doc", ""), copy.deepcopy(schema.avro),
                                                        "a keyed hash of the subject's id (never the id itself)")}, servers)
        operations[f"send_{channel}"] = {"action": "send", "channel": {"$ref": f"#/channels/{channel}"},
                                         "messages": [{"$ref": f"#/channels/{channel}/messages/{message}"}]}
    for agreement_id in sorted({a.id for a in charter.agreements if a.recipient == agency}):
        agreement = charter.current(agreement_id)
        basis = LAWFUL_BASES[agreement.lawful_basis]
        for flow in agreement_flows(agreement, charter):
            channel = _id(flow.shared_topic)
            message = _id(flow.view)
            entry = channels.setdefault(channel, _channel(flow.shared_topic, f"{flow.event_type} as released to {agency}", {}, servers))
            entry["messages"][message] = _message(
                message, f"{flow.event_type} under {agreement.key}",
                f"{agreement.title}; purposes {', '.join(agreement.purposes)}; {basis.article}; status {agreement.status}",
                copy.deepcopy(flow.released), f"the subject's pseudonym in the {agreement.linkage_domain} sharing domain")
            operation = operations.setdefault(f"receive_{channel}", {"action": "receive", "channel": {"$ref": f"#/channels/{channel}"},
                                                                     "messages": []})
            operation["messages"].append({"$ref": f"#/channels/{channel}/messages/{message}"})
    return {
        "asyncapi": VERSION,
        "id": f"urn:data-sharing-backbone:agency:{agency}",
        "info": {"title": f"Data sharing backbone: {agency}", "version": "1.0.0",
                 "description": f"The event streams {agency} publishes to the backbone and those it receives under its agreements, "
                                "generated from the loaded schemas and agreements."},
        "defaultContentType": "application/octet-stream",
        "servers": {"kafka": _server(servers, uses)},
        "channels": channels,
        "operations": operations,
        "components": {"securitySchemes": schemes},
    }


def agencies(charter: Charter) -> list[str]:
    """Every agency that publishes events or receives them under an agreement."""
    return sorted({s.provider for s in charter.catalog.events.values() if s.event_type in charter.catalog.raw_event_types}
                  | {a.recipient for a in charter.agreements})


def received_fields(document: dict[str, Any]) -> dict[str, list[str]]:
    """Shared topic -> the fields of every message on it (what the agency receives there)."""
    return {channel["address"]: sorted({field["name"] for message in channel["messages"].values()
                                        for field in message["payload"]["schema"]["fields"]})
            for channel in document["channels"].values() if channel["address"].startswith("shared.")}
