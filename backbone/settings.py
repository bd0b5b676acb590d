"""The one settings model. Every value comes from a `BACKBONE_*` environment variable (or `.env`).

Only configuration differs between the embedded stack and production: point
`BACKBONE_KAFKA_BOOTSTRAP`, `BACKBONE_SCHEMA_REGISTRY_URL` and `BACKBONE_CLICKHOUSE_DSN` at real
servers and the same code runs against them.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError as PydanticSettingsError

from backbone.errors import SettingsError

ENV_PREFIX = "BACKBONE_"

# librdkafka's own log lines (connection refused while a broker starts, ...) go to this logger
# instead of stderr; a NullHandler keeps them quiet unless the application configures logging.
RDKAFKA_LOGGER = logging.getLogger("backbone.librdkafka")
RDKAFKA_LOGGER.addHandler(logging.NullHandler())
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Configuration for every part of the backbone."""

    # Empty variables count as unset: compose and Kubernetes forward an unset `${VAR:-}` as "".
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", env_ignore_empty=True)

    # Kafka
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers, host:port[,host:port]")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_ca_location: Path | None = None
    kafka_timeout_s: float = Field(10.0, gt=0, description="How long to wait for the cluster before giving up")
    kafka_partitions: int = Field(6, ge=1, description="Partitions for topics the backbone creates")
    kafka_replication_factor: int = Field(1, ge=1)
    # Client tuning
    producer_linger_ms: int = Field(5, ge=0)
    producer_batch_size: int = Field(1_000_000, ge=1)
    producer_compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "lz4"
    consumer_session_timeout_ms: int = Field(10_000, ge=1_000)
    consumer_heartbeat_interval_ms: int = Field(1_000, ge=100)
    consumer_batch_size: int = Field(5_000, ge=1, description="Messages per batched consume call")
    release_mix_ms: int = Field(50, ge=0, le=1000, description="A processor batch of fewer than 256 events also takes "
                                "what arrives within this long, so each recipient's copies are shuffled among them "
                                "(0: no wait; copies of a lone event then line up by offset across domains)")
    quality_rules: bool = Field(True, description="Processors check raw events against the schemas' quality rules "
                                "(schemas/<event type>.quality.yaml) and emit hourly windows to quality.windows")
    quality_gate_minutes: int = Field(60, ge=1, le=60, description="How long the records of an agreement that requires "
                                      "quality wait for their window's verdict: a divisor of 60 (60: the scorecard's hour)")

    # Schema registry
    schema_registry_url: str = Field("http://127.0.0.1:8081", description="Confluent-compatible schema registry")
    schema_registry_port: int = Field(8081, ge=0, le=65535, description="Port of the embedded registry")
    # Clients: the registry user every backbone client sends (HTTP Basic). `user:password@` in the
    # URL is accepted too and moved here, so the URL in messages never carries a password.
    schema_registry_user: str | None = Field(None, description="Registry user the backbone's clients authenticate as")
    schema_registry_password: SecretStr | None = Field(None, description="That user's password")
    # Server (python -m backbone.registry): `none` serves anyone as admin, only when set explicitly.
    schema_registry_auth: Literal["basic", "none"] = Field("basic", description="How the backbone's registry authenticates requests")
    schema_registry_users_file: Path | None = Field(
        None, description="Users file of the backbone's registry (default <data dir>/registry-users.json)"
    )
    schema_registry_ssl_ca_location: Path | None = Field(None, description="CA certificate (PEM) clients trust the registry's "
                                                         "HTTPS certificate with (unset: the system's CAs)")
    schema_registry_tls_port: int | None = Field(None, ge=1, le=65535, description="The backbone's registry also serves "
                                                 "HTTPS on this port, with the two files below (agencies' door)")
    schema_registry_tls_cert_file: Path | None = Field(None, description="PEM certificate (chain) the registry's HTTPS port presents")
    schema_registry_tls_key_file: Path | None = Field(None, description="PEM private key of that certificate")

    # ClickHouse
    clickhouse_dsn: str | None = Field(None, description="chdb:///path (embedded) or http(s)://user:pw@host:port/db")
    # Sinks (consumers/): per-agency databases, batching, fraud detection
    clickhouse_database_prefix: str = Field("", pattern=r"^[a-z0-9_]*$", description="Prefix of every database the sinks create (tenants, tests)")
    # A ClickHouse cluster (remote_servers) the sinks' DDL, grants and erasures run ON CLUSTER, with
    # Replicated* tables; unset: single-node DDL (chDB, one server). backbone.clickhouse.cluster.
    clickhouse_cluster: str | None = Field(None, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$",
                                           description="ClickHouse cluster to create Replicated tables ON CLUSTER (unset: one node)")
    clickhouse_sharded: bool = Field(False, description="The cluster has several shards: each table gets a Distributed table over its shards")
    sink_batch_rows: int = Field(20_000, ge=1, description="Rows a sink lands per insert at most")
    sink_batch_seconds: float = Field(1.0, gt=0, description="How long a sink waits to fill a batch at most")
    sink_batch_min_seconds: float = Field(0.1, gt=0, description="A batch lands once this old (or as old as the last write took) when nothing more is waiting")
    fraud_recipient: str = Field("fraud", description="The agency whose database runs the fraud rules")
    audit_keys_file: Path | None = Field(
        None, description="Published public signing keys (the JSON `backbone audit keys --output` writes) that audit verify, "
        "audit subject and the console check the trail against, beside the keyring's own")
    shared_retention_days: float = Field(
        7.0, gt=0, description="How long shared topics keep a record beyond its released time: retention.ms of shared.* is this"
        " plus the longest period an agreement generalises occurred_at to on the topic (record timestamps are the released time)")
    dlq_retention_days: float = Field(14.0, gt=0, description="How long DLQ topics keep dead letters (original bytes): retention.ms of dlq.*")
    fraud_interval_s: float = Field(1.0, gt=0, description="The fraud rules run at most this often while rows land")
    fraud_cluster_slack_s: float = Field(
        10.0, ge=0, description="On a ClickHouse cluster, how far back an incremental fraud run resumes beyond the inserts "
        "still running on any replica: the servers' clock skew plus replication delay (consumers.fraud.watermarks)")
    alerts_retention_days: float = Field(
        90.0, gt=0, description="How long alerts.fraud keeps an alert: retention.ms of alerts.fraud (fraud.alerts in "
        "ClickHouse keeps every alert; an erased person's leave the topic within hours by compaction)")
    # RFC 3161 timestamps of audit checkpoints (processors/timestamps.py): off unless a TSA is named.
    audit_tsa_url: str | None = Field(None, description="RFC 3161 timestamping authority the processors have their newest "
                                                        "audit checkpoint timestamped by (unset: no timestamps)")
    audit_writer: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{1,48}$",
                                     description="A stable audit writer id for this processor (a StatefulSet's pod name): "
                                     "with a fresh data directory its writer state is rebuilt from audit.checkpoints, so a "
                                     "rescheduled pod continues its chain (workers of one process take <id>, <id>.1, ...)")
    audit_tsa_interval_s: float = Field(60.0, gt=0, description="How often a processor has its newest checkpoint timestamped")
    audit_tsa_timeout_s: float = Field(10.0, gt=0, description="How long a timestamp request may take before it is retried next interval")
    audit_tsa_cert_file: Path | None = Field(None, description="PEM certificates trusted for timestamps: the TSA's root, "
                                                               "optionally its own certificate (pinned) and intermediates; "
                                                               "processors check tokens with them, `audit verify` too (or --tsa-cert)")

    # Files
    data_dir: Path = Field(Path("./.backbone"), description="Where embedded parts keep data and logs")
    # Which role this process runs as, and so which keys it holds (backbone.keys.roles): processor
    # (domain, encryption and checkpoint signing keys), operator (its signing key only), oversight
    # (re-identification and the oversight domain). Unset: one keyring with every key (one-person embedded use).
    role: Literal["processor", "operator", "oversight"] | None = Field(
        None, description="Role this process runs as: processor, operator or oversight (unset: every key in one keyring)")
    keyring_path: Path | None = Field(None, description="Encrypted keyring file (default <data dir>/<role>.keyring, "
                                                        "or <data dir>/keyring.json without a role)")
    master_key: SecretStr | None = Field(None, description="Master key that encrypts the keyring (base64)")
    master_key_file: Path | None = None
    # Where keys live: `file` (the keyring above) or `pkcs11` (a token: HSM, cloud KMS, SoftHSM2)
    key_provider: Literal["file", "pkcs11"] = Field("file", description="Key provider: file (keyring) or pkcs11 (keys in a token)")
    pkcs11_module: Path | None = Field(None, description="The PKCS#11 library (.so) of the HSM (SoftHSM2: /usr/lib/softhsm/libsofthsm2.so)")
    pkcs11_token_label: str | None = Field(None, description="Label of the token holding the backbone's keys")
    pkcs11_pin: SecretStr | None = Field(None, description="The token's user PIN (prefer BACKBONE_PKCS11_PIN_FILE)")
    pkcs11_pin_file: Path | None = Field(None, description="A file holding the token's user PIN")
    subject_key_secret: SecretStr | None = Field(
        None, description="HMAC secret for the keyed hash of subject ids in topic keys (default: <data dir>/subject-key.secret)"
    )
    schemas_dir: Path = PROJECT_ROOT / "schemas"
    agreements_dir: Path = PROJECT_ROOT / "agreements"

    # Embedded broker
    broker_port: int = Field(9092, ge=0, le=65535, description="Port of the embedded broker (0: a free one)")
    embedded_broker: Literal["tansu", "disk"] = Field(
        "disk", description="The embedded broker: disk (backbone.broker: segments on disk, retention; the default) or tansu "
        "(memory, keeps everything until it stops)")
    embedded_broker_retention_hours: float = Field(
        168.0, gt=0, description="The disk broker's retention of topics that set no retention.ms of their own (a week, as Kafka's)")

    # Prometheus metrics (backbone.telemetry.metrics) and the web console (`backbone console`)
    metrics_port: int = Field(0, ge=0, le=65535, description="Port of this process's Prometheus /metrics endpoint (0: none)")
    metrics_host: str = Field("127.0.0.1", description="Address the metrics endpoint binds (0.0.0.0 for a scraper in another pod)")
    console_port: int = Field(8090, ge=0, le=65535, description="Port of `backbone console`")
    console_host: str = Field("127.0.0.1", description="Address `backbone console` binds")
    console_operator_password: SecretStr | None = Field(None, description="Password of the console's `operator` user (role operator)")
    console_oversight_password: SecretStr | None = Field(None, description="Password of the console's `oversight` user (role oversight)")
    console_handlers: dict[str, SecretStr] = Field(
        default_factory=dict, description="The agencies' grievance handlers in the console, JSON: {\"name@agency\": \"password\"}; "
        "each sees and works only its agency's grievances")
    console_public_url: str | None = Field(None, description="URL browsers reach the console at, when a proxy in front ends TLS "
                                                             "(https://...: the session cookie is Secure)")

    # Lineage (backbone.catalog, processors/lineage.py): each processor sends an OpenLineage run event
    # when an agreement version comes into force, is suspended or revoked, or expires.
    lineage_transport: Literal["off", "file", "http", "kafka"] = Field(
        "file", description="Where OpenLineage events go: file (JSON lines), http (an OpenLineage API), kafka (a topic), off")
    lineage_file: Path | None = Field(None, description="The file transport's JSON-lines file (default <data dir>/lineage/openlineage.jsonl)")
    lineage_url: str | None = Field(None, description="The http transport's OpenLineage API (Marquez: http://host:5000); "
                                                      "events go to <url>/api/v1/lineage")
    lineage_topic: str = Field("lineage.openlineage",  # = backbone.kafka.topics.LINEAGE_TOPIC, which the ACL plan grants
                               description="The kafka transport's topic, on the backbone's Kafka")
    lineage_namespace: str = Field("backbone", min_length=1, description="OpenLineage namespace of the agreement jobs")

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["text", "json"] = Field("text", description="Log lines as key=value text or one JSON object each")
    # Who is acting, as the deployment knows them (an operator's or oversight officer's account):
    # recorded with every control-plane action. Set by configuration, never taken from $USER.
    identity: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9@._-]{0,127}$", description="Identity recorded with operator actions")

    @field_validator("quality_gate_minutes")
    @classmethod
    def _divides_the_hour(cls, value: int) -> int:
        if 60 % value:
            raise ValueError(f"{value} does not divide the hour; use 1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30 or 60")
        return value

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap_has_ports(cls, value: str) -> str:
        for server in value.split(","):
            host, _, port = server.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"expected host:port[,host:port], got {server.strip()!r}")
        return value

    @field_validator("schema_registry_url")
    @classmethod
    def _registry_is_http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"expected an http:// or https:// URL, got {split_credentials(value)[0]!r}")  # never echo a password
        return value.rstrip("/")

    @field_validator("role", mode="before")
    @classmethod
    def _role_empty_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("audit_tsa_url", "audit_tsa_cert_file", mode="before")
    @classmethod
    def _tsa_empty_is_off(cls, value: Any) -> Any:
        # an empty variable (compose, k8s) leaves timestamps off rather than naming a TSA ""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("audit_tsa_url")
    @classmethod
    def _tsa_is_http(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"expected the TSA's http:// or https:// URL, got {split_credentials(value)[0]!r}")
        return value

    @field_validator("console_public_url")
    @classmethod
    def _console_url_is_http(cls, value: str | None) -> str | None:
        if value is not None and not value.lower().startswith(("http://", "https://")):
            raise ValueError(f"expected the URL browsers open the console at, http:// or https://, got {value!r}")
        return value

    @field_validator("schema_registry_user", "schema_registry_password", "schema_registry_users_file", "schema_registry_auth", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any, info: ValidationInfo) -> Any:
        # compose and k8s forward unset variables as empty strings: treat them as not given.
        if isinstance(value, str) and not value.strip():
            return "basic" if info.field_name == "schema_registry_auth" else None
        return value

    @model_validator(mode="after")
    def _registry_credentials(self) -> Settings:
        url, user, password = split_credentials(self.schema_registry_url)
        if user is not None:
            if self.schema_registry_user not in (None, user) or (
                self.schema_registry_password is not None and self.schema_registry_password.get_secret_value() != password
            ):
                raise ValueError(
                    "BACKBONE_SCHEMA_REGISTRY_URL carries credentials that differ from BACKBONE_SCHEMA_REGISTRY_USER / "
                    "_PASSWORD: give them in one place"
                )
            self.schema_registry_url = url
            self.schema_registry_user, self.schema_registry_password = user, SecretStr(password or "")
        if (self.schema_registry_user is None) != (self.schema_registry_password is None):
            raise ValueError("set BACKBONE_SCHEMA_REGISTRY_USER and BACKBONE_SCHEMA_REGISTRY_PASSWORD together")
        if self.schema_registry_users_file is None:
            self.schema_registry_users_file = self.data_dir / "registry-users.json"
        return self

    @model_validator(mode="after")
    def _defaults_from_data_dir(self) -> Settings:
        if self.clickhouse_dsn is None:
            self.clickhouse_dsn = f"chdb://{(self.data_dir / 'clickhouse').resolve()}"
        if self.keyring_path is None:
            self.keyring_path = self.data_dir / (f"{self.role}.keyring" if self.role else "keyring.json")
        return self

    @property
    def console_over_https(self) -> bool:
        """Whether browsers reach the console over https (its session cookie is then Secure)."""
        return (self.console_public_url or "").lower().startswith("https://")

    def schema_registry_credentials(self) -> tuple[str, str] | None:
        """(user, password) the backbone's registry clients send, if configured."""
        if self.schema_registry_user is None or self.schema_registry_password is None:
            return None
        return self.schema_registry_user, self.schema_registry_password.get_secret_value()

    def schema_registry_url_with_credentials(self) -> str:
        """The registry URL with `user:password@` (percent-encoded), for clients that only take a URL
        (ClickHouse's `format_avro_schema_registry_url`). Never log it."""
        credentials = self.schema_registry_credentials()
        if credentials is None:
            return self.schema_registry_url
        scheme, _, rest = self.schema_registry_url.partition("://")
        user, password = (quote(part, safe="") for part in credentials)
        return f"{scheme}://{user}:{password}@{rest}"

    def kafka_config(self, **overrides: Any) -> dict[str, Any]:
        """librdkafka settings common to every client (bootstrap, security), plus `overrides`."""
        config: dict[str, Any] = {
            "bootstrap.servers": self.kafka_bootstrap,
            "security.protocol": self.kafka_security_protocol,
            "logger": RDKAFKA_LOGGER,
        }
        if self.kafka_sasl_mechanism:
            config["sasl.mechanism"] = self.kafka_sasl_mechanism
            config["sasl.username"] = self.kafka_sasl_username or ""
            config["sasl.password"] = self.kafka_sasl_password.get_secret_value() if self.kafka_sasl_password else ""
        if self.kafka_ssl_ca_location:
            config["ssl.ca.location"] = str(self.kafka_ssl_ca_location)
        config.update(overrides)
        return config

    def producer_config(self, **overrides: Any) -> dict[str, Any]:
        """Idempotent, acks=all producer tuned for throughput; `overrides` win."""
        tuned: dict[str, Any] = {
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": self.producer_linger_ms,
            "batch.size": self.producer_batch_size,
            "compression.type": self.producer_compression,
            "message.timeout.ms": int(self.kafka_timeout_s * 1000) * 3,
        }
        return self.kafka_config(**{**tuned, **overrides})

    def consumer_config(self, group_id: str | None, **overrides: Any) -> dict[str, Any]:
        """A consumer with manual commits; `group_id=None` for partition-assigned readers."""
        config = self.kafka_config(
            **{
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "session.timeout.ms": self.consumer_session_timeout_ms,
                "heartbeat.interval.ms": self.consumer_heartbeat_interval_ms,
            }
        )
        config["group.id"] = group_id or "backbone-reader"
        config.update(overrides)
        return config


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """`http://user:password@host:port` -> (`http://host:port`, user, password), percent-decoded;
    (url, None, None) when the URL carries no user."""
    parts = urlsplit(url)
    if parts.username is None:
        return url, None, None
    host = parts.netloc.rpartition("@")[2]
    plain = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return plain, unquote(parts.username), unquote(parts.password) if parts.password is not None else None


def _describe(error: ValidationError) -> str:
    problems = []
    for item in error.errors():
        name = ENV_PREFIX + "_".join(str(part) for part in item["loc"]).upper()
        if not item["loc"]:
            name = "settings"
        problems.append(f"{name}: {item['msg']}")
    return "invalid configuration: " + "; ".join(problems)


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment; invalid values raise `SettingsError` naming the variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None
    except PydanticSettingsError as exc:  # a mapping or list variable that is not JSON (BACKBONE_CONSOLE_HANDLERS)
        raise SettingsError(f"{exc}: that variable takes JSON, e.g. BACKBONE_CONSOLE_HANDLERS='{{\"alice@tax\": \"...\"}}'") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings for this process, read once."""
    return load_settings()
