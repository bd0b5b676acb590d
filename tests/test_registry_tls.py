"""The registry's door for agencies: HTTPS on its TLS port (`BACKBONE_SCHEMA_REGISTRY_TLS_PORT`),
the same API and users as its in-cluster HTTP port. An agency's client that trusts the deployment's
CA (`BACKBONE_SCHEMA_REGISTRY_SSL_CA_LOCATION`) registers its subjects with its own user; a client
that does not trust it, or speaks plain HTTP to that port, gets nothing."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from backbone.events.serde import RegistrySchemas, registry_client
from backbone.registry.roles import Grant
from backbone.registry.users import User, UsersFile
from backbone.settings import load_settings
from backbone.stack.embedded import EmbeddedRegistry, free_port

pytestmark = pytest.mark.integration
AGENCY = ("tax", "tax-agency-password-1")
RECORD = {"type": "record", "name": "Income", "namespace": "test", "fields": [{"name": "a", "type": "int"}]}


def _certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name | None, signer: ec.EllipticCurvePrivateKey,
                 ca: bool) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(signer, hashes.SHA256())


def _pem(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


@dataclass
class Door:
    url: str
    ca: Path
    other_ca: Path
    port: int


@pytest.fixture(scope="module")
def door(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Door]:
    directory = tmp_path_factory.mktemp("registry-tls")
    ca_key, server_key, other_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = _certificate("backbone test CA", ca_key, None, ca_key, ca=True)
    server = _certificate("schema-registry", server_key, ca.subject, ca_key, ca=False)
    pem = serialization.Encoding.PEM
    ca_file = _pem(directory / "ca.crt", ca.public_bytes(pem))
    other_ca = _pem(directory / "other-ca.crt", _certificate("another CA", other_key, None, other_key, ca=True).public_bytes(pem))
    cert_file = _pem(directory / "tls.crt", server.public_bytes(pem))
    key_file = _pem(directory / "tls.key", server_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    port = free_port()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BACKBONE_SCHEMA_REGISTRY_TLS_PORT", str(port))
        patch.setenv("BACKBONE_SCHEMA_REGISTRY_TLS_CERT_FILE", str(cert_file))
        patch.setenv("BACKBONE_SCHEMA_REGISTRY_TLS_KEY_FILE", str(key_file))
        registry = EmbeddedRegistry(directory / "data", kafka_bootstrap, topic=f"_schemas.tls.{uuid.uuid4().hex[:10]}")
        registry.start()
    try:
        UsersFile(registry.users_path).put(User.create(AGENCY[0], Grant.parse("write:raw.tax."), AGENCY[1]))
        yield Door(f"https://127.0.0.1:{port}", ca_file, other_ca, port)
    finally:
        registry.stop()


def test_an_agency_trusting_the_deployment_s_ca_registers_its_subjects_over_https(door: Door) -> None:
    settings = load_settings(schema_registry_url=door.url, schema_registry_user=AGENCY[0], schema_registry_password=AGENCY[1],
                             schema_registry_ssl_ca_location=door.ca)
    schema_id = RegistrySchemas(registry_client(settings)).register("raw.tax.income-value", RECORD)
    answer = requests.get(f"{door.url}/schemas/ids/{schema_id}", auth=AGENCY, verify=str(door.ca), timeout=10)
    assert answer.status_code == 200 and json.loads(answer.json()["schema"])["name"] == "Income"
    # the door is the same registry: the agency's grant still holds
    refused = requests.post(f"{door.url}/subjects/raw.welfare.claim-value/versions", auth=AGENCY, verify=str(door.ca), timeout=10,
                            json={"schema": json.dumps(RECORD)})
    assert refused.status_code == 403


def test_a_client_that_does_not_trust_the_ca_or_speaks_plain_http_gets_nothing(door: Door) -> None:
    settings = load_settings(schema_registry_url=door.url, schema_registry_user=AGENCY[0], schema_registry_password=AGENCY[1],
                             schema_registry_ssl_ca_location=door.other_ca)
    with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):  # the client library's connection error
        registry_client(settings).get_subjects()
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://127.0.0.1:{door.port}/subjects", auth=AGENCY, timeout=10)


def test_a_tls_port_without_its_certificate_is_refused_at_start_naming_the_settings(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKBONE_")}
    env |= {"BACKBONE_SCHEMA_REGISTRY_AUTH": "none", "BACKBONE_SCHEMA_REGISTRY_TLS_PORT": str(free_port()),
            "BACKBONE_DATA_DIR": str(tmp_path / "data"), "BACKBONE_KAFKA_BOOTSTRAP": "127.0.0.1:9"}
    result = subprocess.run([sys.executable, "-m", "backbone.registry"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "BACKBONE_SCHEMA_REGISTRY_TLS_CERT_FILE" in result.stdout + result.stderr
