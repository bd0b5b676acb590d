"""`backbone audit subject|verify|receipt|verify-receipt|keys|rotate-key`: oversight of the audit
trail, and proof that it is the trail the processors wrote (and, with RFC 3161 timestamps, when)."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from app.cli import app, console, get_settings
from app.cli.roles import needs
from backbone.errors import BackboneError

audit_app = typer.Typer(help="Oversight: who received what about whom, and why; and proof the trail is intact.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")

KEYS_OPTION = typer.Option(None, "--keys", help="Published public keys (the JSON `backbone audit keys --output` writes; "
                                                "default BACKBONE_AUDIT_KEYS_FILE), with the keyring's own when it opens")


def _charter(settings):  # noqa: ANN001, ANN202 - Settings -> Charter
    """The agreement versions as the processors know them: the files, and every version published
    on agreements.changes when Kafka answers (the files alone otherwise)."""
    from backbone.control import agreement_changes
    from backbone.events.catalog import load_catalog
    from backbone.policy.agreements import Charter, load_agreements

    charter = load_agreements(settings.agreements_dir, load_catalog(settings.schemas_dir))
    try:
        versions, _ = agreement_changes.published(settings, charter, timeout=5.0)
    except BackboneError:
        return charter
    return Charter(charter.catalog, tuple(versions.values()), charter.sources)


def _public_keys(settings, path: Path | None) -> dict[str, Any]:  # noqa: ANN001 - Settings
    """Key id -> `PublicKey`: the published keys (--keys, else BACKBONE_AUDIT_KEYS_FILE) and the keyring's own."""
    from backbone.audit.log import public_key_map
    from backbone.audit.published import verifier_keys

    return public_key_map(verifier_keys(settings, path))


@audit_app.command("subject")
@needs("oversight")
def subject(national_id: str = typer.Argument(..., help="The person's national id (never stored: only its oversight pseudonym is looked up)"),
            keys: Path = KEYS_OPTION) -> None:
    """List every disclosure about one person: recipient, when, agreement, purposes, fields; and
    whether the records shown verify against their signed checkpoints."""
    from backbone.clickhouse.client import make_client
    from backbone.control.erasure import recorded_erasures
    from backbone.events.catalog import load_catalog
    from backbone.keys.keyring import Keyring
    from consumers.audit import disclosures, subject_token
    from consumers.audit_trail import verify_subject

    settings = get_settings()
    keyring = Keyring.open(settings)
    token_text = subject_token(keyring, national_id)
    client = make_client(settings.clickhouse_dsn, read_only=True)
    try:
        found = disclosures(client, settings.clickhouse_database_prefix, token_text, _charter(settings))
        erasures = recorded_erasures(client, settings.clickhouse_database_prefix, token_text)
        # e.g. no checkpoints table yet: the disclosures are still listed, with why they are not verified
        report, unverifiable = verify_subject(client, settings.clickhouse_database_prefix, load_catalog(settings.schemas_dir),
                                              _public_keys(settings, keys), token_text)
    finally:
        client.close()
    table = Table("when (UTC)", "recipient", "event", "agreement", "purposes", "fields", "recipient's event id", "audit event",
                  "quality gate", title=f"disclosures about subject {token_text}")
    for item in found:
        table.add_row(item.decided_at.strftime("%Y-%m-%d %H:%M:%S"), item.recipient, item.event_type,
                      f"{item.agreement_id}@{item.agreement_version}", ", ".join(item.purposes), ", ".join(item.fields),
                      item.recipient_event_id, item.source_event_id, item.story)
    console.print(table)
    waited = sum(1 for item in found if not item.disclosed)
    console.print(f"{len(found) - waited} disclosures" + (f"; {waited} waited for their quality window" if waited else ""))
    for erasure in erasures:  # the erasure is part of the person's record; their data is gone
        console.print(f"erased {erasure.at:%Y-%m-%d %H:%M:%S} UTC by {erasure.actor} ({erasure.outcome}; "
                      f"{erasure.rows or 0} rows removed): {erasure.reason}", highlight=False, markup=False)
    if unverifiable is not None:
        console.print(f"[red]NOT verified[/red]: the trail could not be checked ({unverifiable})", highlight=False)
    if report is None:
        return
    if report.ok:
        console.print(f"[green]verified[/green]: the records shown are sealed, unaltered, in {report.checkpoints} signed "
                      f"checkpoint(s) of {len(report.writers)} writer(s)", highlight=False)
    else:
        console.print("[red]NOT verified[/red]: the audit records shown do not match their signed checkpoints:", highlight=False)
        for failure in report.failures:
            console.print(f"  {failure}", highlight=False, markup=False)


@audit_app.command("verify")
def verify(from_kafka: bool = typer.Option(False, "--from-kafka", help="Verify the topics (audit.decisions, audit.operations and "
                                                                         "their checkpoints) instead of the audit database"),
           keys: Path = KEYS_OPTION,
           tsa_cert: Path = typer.Option(None, "--tsa-cert", help="PEM certificates of the timestamping authority: its root, "
                                                                  "optionally its own certificate (default: "
                                                                  "BACKBONE_AUDIT_TSA_CERT_FILE); without them RFC 3161 "
                                                                  "timestamps are reported unchecked"),
           expect_head: list[str] = typer.Option(None, "--expect-head", help="WRITER=SEQ[:HASH], repeatable: a head recorded "
                                                                             "earlier (verify prints them; or a receipt's "
                                                                             "checkpoint): the trail must reach it, and hold "
                                                                             "that very checkpoint"),
           output: str = typer.Option("text", "--format", help="text or json")) -> None:
    """Check the audit trail: every checkpoint's signature, each writer's chain (no gap, no fork),
    that the records present reproduce each checkpoint's Merkle root, and the checkpoints' RFC 3161
    timestamps; and that each writer's chain reaches its head as known apart from the trail (on
    Kafka, in the writers' state, --expect-head). Exit 1 on any failure, naming the writer or
    checkpoint and why (edited, missing, extra or reordered records, forged signature, gap, bad
    timestamp, a writer missing or its checkpoints missing after the trail's end, an emptied trail)."""
    from backbone.audit.heads import parse_expected
    from backbone.audit.log import CheckpointCodec
    from backbone.audit.timestamps import Trust
    from backbone.clickhouse.client import make_client
    from backbone.events.catalog import AUDIT_CHECKPOINT, load_catalog
    from consumers.audit_heads import check_not_emptied, known_heads
    from consumers.audit_kafka import verify_kafka
    from consumers.audit_trail import ClickHouseTrail

    settings = get_settings()
    catalog = load_catalog(settings.schemas_dir)
    expected = [parse_expected(text) for text in expect_head or ()]
    published = _public_keys(settings, keys)
    certificates = tsa_cert or settings.audit_tsa_cert_file
    trust = Trust.load(certificates) if certificates is not None else None
    # the heads first: what the audit sink landed by now, the trail read next must reach
    known = known_heads(settings, CheckpointCodec(catalog.internal_schema(AUDIT_CHECKPOINT)), published, expected,
                        from_kafka_too=not from_kafka)
    if from_kafka:
        report = verify_kafka(settings, catalog, published, trust=trust)
    else:
        client = make_client(settings.clickhouse_dsn, read_only=True)
        try:
            report = ClickHouseTrail(client, settings.clickhouse_database_prefix, catalog).verify(published, trust=trust)
            recipients, problem = _recipients(settings, catalog)
            if problem:
                known.unchecked.append(f"the recipients' databases were not compared with an empty trail ({problem})")
            check_not_emptied(report, client, settings.clickhouse_database_prefix, recipients)
            _check_quality(settings, catalog, client, report, known.unchecked)
        finally:
            client.close()
    known.check(report, "trail on Kafka" if from_kafka else "landed trail")
    heads = {writer: max(chain.items()) for writer, chain in sorted(report.chains.items()) if chain}
    if output == "json":
        console.print_json(json.dumps({
            "ok": report.ok, "checkpoints": report.checkpoints, "records": report.records, "decisions": report.decisions,
            "operations": report.operations,
            "writers": sorted(report.writers),
            "heads": {writer: {"checkpoint": sequence, "hash": digest} for writer, (sequence, digest) in heads.items()},
            "unchecked": known.unchecked,
            "timestamps": {"verified": report.timestamps, "checkpoints_covered": report.timestamped,
                           "unchecked": report.timestamps_unchecked,
                           "latest": report.timestamped_until.isoformat() if report.timestamped_until else None},
            "failures": [{"kind": f.kind, "writer": f.writer, "checkpoint": f.sequence, "detail": f.detail} for f in report.failures],
            "warnings": [{"kind": f.kind, "writer": f.writer, "checkpoint": f.sequence, "detail": f.detail} for f in report.warnings],
        }))
    else:
        for warning in report.warnings:
            console.print(f"[yellow]warning[/yellow] {warning}", highlight=False, soft_wrap=True)
        for failure in report.failures:
            console.print(f"[red]FAILED[/red] {failure}", highlight=False, soft_wrap=True)
        verdict = "[green]audit trail verified[/green]" if report.ok else f"[red]{len(report.failures)} failure(s)[/red]; verified"
        console.print(f"{verdict}: {report.checkpoints:,} checkpoints, {report.decisions:,} decisions, "
                      f"{report.operations:,} operator actions ({report.records:,} records, {len(report.writers)} writer(s))", highlight=False)
        if report.timestamps:
            console.print(f"{report.timestamped:,} checkpoints timestamped by TSA ({report.timestamps:,} tokens verified; latest "
                          f"{report.timestamped_until:%Y-%m-%d %H:%M:%S} UTC): the chains up to them existed by then", highlight=False)
        if report.timestamps_unchecked:
            console.print(f"[yellow]{report.timestamps_unchecked:,} RFC 3161 timestamps unchecked[/yellow]: give --tsa-cert FILE "
                          "(the TSA's root certificate) to verify them", highlight=False)
        for why in known.unchecked:
            console.print(f"not checked: {why}", style="yellow", highlight=False, markup=False, soft_wrap=True)
        if heads:
            console.print("each writer's head (record them: given back as --expect-head, they find a trail cut short later):",
                          highlight=False)
            for writer, (sequence, digest) in heads.items():
                console.print(f"  --expect-head {writer}={sequence}:{digest}", highlight=False, markup=False, soft_wrap=True)
    if not report.ok:
        raise SystemExit(1)  # main() runs typer with standalone_mode=False: Exit would be swallowed


def _check_quality(settings, catalog, client, report, unchecked: list[str]) -> None:  # noqa: ANN001
    """Each landed quality window against the audit record that sealed it, and each scorecard against
    the windows (issue 32): a scorecard edited after the fact is a failure like an edited decision."""
    from backbone.audit.log import Failure
    from backbone.quality.contract import load_quality
    from consumers.quality import verify_quality

    try:
        contracts = load_quality(settings.schemas_dir, catalog)
    except BackboneError as exc:
        unchecked.append(f"quality scorecards ({str(exc).splitlines()[0][:200]})")
        return
    hours, problems = verify_quality(client, settings.clickhouse_database_prefix, contracts)
    report.failures.extend(Failure("quality_scorecard", "quality", None, problem) for problem in problems)
    if hours:
        console.print(f"quality: {hours:,} hours of scorecards recomputed from their sealed windows", highlight=False)


def _recipients(settings, catalog) -> tuple[list[str], str | None]:  # noqa: ANN001 - Settings, Catalog
    """The recipients the agreement files name (whose databases an emptied trail is compared with)."""
    from backbone.policy.agreements import load_agreements

    try:
        return sorted({a.recipient for a in load_agreements(settings.agreements_dir, catalog).agreements}), None
    except BackboneError as exc:
        return [], str(exc).splitlines()[0][:200]


@audit_app.command("receipt")
def receipt(event_id: str = typer.Argument(..., help="The provider's event id of the disclosure"),
            recipient: str = typer.Option(..., "--recipient", help="The recipient whose decision the receipt is for"),
            keys: Path = KEYS_OPTION,
            output: Path = typer.Option(None, "--output", help="Write the receipt here instead of printing it")) -> None:
    """A self-contained JSON receipt for one decision: the audit record, its inclusion proof, the
    signed checkpoint and the public key; `audit verify-receipt` checks it offline. It holds the
    event's whole audit record (every recipient's decision): hand it only to whom may see that."""
    from backbone.audit.receipts import dumps
    from backbone.clickhouse.client import make_client
    from backbone.events.catalog import load_catalog
    from consumers.audit_trail import ClickHouseTrail

    try:
        event_id = str(uuid.UUID(event_id))
    except ValueError:
        raise BackboneError(f"{event_id[:64]!r} is not an event id (a UUID, as `audit subject` and the audit tables show it)") from None
    settings = get_settings()
    client = make_client(settings.clickhouse_dsn, read_only=True)
    try:
        made = ClickHouseTrail(client, settings.clickhouse_database_prefix, load_catalog(settings.schemas_dir)).receipt(
            event_id, recipient, _public_keys(settings, keys))
    finally:
        client.close()
    if output is None:
        print(dumps(made))
    else:
        output.write_text(dumps(made) + "\n")
        console.print(f"receipt for {recipient} about event {event_id} written to {output}", highlight=False)


@audit_app.command("verify-receipt")
def verify_receipt(path: Path = typer.Argument(..., help="A receipt from `backbone audit receipt`"),
                   keys: Path = typer.Option(None, "--keys", help="Published public keys to pin the receipt's key to "
                                                                  "(without: the key the receipt carries is trusted as given)")) -> None:
    """Check a receipt offline: the record is the one sealed, its proof leads to the checkpoint's
    root, and the checkpoint's signature holds. Needs no broker, database or keyring."""
    from backbone.audit.log import CheckpointCodec
    from backbone.audit.receipts import verify_receipt as check
    from backbone.events.catalog import AUDIT_CHECKPOINT, load_catalog

    settings = get_settings()
    try:
        receipt_data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BackboneError(f"{path}: not a readable JSON receipt ({type(exc).__name__})") from None
    pinned = _public_keys(settings, keys) if keys is not None else None
    codec = CheckpointCodec(load_catalog(settings.schemas_dir).internal_schema(AUDIT_CHECKPOINT))
    problems = check(receipt_data, codec, pinned)
    if problems:
        for problem in problems:
            console.print(f"[red]FAILED[/red] {problem}", highlight=False)
        raise SystemExit(1)  # main() runs typer with standalone_mode=False: Exit would be swallowed
    checkpoint, decision = receipt_data["checkpoint"], receipt_data["decision"]
    console.print(f"[green]receipt holds[/green]: {decision['outcome']} for {receipt_data['recipient']} about event "
                  f"{receipt_data['record']['event_id']}, leaf {receipt_data['position']['leaf']} of checkpoint "
                  f"{checkpoint['sequence']} of writer {checkpoint['writer']}, signed {checkpoint['created_at']} "
                  f"with key {checkpoint['key_id']}", highlight=False)
    head = codec.hash(codec.decode(base64.b64decode(receipt_data["checkpoint_avro"])))
    console.print(f"the trail must hold this checkpoint: `backbone audit verify --expect-head {checkpoint['writer']}="
                  f"{checkpoint['sequence']}:{head}`", highlight=False, markup=False)
    if pinned is None:
        console.print(f"note: the key was not pinned; compare {receipt_data['public_key']['public']} with the published key "
                      f"{checkpoint['key_id']} (or pass --keys)", highlight=False)


@audit_app.command("keys")
def public_keys(output: Path = typer.Option(None, "--output", help="Write the public keys as JSON here, for verifiers")) -> None:
    """The public halves of the processors' checkpoint signing keys and of each operator's own key
    (signer `operator:NAME`; rotated ones too): publish them so anyone can verify the trail and receipts."""
    from backbone.audit.published import write_published
    from backbone.keys.keyring import Keyring

    found = Keyring.open(get_settings()).public_keys()
    if output is not None:
        count = write_published(output, found)
        console.print(f"{count} public keys written to {output}", highlight=False)
        return
    table = Table("key id", "signer", "algorithm", "created", "active", "public key (base64)")
    for key in found:
        shown = key.to_json()
        table.add_row(key.key_id, key.owner, shown["algorithm"], key.created.strftime("%Y-%m-%d %H:%M:%S UTC"),
                      "yes" if key.active else "no (verifying only)", shown["public"])
    console.print(table)


@audit_app.command("rotate-key")
@needs("processor")
def rotate_key() -> None:
    """A new signing key for the processors' checkpoints (created if there is none); the old ones
    stay for verifying old checkpoints. Restart processors to sign with it."""
    from backbone.keys.keyring import PROCESSOR_SIGNER, Keyring
    from backbone.keys.master import master_key_from_settings

    settings = get_settings()
    master = master_key_from_settings(settings)
    keyring = Keyring.load(Path(settings.keyring_path), master)
    info = keyring.rotate("signing", PROCESSOR_SIGNER)
    keyring.save(Path(settings.keyring_path), master)
    console.print(f"new active signing key {info.key_id}; older keys kept for verifying. Restart processors to use it, "
                  "and publish the public keys again (`backbone audit keys --output FILE`).", highlight=False)
