"""Roles hold disjoint keys: an operator's environment holds no key that computes a pseudonym, yet the
operator's commands work; each command states the role it needs and refuses another role clearly."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.local import RoleKeyring, provision_role_keyrings, worker_environment
from backbone.control.erasure_requests import ErasureDesk
from backbone.errors import KeyringError
from backbone.events.catalog import load_catalog
from backbone.keys import pseudonym
from backbone.keys.keyring import KeyInfo, Keyring, _Secret
from backbone.keys.master import decode_master_key, master_key_from_settings
from backbone.keys.pseudonym import token_key_id
from backbone.keys.roles import holds
from backbone.policy import load_agreements
from backbone.settings import Settings, load_settings
from tests.cli import run_backbone
from tests.pipeline import private_stack

pipeline = pytest.mark.integration


def init_roles(tmp_path: Path) -> dict[str, dict[str, str]]:
    """What `backbone keys init` gives each role: its own keyring under its own master key file."""
    data = tmp_path / "data"
    envs = {role: {"BACKBONE_DATA_DIR": str(data), "BACKBONE_ROLE": role, "BACKBONE_MASTER_KEY_FILE": str(tmp_path / f"{role}.key")}
            for role in ("processor", "operator", "oversight")}
    for role in ("processor", "operator"):
        made = run_backbone("keys", "init", "--new-master-key-file", str(tmp_path / f"{role}.key"), env=envs[role])
        assert made.returncode == 0, made.stderr
    shared = run_backbone("keys", "init", "--new-master-key-file", str(tmp_path / "oversight.key"), "--from-keyring",
                          str(data / "processor.keyring"), "--from-master-key-file", str(tmp_path / "processor.key"), env=envs["oversight"])
    assert shared.returncode == 0, shared.stderr
    return envs


def reachable_keyrings(env: dict[str, str]) -> list[Keyring]:
    """Every keyring the environment's settings reach: its own, and any keyring file in its data dir
    or beside its keyring that its master key opens."""
    settings = load_settings(data_dir=Path(env["BACKBONE_DATA_DIR"]), role=env["BACKBONE_ROLE"],
                             master_key_file=Path(env["BACKBONE_MASTER_KEY_FILE"]), **({"keyring_path": Path(env["BACKBONE_KEYRING_PATH"])}
                                                                                     if "BACKBONE_KEYRING_PATH" in env else {}))
    master = master_key_from_settings(settings)
    found = [Keyring.open(settings)]
    for path in {*settings.data_dir.rglob("*.keyring"), *settings.data_dir.rglob("keyring*.json"),
                 *Path(settings.keyring_path).parent.glob("*.keyring")}:
        try:
            found.append(Keyring.load(path, master))
        except KeyringError:
            continue  # another role's keyring: its master key is not the operator's
    return found


def test_keys_init_gives_each_role_only_its_keys(tmp_path: Path) -> None:
    envs = init_roles(tmp_path)
    data = tmp_path / "data"
    for role in envs:
        keyring = Keyring.load(data / f"{role}.keyring", decode_master_key((tmp_path / f"{role}.key").read_text(), role))
        assert keyring.keys() and all(holds(role, info) for info in keyring.keys()), role  # type: ignore[arg-type]
    operator = Keyring.load(data / "operator.keyring", decode_master_key((tmp_path / "operator.key").read_text(), "operator"))
    assert {info.kind for info in operator.keys()} == {"signing"}
    oversight = Keyring.load(data / "oversight.keyring", decode_master_key((tmp_path / "oversight.key").read_text(), "oversight"))
    assert {(i.kind, i.owner) for i in oversight.keys() if i.kind == "domain"} == {("domain", "oversight")}


def test_an_operator_environment_holds_no_key_that_computes_a_pseudonym(tmp_path: Path) -> None:
    envs = init_roles(tmp_path)
    processor = Keyring.load(tmp_path / "data" / "processor.keyring", decode_master_key((tmp_path / "processor.key").read_text(), "p"))
    domains = sorted({info.owner for info in processor.keys() if info.kind == "domain"})
    candidates = [f"{n:09d}" for n in range(123_456_000, 123_456_200)]
    target = pseudonym.token("fraud", candidates[137], keyring=processor)  # a fraud-domain pseudonym the operator sees
    for keyring in reachable_keyrings(envs["operator"]):
        for domain in domains:
            with pytest.raises(KeyringError):
                pseudonym.token_function(keyring, domain)
        for info in keyring.keys():  # nor does any key it holds, of any kind, used as the fraud domain's key
            material = keyring.key_by_id(info.kind, info.owner, info.key_id)
            forged = Keyring()
            forged._add(KeyInfo("domain", "fraud", token_key_id(target), info.created, True), _Secret(material))
            forge = pseudonym.token_function(forged, "fraud")[0]
            assert target not in {forge(candidate) for candidate in candidates}
    assert target in {pseudonym.token("fraud", candidate, keyring=processor) for candidate in candidates}  # the attack itself works


def test_each_command_states_its_role_and_refuses_another(tmp_path: Path) -> None:
    envs = init_roles(tmp_path)
    refused = run_backbone("keys", "reidentify", "k1.AAAA", "--provider", "tax", "--domain", "fraud", "--field", "bank_account",
                           "--reason", "case 1", env={**envs["operator"], "BACKBONE_IDENTITY": "op-1"})
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [line for line in refused.stderr.strip().splitlines() if line]
    assert "backbone keys reidentify needs the oversight role's keyring (BACKBONE_ROLE=oversight" in refused.stderr
    assert "this environment is an operator's" in refused.stderr and "Traceback" not in refused.stderr
    erase = run_backbone("erase", "--subject", "123456782", "--reason", "r", env=envs["oversight"])
    assert erase.returncode == 1 and "backbone erase needs the operator role's keyring" in erase.stderr
    assert "an oversight's" in erase.stderr or "oversight's" in erase.stderr
    helped = run_backbone("keys", "reidentify", "--help")
    assert "Role: oversight" in helped.stdout
    assert "Role: operator" in run_backbone("erase", "--help").stdout
    assert "Role: processor" in run_backbone("process", "--help").stdout


@pytest.fixture(scope="module")
def roles_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, dict[str, RoleKeyring]]]:
    with private_stack(tmp_path_factory.mktemp("roles"), partitions=1) as base:
        charter = load_agreements(base.agreements_dir, load_catalog(base.schemas_dir))
        directory = tmp_path_factory.mktemp("role-keyrings")
        yield base, provision_role_keyrings(directory, charter)


@pipeline
def test_the_operators_commands_work_in_an_environment_without_pseudonym_keys(roles_stack, tmp_path: Path) -> None:  # noqa: ANN001
    base, keyrings = roles_stack
    env = worker_environment(base, clickhouse_dsn=f"chdb://{tmp_path / 'ch'}", identity="op-7", **keyrings["operator"].environment())
    for keyring in reachable_keyrings({"BACKBONE_DATA_DIR": str(base.data_dir), "BACKBONE_ROLE": "operator",
                                       "BACKBONE_MASTER_KEY_FILE": str(keyrings["operator"].master_key_file),
                                       "BACKBONE_KEYRING_PATH": str(keyrings["operator"].keyring_path)}):
        assert not [info for info in keyring.keys() if info.kind in ("domain", "provider")]
    topic = f"ops.check.{uuid.uuid4().hex[:8]}"
    for args in (("topics", "create", topic), ("topics", "list"), ("agreements", "suspend", "tax-to-fraud"),
                 ("agreements", "activate", "tax-to-fraud"), ("dlq", "list")):
        done = run_backbone(*args, env=env)
        assert done.returncode == 0, (args, done.stdout[-2000:], done.stderr[-2000:])
    charter = load_agreements(base.agreements_dir, load_catalog(base.schemas_dir))
    person = str(uuid.uuid4().int)[:9]
    desk = ErasureDesk(base.model_copy(update=keyrings["processor"].settings()), charter, keyrings["processor"].open()).start()
    try:
        erased = run_backbone("erase", "--subject", person, "--reason", "request 12", env=env)
    finally:
        desk.stop()
    assert erased.returncode == 0, erased.stderr[-2000:]
    token = pseudonym.token("oversight", person, keyring=keyrings["oversight"].open())
    assert token in erased.stdout.replace("\n", "") and person not in erased.stdout + erased.stderr
