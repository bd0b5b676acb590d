"""ClickHouse sinks: the batching loop (`consumers.batching`) with the ClickHouse target
(`consumers.clickhouse_target`), one per recipient plus one for the audit trail (`consumers.plans`).

After-batch hooks are chosen from a registry, not by special cases: each entry of `LANDING_HOOKS`
is asked for every recipient's sink and may attach a hook (the fraud rules attach to the fraud
recipient's). Adding a hook is one factory and one entry.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field

from clickhouse_connect.driver.client import Client
from confluent_kafka.schema_registry import SchemaRegistryClient

from backbone.policy.agreements import Charter
from backbone.settings import Settings
from consumers.batching import DLQ_TOPIC, BatchingSink
from consumers.clickhouse_target import ClickHouseTarget
from consumers.plans import (
    Destination,
    SinkPlan,
    audit_plan,
    checkpoints_plan,
    operations_plan,
    recipient_plan,
    timestamps_plan,
)

__all__ = ["DLQ_TOPIC", "LANDING_HOOKS", "Destination", "LandingHook", "Sink", "SinkPlan", "audit_plan", "checkpoints_plan",
           "operations_plan", "recipient_plan", "sinks_for", "timestamps_plan"]

ClientFactory = Callable[[], Client]


class Sink(BatchingSink):
    """Lands one plan's topics in ClickHouse: a batching sink whose target is the plan's tables."""

    def __init__(self, settings: Settings, plan: SinkPlan, client: Client, registry: SchemaRegistryClient, *,
                 after_batch: Callable[[set[Hashable]], None] | None = None, batch_rows: int | None = None,
                 batch_seconds: float | None = None, on_close: Callable[[], None] | None = None) -> None:
        self.plan = plan
        super().__init__(settings, ClickHouseTarget(settings, plan, client, registry), group_id=plan.group_id,
                         subscription=plan.subscription, batch_rows=batch_rows, batch_seconds=batch_seconds,
                         after_batch=after_batch, on_close=on_close)


@dataclass
class LandingHook:
    """Runs after each batch a recipient's sink landed (with the destinations it wrote), and is
    closed with the sink."""

    after_batch: Callable[[set[Hashable]], None]
    closers: list[Callable[[], None]] = field(default_factory=list)


# (settings, recipient, client factory or None to share the sink's client, registry, the sink)
HookFactory = Callable[[Settings, str, ClientFactory | None, SchemaRegistryClient, "Sink"], LandingHook | None]


def fraud_rules_hook(settings: Settings, recipient: str, make_client: ClientFactory | None,
                     registry: SchemaRegistryClient, sink: Sink) -> LandingHook | None:
    """The fraud rules on the fraud recipient's database. With a client factory they run on their
    own thread and client, at most every `fraud_interval_s`, so landing never waits for them;
    sharing the sink's client, they run after each batch on the sink's thread."""
    if recipient != settings.fraud_recipient:
        return None
    from consumers.fraud import BackgroundDetection, FraudDetector

    if make_client is None:
        detector = FraudDetector(settings, sink.target.client, registry, leads=sink.leads)
        return LandingHook(detector.after_batch, [detector.close])
    client = make_client()
    background = BackgroundDetection(FraudDetector(settings, client, registry, leads=sink.leads), settings.fraud_interval_s)
    return LandingHook(background.after_batch, [background.close, client.close])


LANDING_HOOKS: dict[str, HookFactory] = {"fraud_rules": fraud_rules_hook}


def sinks_for(settings: Settings, charter: Charter, client: Client | ClientFactory, registry: SchemaRegistryClient,
              recipients: Iterable[str] | None = None, audit: bool = True) -> list[Sink]:
    """One sink per recipient (default: every recipient in the charter), and the audit sinks
    (decisions, their signed checkpoints, operator actions, and the checkpoints' RFC 3161 timestamps).

    Given a client factory (e.g. `lambda: make_client(dsn)`), each sink and each hook get a client
    of their own, closed with the sink: chDB serialises calls per client, so sinks sharing one
    client wait for each other. Given one client, everything shares it and nothing closes it.
    """
    make: ClientFactory | None = None if isinstance(client, Client) else client

    def own_client() -> tuple[Client, list[Callable[[], None]]]:
        if make is None:
            return client, []  # type: ignore[return-value] - the caller's client, not ours to close
        made = make()
        return made, [made.close]

    chosen = sorted(set(recipients) if recipients is not None else {a.recipient for a in charter.agreements})
    sinks = []
    for recipient in chosen:
        own, closers = own_client()
        sink = Sink(settings, recipient_plan(settings, charter, recipient), own, registry)
        hooks = [hook for factory in LANDING_HOOKS.values() if (hook := factory(settings, recipient, make, registry, sink)) is not None]
        sink.after_batch = _each(hook.after_batch for hook in hooks)
        sink.on_close = _chain([*(close for hook in hooks for close in hook.closers), *closers])
        sinks.append(sink)
    if audit:
        for plan in (audit_plan(settings, charter.catalog), checkpoints_plan(settings, charter.catalog),
                     operations_plan(settings, charter.catalog), timestamps_plan(settings, charter.catalog)):
            own, closers = own_client()
            sinks.append(Sink(settings, plan, own, registry, on_close=_chain(closers)))
    return sinks


def _each(calls: Iterable[Callable[[set[Hashable]], None]]) -> Callable[[set[Hashable]], None] | None:
    chosen = list(calls)
    if not chosen:
        return None
    if len(chosen) == 1:
        return chosen[0]

    def run(destinations: set[Hashable]) -> None:
        for call in chosen:
            call(destinations)

    return run


def _chain(calls: list[Callable[[], None]]) -> Callable[[], None] | None:
    if not calls:
        return None

    def run() -> None:
        for call in calls:
            call()

    return run
