"""`backbone clickhouse grants [--apply]`: sink users, recipient roles and the oversight role."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import typer

from app.cli import app, console, get_settings
from backbone.clickhouse.users import Credential, read_credentials
from backbone.errors import BackboneError
from backbone.files.private import make_private_dirs

clickhouse_app = typer.Typer(help="ClickHouse databases of the agencies.", no_args_is_help=True)
app.add_typer(clickhouse_app, name="clickhouse")
users_app = typer.Typer(help="The sinks' ClickHouse users (passwords, DSNs, credentials).", no_args_is_help=True)
clickhouse_app.add_typer(users_app, name="users")

PASSWORDS_FILE = "clickhouse-passwords.json"


def sink_passwords(path: Path, users: list[str]) -> dict[str, str]:
    """The sink users' passwords from `path` (a JSON object user -> password, readable by its owner
    only); users it lacks get a new random password and the file is written back with mode 0600."""
    known: dict[str, str] = {}
    if path.exists():
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise BackboneError(f"{path} holds passwords but others may read it (mode {mode:o}); chmod 600 {path}")
        try:
            known = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise BackboneError(f"{path}: not a JSON object of user -> password ({type(exc).__name__})") from None
        if not isinstance(known, dict) or not all(isinstance(v, str) and v for v in known.values()):
            raise BackboneError(f"{path}: not a JSON object of user -> password")
    missing = [user for user in users if user not in known]
    if missing:
        known.update({user: secrets.token_urlsafe(24) for user in missing})
        make_private_dirs(path.parent)
        partial = path.with_name(path.name + ".partial")
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(descriptor, 0o600)  # whatever the umask, and a leftover partial file, say
        with os.fdopen(descriptor, "w") as handle:
            json.dump(known, handle, indent=2, sort_keys=True)
        os.replace(partial, path)
    return {user: known[user] for user in users}


@clickhouse_app.command("grants")
def grants(
    apply: bool = typer.Option(False, "--apply", help="Run the statements on the ClickHouse server (not possible on chDB)"),
    passwords: Path = typer.Option(None, "--passwords", help="With --apply: JSON file of the sink users' passwords; missing ones "
                                   f"are generated into it (mode 0600). Default <data dir>/{PASSWORDS_FILE}"),
    credentials: Path = typer.Option(None, "--credentials", help="With --apply: the credentials file of `backbone clickhouse users "
                                     "provision` (hashes only; every sink user must be in it) instead of --passwords"),
) -> None:
    """Print (or apply) one user per sink writing its own database only, one role per recipient
    reading its agreement views only, and the oversight role, alone reading the audit database."""
    from clickhouse_connect.driver.exceptions import DatabaseError

    from backbone.clickhouse.client import chdb_path, make_client
    from backbone.clickhouse.cluster import cluster_of
    from backbone.events.catalog import load_catalog
    from backbone.policy.agreements import load_agreements
    from consumers import ddl
    from consumers.clickhouse_target import clickhouse_error

    settings = get_settings()
    prefix = settings.clickhouse_database_prefix
    charter = load_agreements(settings.agreements_dir, load_catalog(settings.schemas_dir))
    recipients = sorted({a.recipient for a in charter.agreements})
    views = {recipient: ddl.agreement_views(charter, recipient) for recipient in recipients}
    if not apply:
        for statement in ddl.grants_sql(prefix, views, cluster=cluster_of(settings)):
            console.print(statement + ";", highlight=False, soft_wrap=True, markup=False)
        return
    on_chdb = chdb_path(settings.clickhouse_dsn) is not None
    users = ddl.sink_users(prefix, recipients)
    if credentials is not None:
        if passwords is not None:
            raise BackboneError("give --credentials or --passwords, not both")
        known = read_credentials(credentials)
        if missing := [user for user in users if user not in known]:
            raise BackboneError(f"{credentials} has no credential for {', '.join(missing)}; run `backbone clickhouse users provision` "
                                "(deploy/kubernetes/create-secrets.sh) again for the charter's sinks")
        hashes = {user: known[user] for user in users}
        where = f"credentials from {credentials}"
    elif on_chdb:  # nothing is applied there: no password is made for it
        hashes, where = {}, ""
    else:
        path = passwords or settings.data_dir / PASSWORDS_FILE
        hashes = {user: Credential.of(password, secrets.token_hex(16)) for user, password in sink_passwords(path, users).items()}
        where = f"passwords in {path} (mode 0600)"
    statements = ddl.grants_sql(prefix, views, hashes, cluster_of(settings))
    client = make_client(settings.clickhouse_dsn)
    if on_chdb:  # chDB parses them (the deployment rehearsal runs the grants Job on it) but keeps no users
        try:
            for statement in statements:
                client.command(f"EXPLAIN AST {statement}")
        except DatabaseError as exc:
            raise BackboneError(f"chDB does not parse {' '.join(statement.split()[:3])} ... ({clickhouse_error(exc)})") from None
        finally:
            client.close()
        raise BackboneError(f"chDB has no users or roles: the {len(statements)} statements for sink users {', '.join(users)} parse, "
                            "none is applied; print the SQL without --apply, or set BACKBONE_CLICKHOUSE_DSN to a ClickHouse server")
    try:
        for statement in statements:
            try:
                client.command(statement)
            except DatabaseError as exc:  # its message would quote the statement: name the kind and the code only
                raise BackboneError(f"ClickHouse refused {' '.join(statement.split()[:3])} ... ({clickhouse_error(exc)}); "
                                    "the DSN's user needs access management (CREATE USER, ROLE, GRANT)") from None
    finally:
        client.close()
    console.print(f"applied {len(statements)} statements; sink users {', '.join(users)}: {where}",
                  highlight=False, soft_wrap=True, markup=False)


@users_app.command("provision")
def provision(
    passwords_dir: Path = typer.Option(..., "--passwords-dir", help="One <workload>.password file per sink workload (0600): kept, or made when missing"),
    credentials_file: Path = typer.Option(..., "--credentials-file", help="Where the sink users' credentials (hashes, for grants --apply) go"),
    url: str = typer.Option(None, "--url", help="The server's http(s)://host:port/database: also write <workload>.dsn, "
                                                 "the DSN each sink workload connects with"),
) -> None:
    """A ClickHouse user per sink workload (each recipient's sink, the audit sink): its password, its
    DSN, and its credential for `backbone clickhouse grants --apply --credentials`."""
    from backbone.clickhouse.users import provision as make
    from backbone.policy.agreements import default_charter
    from consumers import ddl

    settings = get_settings()
    recipients = {a.recipient for a in default_charter().agreements}
    workloads = ddl.sink_workloads(settings.clickhouse_database_prefix, recipients)
    make(workloads, passwords_dir, credentials_file, url)
    for workload, user in workloads.items():
        console.print(f"{workload}: ClickHouse user {user}", highlight=False, soft_wrap=True, markup=False)
    console.print(f"passwords{' and DSNs' if url else ''} in {passwords_dir}, credentials in {credentials_file}",
                  highlight=False, soft_wrap=True, markup=False)
