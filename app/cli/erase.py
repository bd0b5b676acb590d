"""`backbone erase --subject ID --reason TEXT`: the right to erasure, for one person, everywhere."""

from __future__ import annotations

import typer
from rich.table import Table

from app.cli import app, console, err_console, get_settings
from app.cli.roles import needs
from backbone.errors import BackboneError


def _topic_key(text: str) -> bytes:
    """A `--topic-key` value as the bytes of a Kafka key: UTF-8 text, or `hex:` and hex digits."""
    if not text.startswith("hex:"):
        if not text:
            raise BackboneError("--topic-key needs a key (UTF-8 text, or hex:<bytes>)")
        return text.encode()
    try:
        return bytes.fromhex(text[4:])
    except ValueError:
        raise BackboneError("--topic-key hex:... takes hex digits only (two per byte)") from None


@app.command()
@needs("operator")
def erase(
    subject: str = typer.Option(..., "--subject", "-s", help="National id of the person to erase (never stored or printed)"),
    reason: str = typer.Option(..., "--reason", help="Why: the request's reference (required; recorded in the audit trail)"),
    topic_keys: list[str] = typer.Option(
        [], "--topic-key", help="A raw topic key of this person where a provider keys otherwise than the SDK (UTF-8 text,"
        " or hex:<bytes>; repeatable): their dead letters under it are destroyed too. Never stored or printed"),
) -> None:
    """Erase one person: future events denied `erased` (but under agreements that survive erasure),
    their rows deleted from every recipient database, their dead letters made unreadable, their
    consent records and fraud alerts removed, their grievances kept without text, pseudonym or entry; recorded on audit.operations under BACKBONE_IDENTITY. The audit trail
    keeps its oversight tokens: `backbone audit subject` still lists past disclosures. Needs no pseudonym key: a
    running processor computes the person's tokens (the request on erasure.requests is read by processors only).

    With chDB, stop the sinks first (one process per directory)."""
    from app.cli.audit import _charter
    from app.portal.grievance_book import forget as forget_grievances
    from backbone.audit import operations
    from backbone.clickhouse.client import make_client
    from backbone.control.erasure import erase as erase_subject
    from producers.keys import SECRET_FILE, SubjectKeys

    settings = get_settings()
    who = operations.actor(settings)  # refuse before touching anything
    raw_keys = [_topic_key(text) for text in topic_keys]
    charter = _charter(settings)
    subject_key = None
    if settings.subject_key_secret is not None or (settings.data_dir / SECRET_FILE).exists():
        subject_key = SubjectKeys.from_settings(settings)(subject.strip())
    else:
        err_console.print("warning: no subject key secret (BACKBONE_SUBJECT_KEY_SECRET): consent records and dead letters"
                          " of this person cannot be found, only rows and future events", highlight=False)
    client = make_client(settings.clickhouse_dsn or "")
    try:
        report = erase_subject(settings, charter, client, subject, reason, subject_key=subject_key, topic_keys=raw_keys, actor=who,
                               also={"grievances": forget_grievances})
    finally:
        client.close()
    console.print(f"erased subject {report.token} (its oversight token)", highlight=False, soft_wrap=True)
    table = Table("database", "rows removed", title="rows removed per recipient database")
    for database, count in sorted(report.rows.items()):
        table.add_row(database, f"{count:,}")
    console.print(table)
    console.print(f"{sum(report.rows.values()):,} rows removed in {report.seconds.get('rows', 0.0):.2f}s; "
                  f"{report.dlq_keys} DLQ keys destroyed ({report.expired_dlq_keys} more past the DLQ retention); "
                  f"{report.consent_records} consent records and {report.alerts} fraud alerts tombstoned; "
                  f"{report.others.get('grievances', 0)} grievances kept without their personal parts; "
                  "future events denied as erased; recorded on audit.operations", highlight=False)
