"""`backbone acls plan|apply`: Kafka ACLs per agency and component, from the catalog and the charter."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from rich.table import Table

from app.cli import app, console, get_settings
from backbone.errors import BackboneError

if TYPE_CHECKING:
    from confluent_kafka import KafkaError

    from backbone.access.acls import Grant
    from backbone.settings import Settings

acls_app = typer.Typer(help="Kafka ACLs: who may write, read and create which topics and groups.", no_args_is_help=True)
app.add_typer(acls_app, name="acls")


class AclError(BackboneError):
    """The cluster refused or cannot hold the planned ACLs; the message says why and what to do."""


def _planned(settings: Settings) -> list[Grant]:
    from backbone.access.acls import plan_for_charter
    from backbone.policy.agreements import default_charter

    return plan_for_charter(default_charter(), fraud_recipient=settings.fraud_recipient,
                            database_prefix=settings.clickhouse_database_prefix)


@acls_app.command("plan")
def plan(
    output: str = typer.Option("table", "--output", "-o", help="table, or strimzi (KafkaUser resources as YAML)"),
    cluster: str = typer.Option("backbone", "--cluster", help="Strimzi Kafka cluster name (label of each KafkaUser)"),
) -> None:
    """Show the ALLOW bindings the agencies and backbone components need (nothing is changed)."""
    import yaml

    from backbone.access.acls import strimzi_users

    grants = _planned(get_settings())
    if output == "strimzi":
        console.print(yaml.safe_dump_all(strimzi_users(grants, cluster), sort_keys=False), end="", markup=False, highlight=False, soft_wrap=True)
        return
    if output != "table":
        raise BackboneError(f"acls plan: unknown --output {output!r}; use table or strimzi")
    table = Table("principal", "operation", "resource", "name", "pattern", "why")
    for grant in grants:
        table.add_row(grant.principal, grant.operation.upper(), grant.resource, grant.name, grant.pattern, grant.why)
    console.print(table)
    console.print(f"{len(grants)} bindings; `backbone acls apply` creates them", highlight=False)


def _refusal(error: KafkaError, settings: Settings) -> str:
    from confluent_kafka import KafkaError

    code = error.code()
    if code == KafkaError.SECURITY_DISABLED:
        return f"Kafka at {settings.kafka_bootstrap} has no authorizer, so it holds no ACLs; enable one (authorizer.class.name) first"
    if code == KafkaError.CLUSTER_AUTHORIZATION_FAILED:
        return (f"Kafka at {settings.kafka_bootstrap} refused: principal {settings.kafka_sasl_username or '(anonymous)'} "
                "may not alter the cluster's ACLs; run as a super user (BACKBONE_KAFKA_SASL_USERNAME)")
    return f"Kafka at {settings.kafka_bootstrap} refused the ACLs: {error.str()}"


def apply_grants(settings: Settings, grants: list[Grant]) -> int:
    """Create `grants` on the cluster (existing identical bindings are kept); returns how many were sent."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AclOperation

    from backbone.kafka.topics import admin_client, check_reachable

    admin = admin_client(settings)
    check_reachable(admin, settings)
    # Ask first whether the broker enforces authorization at all: a broker without an authorizer
    # (the embedded Tansu broker) reports no authorized operations, and its CreateAcls answer is
    # not one librdkafka can parse (it aborts the process), so it is never sent one.
    try:
        cluster = admin.describe_cluster(include_authorized_operations=True, request_timeout=settings.kafka_timeout_s)
        operations = cluster.result(timeout=settings.kafka_timeout_s).authorized_operations
    except KafkaException as exc:
        raise AclError(_refusal(exc.args[0], settings)) from None
    if operations is None:
        raise AclError(
            f"Kafka at {settings.kafka_bootstrap} does not support ACLs (it reports no authorizer; the embedded "
            "Tansu broker has none): point BACKBONE_KAFKA_BOOTSTRAP at a Kafka cluster with an authorizer"
        )
    if AclOperation.ALTER not in operations and AclOperation.ALL not in operations:
        raise AclError(_refusal(KafkaError(KafkaError.CLUSTER_AUTHORIZATION_FAILED), settings))
    bindings = sorted(grant.binding() for grant in grants)
    futures = admin.create_acls(bindings, request_timeout=settings.kafka_timeout_s)
    for future in futures.values():
        try:
            future.result(timeout=settings.kafka_timeout_s)
        except KafkaException as exc:
            raise AclError(_refusal(exc.args[0], settings)) from None
    return len(bindings)


@acls_app.command("apply")
def apply() -> None:
    """Create the planned bindings through the Kafka AdminClient (run as a super user)."""
    settings = get_settings()
    count = apply_grants(settings, _planned(settings))
    console.print(f"{count} ACL bindings in place on {settings.kafka_bootstrap}", highlight=False)
