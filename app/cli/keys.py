"""`backbone keys init|list|rotate|reidentify|operator add`. Key bytes are never printed."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from app.cli import app, console
from backbone.errors import BackboneError, KeyringError, ReidentifyError
from backbone.keys.keyring import (
    BUILT_IN_DOMAINS,
    KeyInfo,
    Keyring,
    master_key_from_settings,
    operator_signer,
    record_reidentification,
    write_master_key_file,
)
from backbone.keys.pseudonym import reidentify as reidentify_token
from backbone.keys.pseudonym import token_key_id
from backbone.settings import get_settings

keys_app = typer.Typer(help="The keyring: pseudonym and encryption keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")

operator_app = typer.Typer(help="Operators' own signing keys: each operator action is signed with its actor's key.",
                           no_args_is_help=True)
keys_app.add_typer(operator_app, name="operator")


def _table(infos: list[KeyInfo]) -> Table:
    table = Table("kind", "domain / provider", "key id", "created", "active")
    for info in infos:
        table.add_row(info.kind, info.owner, info.key_id, info.created.strftime("%Y-%m-%d %H:%M:%S UTC"), "yes" if info.active else "no (reading only)")
    return table


@keys_app.command("init")
def init(
    new_master_key_file: Path = typer.Option(
        None, "--new-master-key-file", help="Write a new master key to this file when none is configured (embedded demo)"
    ),
    domain: list[str] = typer.Option([], "--domain", help="Extra sharing domain to create a key for (repeatable)"),
    provider: list[str] = typer.Option([], "--provider", help="Extra provider to create a key for (repeatable)"),
) -> None:
    """Create the keyring (or add missing keys): one key per sharing domain and per provider."""
    from backbone.policy.agreements import default_charter

    settings = get_settings()
    try:
        master_key = master_key_from_settings(settings)
    except KeyringError:
        configured = settings.master_key_file
        # a configured key file that does not exist yet may be created here, under the same path only
        creatable = configured is None or (not Path(configured).exists() and Path(configured).resolve() == Path(new_master_key_file or "").resolve())
        if new_master_key_file is None or settings.master_key is not None or not creatable:
            raise
        master_key = write_master_key_file(new_master_key_file)
        console.print(f"wrote a new master key to {new_master_key_file}; set BACKBONE_MASTER_KEY_FILE={new_master_key_file} for every backbone process")
    path = Path(settings.keyring_path)
    keyring = Keyring.load(path, master_key) if path.exists() else Keyring()
    charter = default_charter()
    created = keyring.ensure(
        sorted(charter.domains() | set(BUILT_IN_DOMAINS) | set(domain)),
        sorted(charter.providers() | set(provider)),
    )
    keyring.save(path, master_key)
    if created:
        console.print(f"keyring {path}: created {len(created)} keys")
        console.print(_table(created))
    else:
        console.print(f"keyring {path}: every domain and provider already has a key")


@keys_app.command("list")
def list_keys() -> None:
    """Domains and providers with their key ids, creation time and which key is active."""
    settings = get_settings()
    keyring = Keyring.open(settings)
    console.print(_table(keyring.keys()))


@keys_app.command("rotate")
def rotate(
    domain: str = typer.Option(None, "--domain", help="Sharing domain whose pseudonym key to rotate"),
    provider: str = typer.Option(None, "--provider", help="Provider whose encryption key to rotate"),
) -> None:
    """New tokens use a new key; old keys stay for reading (reidentifying) old tokens."""
    if (domain is None) == (provider is None):
        raise BackboneError("keys rotate: give exactly one of --domain D or --provider P")
    settings = get_settings()
    master_key = master_key_from_settings(settings)
    keyring = Keyring.load(Path(settings.keyring_path), master_key)
    info = keyring.rotate("domain", domain) if domain else keyring.rotate("provider", provider)
    keyring.save(Path(settings.keyring_path), master_key)
    console.print(f"new active key {info.key_id} for {info.kind} {info.owner}; older keys kept for reading. Restart processors to use it.")
    if domain:
        console.print("note: pseudonyms made with the new key differ from earlier ones in this domain")


@keys_app.command("reidentify")
def reidentify(
    token: str = typer.Argument(..., help="A token made by the `encrypt` treatment, e.g. k4.AbC..."),
    provider: str = typer.Option(..., "--provider", help="Provider whose key made the token"),
    domain: str = typer.Option(..., "--domain", help="Sharing domain the token was released to (the agreement's domain; @<recipient> without one)"),
    field: str = typer.Option(..., "--field", help="Field the token was released as, e.g. bank_account"),
    reason: str = typer.Option(..., "--reason", help="Why (required; recorded in the audit trail and the reidentification log)"),
) -> None:
    """Reverse an `encrypt` token with the provider's key. Every attempt is an audit record on
    audit.operations (who from BACKBONE_IDENTITY, why, which key, the token's SHA-256) and a line in
    <data dir>/reidentify.log; the value is shown only once its record is acknowledged."""
    from backbone.audit import operations

    settings = get_settings()
    if not reason.strip():
        raise BackboneError("--reason must say why the token is re-identified; it is recorded in the audit trail")
    who = operations.actor(settings)
    keyring = Keyring.open(settings)
    key_id = token_key_id(token)
    digest = operations.token_digest(token)
    refused: ReidentifyError | None = None
    value = ""
    try:
        value = reidentify_token(provider, token, keyring=keyring, domain=domain, field=field)
    except ReidentifyError as exc:
        refused = exc
    outcome = "refused" if refused else "revealed"
    operations.record(settings, operations.OperatorAction(
        "reidentify", who, f"{provider} key {key_id} for {domain}.{field}", outcome, reason.strip(),
        {"provider": provider, "key_id": key_id, "domain": domain, "field": field, "token_sha256": digest},
    ))
    log = record_reidentification(settings.data_dir, provider, key_id, outcome, reason.strip(), who, digest)
    if refused is not None:
        raise refused
    console.print(value, highlight=False, markup=False)
    console.print(f"(recorded on audit.operations and in {log})", style="dim", highlight=False)


@operator_app.command("add")
def add_operator(name: str = typer.Argument(..., help="The operator's identity, as their BACKBONE_IDENTITY")) -> None:
    """Create NAME's own signing key in the keyring (BACKBONE_KEYRING_PATH; a new keyring file when
    there is none): the actions NAME records are signed with it. Publish the public keys again
    afterwards (`backbone audit keys --output FILE`): verifiers accept NAME's actions only under it."""
    settings = get_settings()
    signer = operator_signer(name)
    master_key = master_key_from_settings(settings)
    path = Path(settings.keyring_path)
    keyring = Keyring.load(path, master_key) if path.exists() else Keyring()
    created = keyring.ensure(signers=[signer])
    key_id, _ = keyring.active_key("signing", signer)
    if not created:
        console.print(f"operator {name} already has signing key {key_id} in keyring {path}", highlight=False, markup=False)
        return
    keyring.save(path, master_key)
    console.print(f"operator {name}: signing key {key_id} created in keyring {path}; publish the public keys again "
                  "(`backbone audit keys --output FILE`)", highlight=False, markup=False)
