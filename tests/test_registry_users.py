"""Registry users: each workload and agency may write exactly the subjects its code registers.

As tests/test_acls.py does for Kafka, a table holds per workload the subjects its code registers
(from the code's own constants); the users `create-secrets.sh` provisions (run for real, offline)
must allow each of them and no subject another workload owns.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from backbone.access.acls import Agencies
from backbone.access.registry_users import plan_for_charter
from backbone.events.catalog import CONSENT_EVENT, load_catalog
from backbone.policy.agreements import load_agreements
from backbone.registry.roles import Access, Grant, Role
from backbone.registry.users import UsersFile
from backbone.settings import PROJECT_ROOT
from tests.cli import clean_env

CREATE_SECRETS = PROJECT_ROOT / "deploy" / "kubernetes" / "create-secrets.sh"


@pytest.fixture(scope="module")
def charter():  # noqa: ANN201 - backbone.policy.agreements.Charter
    return load_agreements(PROJECT_ROOT / "agreements", load_catalog(PROJECT_ROOT / "schemas"))


def registered_subjects(charter) -> dict[str, set[str]]:  # noqa: ANN001 - a table, one entry per workload
    """What each registry user's code registers (or sets the compatibility of), for the demo's charter."""
    from app.cli.schemas import _subject as raw_subject
    from backbone.kafka.topics import ALERTS_TOPIC, CONSENT_TOPIC, OPERATIONS_CHECKPOINTS_TOPIC, OPERATIONS_TOPIC, shared_topic
    from processors.checkpoints import CHECKPOINTS_SUBJECT
    from processors.router import AUDIT_SUBJECT
    from processors.timestamps import TIMESTAMPS_SUBJECT

    events = charter.catalog.events
    agencies = Agencies.from_charter(charter)
    table: dict[str, set[str]] = {
        # app/cli/schemas.py `backbone schemas register` (the init Job): every catalog event's raw subject
        "backbone-init": {raw_subject(event_type) for event_type in events},
        # processors/router.py (shared subjects: register + set_compatibility NONE; audit.decisions),
        # processors/checkpoints.py (each batch's checkpoint), processors/timestamps.py (with a TSA)
        "processor": {f"{shared_topic(a.recipient, t)}-value" for a in charter.agreements for t in a.event_types}
                     | {AUDIT_SUBJECT, CHECKPOINTS_SUBJECT, TIMESTAMPS_SUBJECT},
        # backbone/audit/operations.py: every operator action and its checkpoint; `schemas register` too
        "operator": {f"{OPERATIONS_TOPIC}-value", f"{OPERATIONS_CHECKPOINTS_TOPIC}-value"} | {raw_subject(e) for e in events},
    }
    for recipient in agencies.recipients:
        # consumers/fraud/detector.py registers the alerts' subject; the other sinks only read schemas
        table[f"sink-{recipient}"] = {f"{ALERTS_TOPIC}-value"} if recipient == "fraud" else set()
        table[recipient] = set()  # a recipient's consumers decode only
    table["sink-audit"] = set()  # consumers/plans.py: the audit plans land the processor's and operator's records, registering nothing
    for event_type, event in events.items():
        # producers/sdk.py: an agency's producer registers each of its events' subjects at start
        topic = CONSENT_TOPIC if event_type == CONSENT_EVENT else f"raw.{event_type}"
        table.setdefault(event.provider, set()).add(f"{topic}-value")
    return table


def _writable(grant: Grant, subjects: set[str]) -> set[str]:
    return {s for s in subjects if grant.permits(Access.SUBJECT, s)}


def _check(users: dict[str, Grant], table: dict[str, set[str]]) -> list[str]:
    everything = set().union(*table.values())
    problems = []
    for name, subjects in sorted(table.items()):
        grant = users.get(name)
        if grant is None:
            problems.append(f"{name}: no registry user")
            continue
        if missing := subjects - _writable(grant, subjects):
            problems.append(f"{name} may not register {sorted(missing)}")
        if grant.role is not Role.ADMIN and (extra := _writable(grant, everything) - subjects):
            problems.append(f"{name} may register {sorted(extra)}, which its code never does")
    return problems


def test_each_workload_and_agency_may_register_exactly_the_subjects_its_code_registers(charter) -> None:  # noqa: ANN001
    assert _check(plan_for_charter(charter), registered_subjects(charter)) == []


def test_the_processor_may_register_its_checkpoints_and_timestamps_subjects(charter) -> None:  # noqa: ANN001
    processor = plan_for_charter(charter)["processor"]
    for subject in ("audit.checkpoints-value", "audit.timestamps-value", "audit.decisions-value", "shared.fraud.tax.income_declared-value"):
        assert processor.permits(Access.SUBJECT, subject), subject
    assert not processor.permits(Access.SUBJECT, "raw.tax.income_declared-value")
    assert not processor.permits(Access.ADMIN, None)


def test_only_the_operator_administers_the_registry(charter) -> None:  # noqa: ANN001
    admins = {name for name, grant in plan_for_charter(charter).items() if grant.role is Role.ADMIN}
    assert admins == {"operator"}


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What `create-secrets.sh --offline` writes, run for real (no cluster)."""
    out = tmp_path_factory.mktemp("secrets") / "out"
    bin_dir = Path(sys.executable).parent  # the `backbone` command of this environment
    env = clean_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run([str(CREATE_SECRETS), "--offline", str(out)], capture_output=True, text=True, env=env, timeout=180)
    assert result.returncode == 0, result.stderr
    return out


def test_create_secrets_provisions_the_planned_users_and_each_workload_s_secret(secrets_dir: Path, charter) -> None:  # noqa: ANN001
    users = {name: user.grant for name, user in UsersFile(secrets_dir / "secrets" / "schema-registry-users" / "users.json").read().items()}
    assert _check(users, registered_subjects(charter)) == []
    for workload in ("backbone-init", "processor", "operator", "sink-audit", *(f"sink-{r}" for r in Agencies.from_charter(charter).recipients)):
        secret = secrets_dir / "secrets" / f"registry-{workload}"
        assert (secret / "BACKBONE_SCHEMA_REGISTRY_USER").read_text() == workload
        password = (secret / "BACKBONE_SCHEMA_REGISTRY_PASSWORD").read_text()
        assert "\n" not in password and users[workload] == plan_for_charter(charter)[workload]


def test_create_secrets_leaves_every_file_readable_by_its_owner_only(secrets_dir: Path) -> None:
    for path in [secrets_dir, *secrets_dir.rglob("*")]:
        assert path.stat().st_mode & 0o077 == 0, path


def test_users_file_holds_hashes_never_a_password(secrets_dir: Path) -> None:
    text = (secrets_dir / "registry-users.json").read_text()
    for password_file in (secrets_dir / "registry-passwords").iterdir():
        assert password_file.read_text().strip() not in text
    assert json.loads(text)["format"] == "backbone-registry-users/1"
