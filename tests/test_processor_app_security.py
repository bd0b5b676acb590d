"""Faust's own Kafka clients connect the way the settings say: TLS with the configured CA, SASL user.

The data plane and the state readers use librdkafka through `Settings.kafka_config()`; the Faust app
(its consumer group, producer and topic admin, all aiokafka) takes its credentials from
`create_app`. Without them a worker talks plaintext to a TLS+SCRAM listener and never joins.
"""

from __future__ import annotations

import asyncio
import datetime
import ssl
from pathlib import Path

import aiokafka
import faust
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from faust.types.auth import AuthProtocol, SASLMechanism

from backbone.errors import SettingsError
from backbone.settings import load_settings
from processors.app import create_app

CA_NAME = "backbone-test-cluster-ca"


@pytest.fixture()
def cluster_ca(tmp_path: Path) -> Path:
    """A self-signed CA certificate in PEM, as Strimzi's `<cluster>-cluster-ca-cert` Secret holds."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = tmp_path / "ca.crt"
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.fixture()
def secured_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cluster_ca: Path) -> None:
    """The Kubernetes processor's environment: the ConfigMap's Kafka settings plus its Strimzi user."""
    monkeypatch.chdir(tmp_path)  # no .env from the working directory
    for name, value in {
        "BACKBONE_KAFKA_BOOTSTRAP": "backbone-kafka-bootstrap:9093",
        "BACKBONE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "BACKBONE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "BACKBONE_KAFKA_SASL_USERNAME": "processor",
        "BACKBONE_KAFKA_SASL_PASSWORD": "s3cret-from-the-kafkauser-secret",
        "BACKBONE_KAFKA_SSL_CA_LOCATION": str(cluster_ca),
        "BACKBONE_DATA_DIR": str(tmp_path / "data"),
    }.items():
        monkeypatch.setenv(name, value)


def _ca_names(context: ssl.SSLContext) -> set[str]:
    return {value for cert in context.get_ca_certs() for rdn in cert["subject"] for key, value in rdn if key == "commonName"}


def test_sasl_ssl_settings_give_faust_the_sasl_user_and_a_context_trusting_the_cluster_ca(secured_env: None) -> None:
    app = create_app(load_settings())
    credentials = app.conf.broker_credentials
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.protocol is AuthProtocol.SASL_SSL
    assert credentials.mechanism is SASLMechanism.SCRAM_SHA_512
    assert (credentials.username, credentials.password) == ("processor", "s3cret-from-the-kafkauser-secret")
    context = credentials.ssl_context
    assert context is not None
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    assert CA_NAME in _ca_names(context)


def test_faust_s_consumer_and_producer_are_built_with_those_credentials(secured_env: None) -> None:
    """The aiokafka clients Faust itself builds (worker consumer, producer) carry TLS and the SASL user."""

    async def build() -> tuple[aiokafka.AIOKafkaConsumer, aiokafka.AIOKafkaProducer]:
        app = create_app(load_settings())
        thread = app.consumer._thread  # the aiokafka consumer thread of this worker
        consumer = thread._create_worker_consumer(app.transport)
        producer = app.producer._new_producer()
        return consumer, producer

    consumer, producer = asyncio.run(build())
    for client in (consumer._client, producer.client):
        assert client._security_protocol == "SASL_SSL"
        assert client._sasl_mechanism == "SCRAM-SHA-512"
        assert client._sasl_plain_username == "processor"
        assert client._sasl_plain_password == "s3cret-from-the-kafkauser-secret"
        assert CA_NAME in _ca_names(client._ssl_context)


def test_sasl_plaintext_sends_the_user_without_tls(secured_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKBONE_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    app = create_app(load_settings())
    auth = credentials_to_aiokafka_auth(app.conf.broker_credentials, app.conf.ssl_context)
    assert auth["security_protocol"] == "SASL_PLAINTEXT" and auth["ssl_context"] is None
    assert (auth["sasl_mechanism"], auth["sasl_plain_username"]) == ("SCRAM-SHA-512", "processor")


def test_ssl_alone_gives_a_verifying_context_and_no_sasl(secured_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKBONE_KAFKA_SECURITY_PROTOCOL", "SSL")
    app = create_app(load_settings())
    auth = credentials_to_aiokafka_auth(app.conf.broker_credentials, app.conf.ssl_context)
    assert auth["security_protocol"] == "SSL" and "sasl_mechanism" not in auth
    assert CA_NAME in _ca_names(auth["ssl_context"])


def test_plaintext_settings_give_no_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BACKBONE_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")
    monkeypatch.setenv("BACKBONE_DATA_DIR", str(tmp_path))
    app = create_app(load_settings())
    assert app.conf.broker_credentials is None
    assert credentials_to_aiokafka_auth(app.conf.broker_credentials, app.conf.ssl_context) == {"security_protocol": "PLAINTEXT"}


def test_sasl_without_a_user_stops_before_faust_starts_naming_the_variables(secured_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # An empty forwarded value counts as unset (compose forwards unset variables as "").
    monkeypatch.setenv("BACKBONE_KAFKA_SASL_PASSWORD", "")
    with pytest.raises(SettingsError, match="BACKBONE_KAFKA_SASL_PASSWORD"):
        create_app(load_settings())
