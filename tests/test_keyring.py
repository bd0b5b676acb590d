"""The keyring and tokens: encrypted at rest, keys never shown, pseudonyms per domain, rotation
without breaking old tokens, reidentification only with the provider's key and always logged."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
from pathlib import Path

import pytest

from app.local import worker_environment
from backbone.errors import KeyringError, ReidentifyError
from backbone.events.serde import Decoder, registry_client
from backbone.kafka.topics import OPERATIONS_TOPIC
from backbone.keys import pseudonym
from backbone.keys.keyring import Keyring
from backbone.keys.master import encode_master_key, master_key_from_settings, new_master_key
from backbone.settings import Settings, load_settings
from tests.keys import AutoKeyring
from tests.pipeline import read_topic


@pytest.fixture
def master_key() -> bytes:
    return new_master_key()


def key_bytes(keyring: Keyring) -> list[bytes]:
    return [keyring.key_by_id(info.kind, info.owner, info.key_id) for info in keyring.keys()]


def test_keyring_round_trips_through_its_file_under_the_master_key(tmp_path: Path, master_key: bytes) -> None:
    keyring = Keyring.generate(domains=["fraud", "research"], providers=["tax"])
    keyring.save(tmp_path / "keyring.json", master_key)
    loaded = Keyring.load(tmp_path / "keyring.json", master_key)
    assert loaded.keys() == keyring.keys()
    assert pseudonym.token("fraud", "123456782", keyring=loaded) == pseudonym.token("fraud", "123456782", keyring=keyring)


def test_keyring_file_holds_no_key_in_clear_and_is_owner_only(tmp_path: Path, master_key: bytes) -> None:
    keyring = Keyring.generate(domains=["fraud"], providers=["tax"])
    path = tmp_path / "keyring.json"
    keyring.save(path, master_key)
    text = path.read_text()
    for secret in key_bytes(keyring) + [master_key]:
        assert base64.b64encode(secret).decode() not in text
        assert secret.hex() not in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_wrong_master_key_stops_with_what_to_set(tmp_path: Path, master_key: bytes) -> None:
    Keyring.generate(domains=["fraud"]).save(tmp_path / "keyring.json", master_key)
    with pytest.raises(KeyringError) as caught:
        Keyring.load(tmp_path / "keyring.json", new_master_key())
    assert "does not open keyring" in str(caught.value) and "BACKBONE_MASTER_KEY" in str(caught.value)


def test_missing_master_key_names_the_settings_to_set(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, master_key=None, master_key_file=None)
    with pytest.raises(KeyringError, match="BACKBONE_MASTER_KEY .* or BACKBONE_MASTER_KEY_FILE"):
        Keyring.open(settings)


def test_malformed_master_key_is_refused_without_echoing_it(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, master_key="c2VjcmV0LXZhbHVl")  # base64 of 12 bytes
    with pytest.raises(KeyringError) as caught:
        master_key_from_settings(settings)
    assert "must decode to 32 bytes" in str(caught.value) and "c2VjcmV0LXZhbHVl" not in str(caught.value)
    settings = load_settings(data_dir=tmp_path, master_key="not base64 at all!")
    with pytest.raises(KeyringError) as caught:
        master_key_from_settings(settings)
    assert "not valid base64" in str(caught.value) and "not base64 at all" not in str(caught.value)


def test_missing_keyring_file_says_to_run_keys_init(tmp_path: Path, master_key: bytes) -> None:
    with pytest.raises(KeyringError, match="backbone keys init"):
        Keyring.load(tmp_path / "absent.json", master_key)


def test_altered_keyring_is_refused(tmp_path: Path, master_key: bytes) -> None:
    path = tmp_path / "keyring.json"
    Keyring.generate(domains=["fraud", "research"]).save(path, master_key)
    data = json.loads(path.read_text())
    data["keys"][0]["owner"], data["keys"][1]["owner"] = data["keys"][1]["owner"], data["keys"][0]["owner"]
    path.write_text(json.dumps(data))
    with pytest.raises(KeyringError, match="altered"):
        Keyring.load(path, master_key)


def test_keys_never_appear_in_reprs_or_errors(tmp_path: Path, master_key: bytes) -> None:
    keyring = Keyring.generate(domains=["fraud"], providers=["tax"])
    shown = [repr(keyring), str(keyring), *map(repr, keyring.keys()), repr(keyring._secrets), repr(vars(keyring))]
    with pytest.raises(ReidentifyError) as caught:
        pseudonym.reidentify("tax", "k1.AAAA", keyring=keyring, domain="fraud", field="bank_account")
    shown.append(str(caught.value))
    with pytest.raises(KeyringError) as missing:
        keyring.active_key("domain", "unknown")
    shown.append(str(missing.value))
    for secret in key_bytes(keyring):
        for text in shown:
            assert repr(secret)[2:-1] not in text and base64.b64encode(secret).decode() not in text and secret.hex() not in text
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(keyring)


def test_pseudonyms_are_stable_within_a_domain_and_differ_across_domains() -> None:
    keyring = AutoKeyring()
    fraud = pseudonym.token("fraud", "123456782", keyring=keyring)
    assert fraud == pseudonym.token("fraud", "123456782", keyring=keyring)
    assert fraud != pseudonym.token("research", "123456782", keyring=keyring)
    assert fraud != pseudonym.token("fraud", "123456783", keyring=keyring)


def test_pseudonym_carries_the_key_id_and_128_bits() -> None:
    keyring = AutoKeyring()
    token = pseudonym.token("fraud", "123456782", keyring=keyring)
    key_id, body = token.split(".")
    assert key_id == keyring.active_key("domain", "fraud")[0]
    assert len(base64.urlsafe_b64decode(body + "==")) * 8 == 128


def test_encryption_is_deterministic_and_reversible_with_the_provider_key() -> None:
    keyring = AutoKeyring()
    token = pseudonym.encrypt("tax", "NL91ABNA0417164300", keyring=keyring, domain="fraud", field="bank_account")
    assert token == pseudonym.encrypt("tax", "NL91ABNA0417164300", keyring=keyring, domain="fraud", field="bank_account")
    assert "NL91ABNA0417164300" not in token
    assert pseudonym.reidentify("tax", token, keyring=keyring, domain="fraud", field="bank_account") == "NL91ABNA0417164300"


def test_one_value_encrypts_differently_per_domain_and_field_and_opens_only_with_both() -> None:
    keyring = AutoKeyring()
    fraud = pseudonym.encrypt("tax", "NL91ABNA0417164300", keyring=keyring, domain="fraud", field="bank_account")
    research = pseudonym.encrypt("tax", "NL91ABNA0417164300", keyring=keyring, domain="research", field="bank_account")
    other_field = pseudonym.encrypt("tax", "NL91ABNA0417164300", keyring=keyring, domain="fraud", field="employer_account")
    assert len({fraud, research, other_field}) == 3
    with pytest.raises(ReidentifyError, match="check --domain and --field"):
        pseudonym.reidentify("tax", fraud, keyring=keyring, domain="research", field="bank_account")
    with pytest.raises(ReidentifyError, match="check --domain and --field"):
        pseudonym.reidentify("tax", fraud, keyring=keyring, domain="fraud", field="employer_account")
    assert pseudonym.reidentify("tax", research, keyring=keyring, domain="research", field="bank_account") == "NL91ABNA0417164300"


def test_reidentify_refuses_another_providers_key_and_altered_tokens() -> None:
    keyring = Keyring.generate(providers=["tax", "welfare"])
    token = pseudonym.encrypt("tax", "NL91ABNA0417164300", keyring=keyring, domain="fraud", field="bank_account")
    with pytest.raises(ReidentifyError, match="not a key of provider 'welfare'"):
        pseudonym.reidentify("welfare", token, keyring=keyring, domain="fraud", field="bank_account")
    altered = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    with pytest.raises(ReidentifyError, match="altered"):
        pseudonym.reidentify("tax", altered, keyring=keyring, domain="fraud", field="bank_account")


def test_rotation_keeps_old_tokens_reidentifiable_and_new_tokens_use_the_new_key() -> None:
    keyring = Keyring.generate(domains=["fraud"], providers=["tax"])
    old_token = pseudonym.encrypt("tax", "secret-value", keyring=keyring, domain="fraud", field="bank_account")
    old_pseudonym = pseudonym.token("fraud", "123456782", keyring=keyring)
    new_key = keyring.rotate("provider", "tax")
    keyring.rotate("domain", "fraud")
    new_token = pseudonym.encrypt("tax", "secret-value", keyring=keyring, domain="fraud", field="bank_account")
    assert new_token.startswith(new_key.key_id + ".") and new_token != old_token
    assert pseudonym.reidentify("tax", old_token, keyring=keyring, domain="fraud", field="bank_account") == "secret-value"
    assert pseudonym.reidentify("tax", new_token, keyring=keyring, domain="fraud", field="bank_account") == "secret-value"
    assert pseudonym.token("fraud", "123456782", keyring=keyring) != old_pseudonym
    assert [info.active for info in keyring.keys() if info.owner == "tax"] == [False, True]


def test_missing_key_names_the_fix() -> None:
    with pytest.raises(KeyringError, match="backbone keys rotate --domain fraud"):
        pseudonym.token("fraud", "x", keyring=Keyring.generate())


# CLI ---------------------------------------------------------------------------------------------


@pytest.fixture
def backbone(backbone_cli):  # noqa: ANN001, ANN201
    """`backbone` in-process (conftest's `backbone_cli`) as a user whose $USER is not their identity."""
    return lambda *args, **env: backbone_cli(*args, **{"USER": "auditor-7", **env})


def test_cli_init_requires_a_master_key_unless_asked_to_create_one(tmp_path: Path, backbone) -> None:  # noqa: ANN001
    refused = backbone("keys", "init")
    assert refused.returncode == 1 and "BACKBONE_MASTER_KEY" in refused.stderr
    assert not (tmp_path / "data" / "keyring.json").exists()
    created = backbone("keys", "init", "--new-master-key-file", str(tmp_path / "master.key"))
    assert created.returncode == 0, created.stderr
    assert stat.S_IMODE((tmp_path / "master.key").stat().st_mode) == 0o600
    listed = backbone("keys", "list", BACKBONE_MASTER_KEY_FILE=str(tmp_path / "master.key"))
    assert listed.returncode == 0, listed.stderr
    for owner in ("fraud", "research", "statistics", "oversight", "tax", "welfare", "registry", "police"):
        assert owner in listed.stdout
    master = (tmp_path / "master.key").read_text().strip()
    assert master not in listed.stdout + created.stdout


def test_cli_init_creates_the_configured_master_key_file_only_at_that_path(tmp_path: Path, backbone) -> None:  # noqa: ANN001
    configured = tmp_path / "configured.key"
    elsewhere = backbone("keys", "init", "--new-master-key-file", str(tmp_path / "other.key"),
                         BACKBONE_MASTER_KEY_FILE=str(configured))
    assert elsewhere.returncode == 1 and not (tmp_path / "other.key").exists()
    created = backbone("keys", "init", "--new-master-key-file", str(configured), BACKBONE_MASTER_KEY_FILE=str(configured))
    assert created.returncode == 0, created.stderr
    assert backbone("keys", "list", BACKBONE_MASTER_KEY_FILE=str(configured)).returncode == 0


def test_cli_wrong_master_key_stops_with_one_clear_line(tmp_path: Path, backbone) -> None:  # noqa: ANN001
    backbone("keys", "init", "--new-master-key-file", str(tmp_path / "master.key"))
    wrong = backbone("keys", "list", BACKBONE_MASTER_KEY=encode_master_key(new_master_key()))
    assert wrong.returncode == 1
    assert "does not open keyring" in wrong.stderr and "Traceback" not in wrong.stderr


@pytest.mark.integration
def test_cli_reidentify_records_who_why_and_which_token_in_the_audit_trail_and_never_the_value(
    tmp_path: Path, backbone, registry_settings: Settings  # noqa: ANN001
) -> None:
    master_file = tmp_path / "master.key"
    backbone("keys", "init", "--new-master-key-file", str(master_file))
    stack = {k: v for k, v in worker_environment(registry_settings).items() if k.startswith("BACKBONE_") and k not in
             {"BACKBONE_DATA_DIR", "BACKBONE_MASTER_KEY", "BACKBONE_MASTER_KEY_FILE", "BACKBONE_CLICKHOUSE_DSN"}}
    env = {**stack, "BACKBONE_MASTER_KEY_FILE": str(master_file), "BACKBONE_IDENTITY": "auditor-7", "USER": "someone-else"}
    keyring = Keyring.open(load_settings(data_dir=tmp_path / "data", master_key_file=master_file))
    token = pseudonym.encrypt("tax", "NL91ABNA0417164300", keyring=keyring, domain="fraud", field="bank_account")
    rotated = backbone("keys", "rotate", "--provider", "tax", **env)
    assert rotated.returncode == 0 and "older keys kept" in rotated.stdout
    where = ("--domain", "fraud", "--field", "bank_account")

    no_reason = backbone("keys", "reidentify", "--provider", "tax", *where, token, **env)
    assert no_reason.returncode != 0 and "--reason" in no_reason.stderr
    nobody = backbone("keys", "reidentify", "--provider", "tax", *where, token, "--reason", "case 42",
                      **{k: v for k, v in env.items() if k != "BACKBONE_IDENTITY"})
    assert nobody.returncode == 1 and "BACKBONE_IDENTITY" in nobody.stderr and "NL91ABNA0417164300" not in nobody.stdout

    revealed = backbone("keys", "reidentify", "--provider", "tax", *where, token, "--reason", "case 42", **env)
    assert revealed.returncode == 0, revealed.stderr
    assert "NL91ABNA0417164300" in revealed.stdout
    refused = backbone("keys", "reidentify", "--provider", "welfare", *where, token, "--reason", "case 43", **env)
    assert refused.returncode == 1 and "NL91ABNA0417164300" not in refused.stderr

    digest = hashlib.sha256(token.encode()).hexdigest()
    log = (tmp_path / "data" / "reidentify.log").read_text()
    entries = [json.loads(line) for line in log.splitlines()]
    assert [(e["provider"], e["outcome"], e["user"], e["reason"]) for e in entries] == [
        ("tax", "revealed", "auditor-7", "case 42"), ("welfare", "refused", "auditor-7", "case 43")]
    assert entries[0]["key_id"] == token.split(".")[0] and entries[0]["token_sha256"] == digest
    assert "NL91ABNA0417164300" not in log and token not in log

    # the same two attempts are records of the audit trail, with the token only as its hash
    decode = Decoder(registry_client(registry_settings))
    messages = read_topic(registry_settings, OPERATIONS_TOPIC,
                          lambda ms: sum(decode(m.value()).record["details"].get("token_sha256") == digest for m in ms) >= 2)
    mine = [decode(m.value()).record for m in messages if decode(m.value()).record["details"].get("token_sha256") == digest]
    assert sorted((r["action"], r["actor"], r["outcome"], r["reason"]) for r in mine) == [
        ("reidentify", "auditor-7", "refused", "case 43"), ("reidentify", "auditor-7", "revealed", "case 42")]
    assert all(token not in m.value().decode("latin-1") and b"NL91ABNA0417164300" not in m.value() for m in messages)


def test_cli_rotate_needs_exactly_one_target(backbone) -> None:  # noqa: ANN001
    result = backbone("keys", "rotate")
    assert result.returncode == 1 and "give exactly one of --domain D or --provider P" in result.stderr


def test_pseudonym_is_standard_hmac_sha256_under_the_domain_key() -> None:
    import hmac

    keyring = Keyring.generate(domains=["fraud"])
    key_id, key = keyring.active_key("domain", "fraud")
    for value in ("123456782", "", "é" * 100, 42):
        expected = hmac.digest(key, b"fraud\x00" + str(value).encode(), "sha256")[:16]
        assert pseudonym.token("fraud", value, keyring=keyring) == f"{key_id}." + base64.urlsafe_b64encode(expected).rstrip(b"=").decode()


@pytest.mark.integration
def test_an_operator_action_without_the_keyring_is_refused_and_nothing_is_published(
        registry_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail closed: an action that cannot be sealed (no keyring, so no operations signing key) is
    not done, and no unsealed record of it reaches audit.operations."""
    from backbone.audit import operations

    for name in ("BACKBONE_MASTER_KEY", "BACKBONE_MASTER_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    settings = registry_settings.model_copy(update={"data_dir": tmp_path, "keyring_path": tmp_path / "keyring.json"})
    action = operations.OperatorAction("agreement_status", "operator-1", "tax-to-fraud@2", "done", None, {"status": "suspended"})
    with pytest.raises(KeyringError, match="is sealed in the audit trail with operator-1's own signing key .* so it is not done"):
        operations.record(settings, action)
    published = read_topic(settings, OPERATIONS_TOPIC, lambda _: False, timeout=2)
    assert action.action_id.encode() not in {m.key() for m in published}
