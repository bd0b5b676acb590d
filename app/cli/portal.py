"""`backbone portal [link|release|held]`: the citizen's portal, its one-time sign-in links, and
oversight's release of disclosures whose notice was deferred."""

from __future__ import annotations

from pathlib import Path

import typer

from app.cli import app, console, get_settings
from backbone.errors import BackboneError

portal_app = typer.Typer(help="The citizen's portal: each person sees every disclosure about them, with receipts.",
                         invoke_without_command=True)
app.add_typer(portal_app, name="portal")

DEFAULT_PORT = 8091


@portal_app.callback()
def serve(ctx: typer.Context,
          host: str = typer.Option("127.0.0.1", "--host", help="Address to bind"),
          port: int = typer.Option(DEFAULT_PORT, "--port", help="Port"),
          public_url: str = typer.Option(None, "--public-url", help="URL people open the portal at (https:// makes the "
                                                                    "session cookie Secure behind a TLS proxy)"),
          jurisdiction: str = typer.Option("gdpr", "--jurisdiction", help="Grievance deadlines: gdpr (one calendar month, "
                                                                          "extendable by two with notice in the first), days21, "
                                                                          "or days:N for a fixed N-day limit"),
          oidc_issuer: str = typer.Option(None, "--oidc-issuer", help="OpenID provider (its /.well-known/openid-configuration) "
                                                                      "for sign-in beside the links"),
          oidc_client_id: str = typer.Option(None, "--oidc-client-id", help="The portal's client id at the provider"),
          oidc_secret_file: Path = typer.Option(None, "--oidc-client-secret-file", help="File holding the client secret"),
          oidc_claim: str = typer.Option("sub", "--oidc-claim", help="ID-token claim holding the person's national id")) -> None:
    """Serve the portal (without a subcommand): people sign in with a link from `backbone portal link`.
    Needs the keyring holding the oversight domain (the audit trail names people by it)."""
    if ctx.invoked_subcommand is not None:
        return
    from app.portal.grievances import profile
    from app.portal.server import start
    from app.serving import serve_until_signalled

    settings = get_settings()
    chosen = profile("", days=int(jurisdiction[5:])) if jurisdiction.startswith("days:") and jurisdiction[5:].isdigit() \
        else profile(jurisdiction)

    oidc = None
    if oidc_issuer:
        from app.portal.oidc import OidcClient, OidcConfig

        if not oidc_client_id or oidc_secret_file is None or not public_url:
            raise BackboneError("--oidc-issuer needs --oidc-client-id, --oidc-client-secret-file and --public-url "
                                "(the callback the provider redirects to is PUBLIC_URL/oidc/callback)")
        oidc = OidcClient(OidcConfig(oidc_issuer, oidc_client_id, oidc_secret_file.read_text().strip(),
                                     public_url.rstrip("/") + "/oidc/callback", oidc_claim))

    serve_until_signalled(lambda: start(settings, host, port, public_url=public_url, profile=chosen, oidc=oidc), lambda url: console.print(
        f"portal on {url}; sign-in links: backbone portal link --subject ID; Ctrl-C stops", highlight=False))


@portal_app.command("link")
def link(subject: str = typer.Option(..., "--subject", "-s", help="The person's national id (encrypted in the link)"),
         base_url: str = typer.Option(f"http://127.0.0.1:{DEFAULT_PORT}", "--base-url", help="Where the portal is reached")) -> None:
    """Print a one-time sign-in link for one person: valid 15 minutes, once, only with this data directory's portal key."""
    from app.portal.links import issue, link_key, link_url

    settings = get_settings()
    print(link_url(base_url, issue(link_key(settings.data_dir), subject)))


@portal_app.command("release")
def release(agreement: str = typer.Argument(..., help="Agreement id whose deferred disclosures people may now see"),
            reason: str = typer.Option(..., "--reason", help="Why now (e.g. the investigation closed); recorded")) -> None:
    """Show people the disclosures of an agreement whose notice waits for a release (`notice:
    {until_released: true}` or a deferral date not reached): an operator action in the audit trail,
    which the portal reads once the audit sink has landed it. Needs BACKBONE_IDENTITY."""
    from app.portal.records import NOTICE_RELEASE
    from backbone.audit import operations
    from backbone.events.catalog import load_catalog
    from backbone.policy.agreements import load_agreements

    settings = get_settings()
    actor = operations.actor(settings)
    charter = load_agreements(settings.agreements_dir, load_catalog(settings.schemas_dir))
    versions = [a for a in charter.agreements if a.id == agreement]
    if not versions:
        raise BackboneError(f"no agreement {agreement!r} in {settings.agreements_dir}; `backbone agreements list` names them")
    held = [a for a in versions if a.notice is not None and a.notice.suppressed is None]
    if not held:
        raise BackboneError(f"agreement {agreement} has no deferred notice to release (a suppressed notice is never released)")
    operations.record(settings, operations.OperatorAction(
        NOTICE_RELEASE, actor, agreement, "done", reason, {"versions": ",".join(str(a.version) for a in held)}))
    console.print(f"released: people see the disclosures of {agreement} once the audit sink lands this action", highlight=False)


@portal_app.command("held")
def held() -> None:
    """Oversight: per agreement version, how many decisions the people concerned cannot see now
    (deferred, awaiting release, or suppressed under a legal reference)."""
    from app.portal.server import CachedCharter
    from app.portal.trail import PortalTrail

    settings = get_settings()
    counts = PortalTrail(settings, CachedCharter(settings), None).held_counts()
    for key, count in sorted(counts.items()):
        console.print(f"{key}: {count} held", highlight=False)
    if not counts:
        console.print("no disclosures held from the people concerned", highlight=False)
