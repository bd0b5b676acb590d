"""`backbone keys init|list|rotate|reidentify|operator add`. Key bytes are never printed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from app.cli import app, console, get_settings
from app.cli.roles import needs
from backbone.errors import BackboneError, KeyringError, ReidentifyError
from backbone.keys.keyring import BUILT_IN_DOMAINS, PROCESSOR_SIGNER, KeyInfo, Keyring, operator_signer, record_reidentification
from backbone.keys.master import master_key_from_settings, write_master_key_file
from backbone.keys.pseudonym import reidentify as reidentify_token
from backbone.keys.pseudonym import token_key_id

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
    role: str = typer.Option(None, "--role", help="Create this role's keyring only: processor, operator or oversight "
                                                  "(default BACKBONE_ROLE; neither: one keyring with every key)"),
    from_keyring: Path = typer.Option(None, "--from-keyring", help="Copy this role's keys from another keyring: oversight "
                                      "takes the provider keys and the oversight domain from the processor's; any role can be "
                                      "cut from a keyring holding every key (migration)"),
    from_master_key_file: Path = typer.Option(None, "--from-master-key-file", help="Master key file of --from-keyring"),
) -> None:
    """Create the keyring (or add missing keys). Without a role: one key per sharing domain and per
    provider, oversight and the signing keys, in one keyring. With a role, that role's keyring only
    (<data dir>/<role>.keyring, under this environment's master key): processor the domain,
    encryption and checkpoint signing keys; operator its signing key; oversight the keys it shares
    with the processor (--from-keyring the processor's keyring)."""
    from backbone.keys.keyring import PROCESSOR_SIGNER
    from backbone.keys.master import decode_master_key
    from backbone.keys.roles import OPERATOR_SIGNER, ROLES, WHAT_EACH_HOLDS, for_role, holds
    from backbone.policy.agreements import default_charter

    settings = get_settings()
    chosen = role or settings.role
    if chosen is not None and chosen not in ROLES:
        raise BackboneError(f"--role {chosen!r} is not a role; one of {', '.join(ROLES)}")
    if role is not None and settings.role not in (None, role):
        raise BackboneError(f"--role {role} in an environment that runs as {settings.role} (BACKBONE_ROLE): "
                            f"run it where BACKBONE_ROLE={role}, with that role's master key")
    if (from_keyring is None) != (from_master_key_file is None):
        raise BackboneError("give --from-keyring and --from-master-key-file together")
    if settings.key_provider != "file":
        if chosen not in (None, "processor"):
            raise BackboneError(f"the {chosen} role keeps its keys in a keyring file, not in the PKCS#11 token: "
                                "run `backbone keys init` for it with BACKBONE_KEY_PROVIDER=file")
        _init_token(settings, domain, provider)
        return
    try:
        master_key = master_key_from_settings(settings)
    except KeyringError:
        configured = settings.master_key_file
        # a configured key file that does not exist yet may be created here, under the same path only
        creatable = configured is None or (not Path(configured).exists() and Path(configured).resolve() == Path(new_master_key_file or "").resolve())
        if new_master_key_file is None or settings.master_key is not None or not creatable:
            raise
        master_key = write_master_key_file(new_master_key_file)
        console.print(f"wrote a new master key to {new_master_key_file}; set BACKBONE_MASTER_KEY_FILE={new_master_key_file} for every "
                      f"backbone process{f' of the {chosen} role' if chosen else ''}")
    path = Path(settings.keyring_path)
    if chosen is not None and settings.role is None and path == settings.data_dir / "keyring.json":
        path = settings.data_dir / f"{chosen}.keyring"
    keyring = Keyring.load(path, master_key) if path.exists() else Keyring()
    created = []
    if from_keyring is not None:
        try:
            source_key = decode_master_key(Path(from_master_key_file).read_text(), f"master key file {from_master_key_file}")
        except OSError as exc:
            raise KeyringError(f"cannot read master key file {from_master_key_file} ({exc.strerror})") from None
        source = Keyring.load(from_keyring, source_key)
        created += keyring.adopt(for_role(source, chosen) if chosen else source)
    charter = default_charter()
    if chosen is None or chosen == "processor":
        signers = [PROCESSOR_SIGNER] if chosen else []
        created += keyring.ensure(sorted(charter.domains() | set(BUILT_IN_DOMAINS) | set(domain)),
                                  sorted(charter.providers() | set(provider)), signers)
    elif chosen == "operator":
        created += keyring.ensure(signers=[OPERATOR_SIGNER])
    elif from_keyring is None and not keyring.keys():
        raise BackboneError("the oversight keyring shares the provider keys and the oversight domain with the processors: "
                            "give --from-keyring <processor.keyring> --from-master-key-file <its master key file>")
    if chosen is not None:
        foreign = [info for info in keyring.keys() if not holds(chosen, info)]  # type: ignore[arg-type]
        if foreign:
            raise BackboneError(f"keyring {path} would hold {len(foreign)} key(s) the {chosen} role must not hold "
                                f"(it holds {WHAT_EACH_HOLDS[chosen]}); start from an empty file")  # type: ignore[index]
    keyring.save(path, master_key)
    what = f"the {chosen} role's keyring {path}" if chosen else f"keyring {path}"
    if created:
        console.print(f"{what}: created or copied {len(created)} keys")
        console.print(_table(created))
    else:
        console.print(f"{what}: every key it holds is already there")


def _init_token(settings: Any, domain: list[str], provider: list[str]) -> None:
    """`keys init` on a token provider: the keys are generated in the token (never leave it)."""
    from backbone.policy.agreements import default_charter

    charter = default_charter()
    keys = Keyring.open(settings)
    created = keys.ensure(sorted(charter.domains() | set(BUILT_IN_DOMAINS) | set(domain)), sorted(charter.providers() | set(provider)),
                          [PROCESSOR_SIGNER])
    where = f"{settings.key_provider} token {settings.pkcs11_token_label!r}"
    if created:
        console.print(f"{where}: created {len(created)} keys (non-extractable)")
        console.print(_table(created))
    else:
        console.print(f"{where}: every domain and provider already has a key")


@keys_app.command("list")
def list_keys() -> None:
    """Domains and providers with their key ids, creation time and which key is active."""
    settings = get_settings()
    keyring = Keyring.open(settings)
    console.print(_table(keyring.keys()))


@keys_app.command("rotate")
@needs("processor")
def rotate(
    domain: str = typer.Option(None, "--domain", help="Sharing domain whose pseudonym key to rotate"),
    provider: str = typer.Option(None, "--provider", help="Provider whose encryption key to rotate"),
) -> None:
    """New tokens use a new key; old keys stay for reading (reidentifying) old tokens."""
    if (domain is None) == (provider is None):
        raise BackboneError("keys rotate: give exactly one of --domain D or --provider P")
    settings = get_settings()
    if settings.key_provider != "file":
        keys = Keyring.open(settings)
        info = keys.rotate("domain", domain) if domain else keys.rotate("provider", provider)
    else:
        master_key = master_key_from_settings(settings)
        keyring = Keyring.load(Path(settings.keyring_path), master_key)
        info = keyring.rotate("domain", domain) if domain else keyring.rotate("provider", provider)
        keyring.save(Path(settings.keyring_path), master_key)
    console.print(f"new active key {info.key_id} for {info.kind} {info.owner}; older keys kept for reading. Restart processors to use it.")
    if domain:
        console.print("note: pseudonyms made with the new key differ from earlier ones in this domain")


@keys_app.command("reidentify")
@needs("oversight")
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
