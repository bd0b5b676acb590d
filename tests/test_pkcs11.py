"""The PKCS#11 key provider on a real SoftHSM2 token (tests/softhsm.py installs it when missing):
keys made in the token cannot be read out, the token computes pseudonyms, event ids, AES-SIV and
Ed25519 signatures in the formats the file keyring uses, tokens of a file keyring stay readable after
a move, and the demo runs end to end with its keys on the token."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from backbone.errors import KeyringError, ReidentifyError
from backbone.keys import pseudonym
from backbone.keys.keyring import Keyring
from backbone.keys.master import encode_master_key, new_master_key
from backbone.keys.pkcs11 import Pkcs11Provider
from backbone.keys.siv import Siv
from backbone.settings import load_settings
from tests.cli import run_backbone
from tests.softhsm import SoftHsmUnavailable, new_token

pkcs11 = pytest.importorskip("pkcs11")


@pytest.fixture(scope="module")
def token_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    # one token per test process: SoftHSM reads its configuration once, when the module is loaded
    try:
        return new_token(tmp_path_factory.mktemp("softhsm"))
    except SoftHsmUnavailable as exc:
        pytest.skip(str(exc))


def settings_for(env: dict[str, str], data_dir: Path, **overrides: object):  # noqa: ANN201
    values = {key[len("BACKBONE_"):].lower(): value for key, value in env.items() if key.startswith("BACKBONE_")}
    return load_settings(**{"data_dir": data_dir, **values, **overrides})


@pytest.fixture(scope="module")
def provider(token_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Pkcs11Provider:
    keys = Keyring.open(settings_for(token_env, tmp_path_factory.mktemp("data")))
    assert isinstance(keys, Pkcs11Provider)
    keys.ensure(["fraud", "research", "oversight"], ["tax"], ["processor"])
    return keys


def test_token_aes_siv_is_rfc_5297_byte_for_byte(provider: Pkcs11Provider) -> None:
    """S2V from the token's CMAC and CTR on the token give `cryptography`'s AESSIV output, for the
    RFC 5297 A.1 vector and a 512-bit test key (imported as extractable session objects: test keys only)."""
    p, session = pkcs11, provider._session

    def siv_on_token(key: bytes) -> Siv:
        half = len(key) // 2
        k1 = session.create_object({p.Attribute.CLASS: p.ObjectClass.SECRET_KEY, p.Attribute.KEY_TYPE: p.KeyType.AES,
                                    p.Attribute.VALUE: key[:half], p.Attribute.SIGN: True, p.Attribute.TOKEN: False})
        k2 = session.create_object({p.Attribute.CLASS: p.ObjectClass.SECRET_KEY, p.Attribute.KEY_TYPE: p.KeyType.AES,
                                    p.Attribute.VALUE: key[half:], p.Attribute.ENCRYPT: True, p.Attribute.DECRYPT: True,
                                    p.Attribute.TOKEN: False})
        return provider._siv({"cmac": k1, "ctr": k2})

    rfc_key = bytes.fromhex("fffefdfcfbfaf9f8f7f6f5f4f3f2f1f0f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
    rfc_ad = bytes.fromhex("101112131415161718191a1b1c1d1e1f2021222324252627")
    rfc_plain = bytes.fromhex("112233445566778899aabbccddee")
    assert siv_on_token(rfc_key).sealer([rfc_ad])(rfc_plain).hex() == "85632d07c6e8f37f950acd320a2ecc9340c02b9690c4dc04daef7f6afe5c"

    key = bytes(range(64))
    siv = siv_on_token(key)
    for associated in ([b"tax", b"fraud", b"bank_account", b"h3"], [b""], []):
        seal = siv.sealer(associated)
        for size in (1, 15, 16, 17, 33, 200):
            plaintext = os.urandom(size)
            if associated:  # cryptography's AESSIV requires associated data here
                assert seal(plaintext) == AESSIV(key).encrypt(plaintext, associated)
            assert siv.open(seal(plaintext), associated) == plaintext
    sealed = bytearray(siv.sealer([b"a"])(b"NL91ABNA0417164300"))
    sealed[-1] ^= 1
    with pytest.raises(ValueError, match="synthetic IV"):
        siv.open(bytes(sealed), [b"a"])


def test_the_token_refuses_to_give_out_a_key(provider: Pkcs11Provider) -> None:
    """Read CKA_VALUE, wrap under a key of our own, flip the extractable or sensitive flags: all refused."""
    p, session = pkcs11, provider._session
    secrets = [item for item in session.get_objects({p.Attribute.CLASS: p.ObjectClass.SECRET_KEY})
               if str(item[p.Attribute.LABEL]).startswith("backbone ")]
    private = [item for item in session.get_objects({p.Attribute.CLASS: p.ObjectClass.PRIVATE_KEY})
               if str(item[p.Attribute.LABEL]).startswith("backbone ")]
    assert len(secrets) >= 5 and private  # 3 domains (HMAC) + 1 provider (CMAC, CTR); the signing key
    wrapper = session.generate_key(p.KeyType.AES, 256, store=False, capabilities=p.MechanismFlag.WRAP | p.MechanismFlag.ENCRYPT)
    for key in secrets + private:
        assert key[p.Attribute.SENSITIVE] and not key[p.Attribute.EXTRACTABLE] and key[p.Attribute.NEVER_EXTRACTABLE]
        with pytest.raises(p.exceptions.AttributeSensitive):
            key[p.Attribute.VALUE]
        with pytest.raises(p.exceptions.PKCS11Error):  # KeyUnextractable
            wrapper.wrap_key(key, mechanism=p.Mechanism.AES_KEY_WRAP_PAD)
        with pytest.raises(p.exceptions.PKCS11Error):  # the flags only ever tighten
            key[p.Attribute.EXTRACTABLE] = True
        with pytest.raises(p.exceptions.PKCS11Error):
            key[p.Attribute.SENSITIVE] = False
    with pytest.raises(KeyringError, match="cannot be read"):
        provider.active_key("domain", "fraud")


def test_the_token_computes_pseudonyms_event_ids_encryption_and_signatures(provider: Pkcs11Provider) -> None:
    pseudonymise, key_id = pseudonym.token_function(provider, "fraud")
    assert re.fullmatch(r"h\d+", key_id)
    first = pseudonymise("123456789")
    assert re.fullmatch(rf"{key_id}\.[A-Za-z0-9_-]{{22}}", first)
    assert pseudonymise(123456789) == first == pseudonym.token("fraud", "123456789", keyring=provider)
    assert pseudonym.token_function(provider, "research")[0]("123456789").split(".")[1] != first.split(".")[1]
    event_id = pseudonym.event_id_function(provider, "fraud", "fraud")
    assert event_id("e-1") == event_id("e-1") != pseudonym.event_id_function(provider, "fraud", "research")("e-1")

    encrypt, provider_key = pseudonym.encrypt_function(provider, "tax", "fraud", "bank_account")
    sealed = encrypt("NL91ABNA0417164300")
    assert sealed.startswith(provider_key + ".") and encrypt("NL91ABNA0417164300") == sealed
    assert pseudonym.reidentify("tax", sealed, keyring=provider, domain="fraud", field="bank_account") == "NL91ABNA0417164300"
    with pytest.raises(ReidentifyError, match="does not decrypt"):
        pseudonym.reidentify("tax", sealed, keyring=provider, domain="research", field="bank_account")

    signer_id, signer = provider.signing_key("processor")
    signature = signer.sign(b"checkpoint")
    public = next(key for key in provider.public_keys() if key.key_id == signer_id)
    public.verifier().verify(signature, b"checkpoint")  # plain Ed25519: audit verify needs no change

    rotated = provider.rotate("provider", "tax")
    assert pseudonym.encrypt_function(provider, "tax", "fraud", "bank_account")[1] == rotated.key_id != provider_key
    assert pseudonym.reidentify("tax", sealed, keyring=provider, domain="fraud", field="bank_account") == "NL91ABNA0417164300"


def test_file_keyring_tokens_stay_readable_after_the_move(token_env: dict[str, str], tmp_path: Path,
                                                          provider: Pkcs11Provider) -> None:
    master = new_master_key()
    settings = settings_for(token_env, tmp_path, master_key=encode_master_key(master))
    before = Keyring.generate(domains=["fraud"], providers=["tax"], signers=["processor"])
    before.save(settings.keyring_path, master)
    old_token = pseudonym.encrypt("tax", "NL02RABO0300065264", keyring=before, domain="fraud", field="bank_account")
    old_pseudonym = pseudonym.token("fraud", "123", keyring=before)
    moved = Keyring.open(settings)
    assert pseudonym.reidentify("tax", old_token, keyring=moved, domain="fraud", field="bank_account") == "NL02RABO0300065264"
    assert pseudonym.token_function(moved, "fraud", old_pseudonym.split(".")[0])[0]("123") == old_pseudonym  # erasure finds old rows
    assert pseudonym.token("fraud", "123", keyring=moved).startswith("h")  # new tokens: the token's key
    file_keys = [info for info in moved.keys() if info.key_id.startswith("k")]
    assert file_keys and not any(info.active for info in file_keys if info.kind != "signing" or info.owner == "processor")
    assert {key.key_id for key in before.public_keys()} <= {key.key_id for key in moved.public_keys()}


def test_a_wrong_pin_is_refused_without_showing_it(token_env: dict[str, str], tmp_path: Path) -> None:
    env = {key: value for key, value in token_env.items() if key != "BACKBONE_PKCS11_PIN_FILE"}
    refused = run_backbone("keys", "list", env={**env, "BACKBONE_DATA_DIR": str(tmp_path), "BACKBONE_PKCS11_PIN": "9999-0000"})
    assert refused.returncode != 0
    assert "refused the user PIN" in refused.stdout + refused.stderr
    assert "9999" not in refused.stdout + refused.stderr
    assert "Traceback" not in refused.stderr
    with pytest.raises(KeyringError, match="refused the user PIN"):  # in a process already logged in, too
        Keyring.open(settings_for(token_env, tmp_path, pkcs11_pin="9999-0000", pkcs11_pin_file=None))


@pytest.mark.integration
@pytest.mark.slow
def test_the_demo_runs_with_its_keys_on_the_token(token_env: dict[str, str], tmp_path: Path) -> None:
    """Acceptance (3): every event decided and landed, the planted fraud found with precision and
    recall 1.00, as with the file keyring; the pseudonyms and signatures came from the token."""
    env = {**token_env, "BACKBONE_DATA_DIR": str(tmp_path), "BACKBONE_BROKER_PORT": "0", "BACKBONE_SCHEMA_REGISTRY_PORT": "0"}
    result = run_backbone("demo", "--events", "2500", "--timeout", "300", "--key-provider", "pkcs11", timeout=480, env=env)
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    decided, expected = (int(n.replace(",", "")) for n in re.search(r"Decisions \(([\d,]+) of ([\d,]+) events decided\)", out).groups())
    assert decided == expected > 2000
    for kind in ("claim_after_death", "shared_bank_account", "undeclared_income"):
        row = re.search(kind + r"\s+│\s+(\d+)\s+│\s+(\d+)\s+│\s+(\d+)\s+│\s+(\d+)\s+│\s+([\d.]+)\s+│\s+([\d.]+)", out)
        assert row, f"no score row for {kind}"
        alerts, _, false_pos, missed, precision, recall = row.groups()
        assert int(alerts) > 0 and precision == recall == "1.00" and false_pos == missed == "0"
    listed = run_backbone("keys", "list", env={**env, "BACKBONE_DATA_DIR": str(tmp_path / "demo")})
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"domain\s+│\s+fraud\s+│\s+h\d+\s+│.*│\s+yes", listed.stdout)
    assert re.search(r"signing\s+│\s+processor\s+│\s+h\d+\s+│.*│\s+yes", listed.stdout)


@pytest.mark.integration
def test_a_pipeline_worker_pseudonymises_with_the_token(token_env: dict[str, str], tmp_path: Path) -> None:
    """A real `backbone process` worker whose keys are on the token: the released record is keyed by
    the pseudonym the token computes (`h<n>.`), the subject's id nowhere in it."""
    from backbone.events.serde import Decoder, registry_client
    from backbone.kafka.topics import shared_topic
    from producers import AgencyProducer
    from tests.pipeline import Worker, private_stack, read_topic
    from tests.test_processor import national_id, tax_income

    overrides = {key[len("BACKBONE_"):].lower(): value for key, value in token_env.items() if key.startswith("BACKBONE_")}
    with private_stack(tmp_path, partitions=2, **overrides) as stack:
        worker = Worker(stack, "worker").start()
        try:
            subject = national_id()
            with AgencyProducer("tax", stack) as producer:
                producer.send("tax.income_declared", tax_income(subject))
            keys = Keyring.open(stack)
            expected_key = pseudonym.token("fraud", subject, keyring=keys).encode()
            assert expected_key.startswith(b"h")
            messages = read_topic(stack, shared_topic("fraud", "tax.income_declared"), lambda ms: any(m.key() == expected_key for m in ms))
            released = next(m for m in messages if m.key() == expected_key)
            record = Decoder(registry_client(stack))(released.value()).record
            assert subject not in released.value().decode("latin-1")
            assert str(record["event_id"]) not in {"", None}
        finally:
            worker.stop()
