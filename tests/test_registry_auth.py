"""The schema registry authenticates every request (HTTP Basic) and authorizes it by role: `read`
(GET), `write` (register under its subject prefixes), `admin` (everything); READONLY mode refuses
writes; anonymous access only when `BACKBONE_SCHEMA_REGISTRY_AUTH=none` says so. Against real
registry child processes on the session's broker."""

from __future__ import annotations

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
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from backbone.registry.roles import Access, Grant, Role
from backbone.registry.users import User, UsersFile
from backbone.settings import PROJECT_ROOT, load_settings
from backbone.stack.embedded import EmbeddedRegistry
from tests.cli import run_backbone

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
READER, WRITER = ("reader", "reader-password-1"), ("tax", "tax-agency-password-1")


def schema(name: str) -> str:
    return json.dumps({"type": "record", "name": name, "namespace": "test", "fields": [{"name": "a", "type": "int"}]})


@dataclass
class Answer:
    status: int
    body: dict | list | int
    headers: dict[str, str]

    @property
    def code(self) -> int | None:
        return self.body.get("error_code") if isinstance(self.body, dict) else None


class Client:
    """Raw HTTP against one registry, as `user` (None: no credentials)."""

    def __init__(self, address: str, user: tuple[str, str] | None) -> None:
        self.address, self.user = address, user

    def call(self, method: str, path: str, body: object | None = None) -> Answer:
        answer = requests.request(method, self.address + path, auth=self.user, timeout=15,
                                  data=None if body is None else json.dumps(body), headers={"Content-Type": CONTENT_TYPE})
        return Answer(answer.status_code, answer.json(), dict(answer.headers))

    def register(self, subject: str, name: str = "R") -> Answer:
        return self.call("POST", f"/subjects/{subject}/versions", {"schema": schema(name)})


@dataclass
class Secured:
    registry: EmbeddedRegistry
    admin: Client
    reader: Client
    writer: Client
    anonymous: Client

    def as_user(self, user: tuple[str, str] | None) -> Client:
        return Client(self.registry.address, user)


@pytest.fixture(scope="module")
def secured(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    """A registry of this module's own (its own topic, so READONLY never reaches other tests), with
    a `read` user and a `write` user for `raw.tax.` added to the users file it was started with."""
    topic = f"_schemas.auth.{uuid.uuid4().hex[:10]}"
    with EmbeddedRegistry(tmp_path_factory.mktemp("auth"), kafka_bootstrap, topic=topic) as registry:
        users = UsersFile(registry.users_path)
        users.put(User.create(READER[0], Grant(Role.READ), READER[1]))
        users.put(User.create(WRITER[0], Grant.parse("write:raw.tax.,raw.consent"), WRITER[1]))
        assert registry.admin is not None
        admin = (registry.admin.name, registry.admin.password.get_secret_value())
        yield Secured(registry, *(Client(registry.address, user) for user in (admin, READER, WRITER, None)))


WRITES = [
    ("POST", "/subjects/raw.tax.income-value/versions", {"schema": schema("R")}),
    ("PUT", "/config", {"compatibility": "NONE"}),
    ("PUT", "/mode", {"mode": "READONLY"}),
    ("DELETE", "/subjects/raw.tax.income-value", None),
    # the same routes with a trailing slash, and with a percent-encoded brace in the subject, are guarded alike
    ("PUT", "/config/", {"compatibility": "NONE"}),
    ("POST", "/subjects/raw.tax.income-value/versions/", {"schema": schema("R")}),
    ("DELETE", "/subjects/raw.tax.%7Bincome%7D-value/", None),
]


# -- authentication ---------------------------------------------------------------------------

@pytest.mark.parametrize(("method", "path", "body"), WRITES)
def test_requests_without_credentials_get_401_with_a_basic_challenge(secured: Secured, method: str, path: str, body: object) -> None:
    answer = secured.anonymous.call(method, path, body)
    assert (answer.status, answer.code) == (401, 40101)
    assert answer.headers["WWW-Authenticate"] == 'Basic realm="backbone-registry"'


def test_reads_need_credentials_too(secured: Secured) -> None:
    assert secured.anonymous.call("GET", "/subjects").status == 401
    assert secured.anonymous.call("GET", "/no/such/route").status == 401  # no probing around the guard


def test_a_wrong_password_gets_401_and_the_answer_never_quotes_it(secured: Secured) -> None:
    for user in ((WRITER[0], "not-the-password-9"), ("nobody", WRITER[1]), (secured.registry.admin.name, WRITER[1])):
        answer = secured.as_user(user).call("GET", "/subjects")
        assert (answer.status, answer.code) == (401, 40101)
        assert user[1] not in json.dumps(answer.body)
    log = secured.registry.log_path.read_text()
    assert "not-the-password-9" not in log and WRITER[1] not in log


@pytest.mark.parametrize("header", ["Bearer abc", "Basic !!!", "Basic " + "bm9jb2xvbg=="])  # the last: "nocolon"
def test_malformed_authorization_headers_get_401(secured: Secured, header: str) -> None:
    answer = requests.get(secured.registry.address + "/subjects", headers={"Authorization": header}, timeout=15)
    assert answer.status_code == 401 and answer.json()["error_code"] == 40101


# -- roles ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("method", "path", "body"), WRITES)
def test_a_read_user_gets_403_on_writes(secured: Secured, method: str, path: str, body: object) -> None:
    answer = secured.reader.call(method, path, body)
    assert (answer.status, answer.code) == (403, 40301)
    assert "reader" in answer.body["message"]  # type: ignore[index]


def test_a_read_user_reads(secured: Secured) -> None:
    schema_id = secured.admin.register("raw.tax.read-value", "Readable").body["id"]  # type: ignore[index]
    assert secured.reader.call("GET", "/subjects").status == 200
    assert secured.reader.call("GET", f"/schemas/ids/{schema_id}").status == 200
    assert secured.reader.call("GET", "/subjects/raw.tax.read-value/versions").body == [1]
    assert secured.reader.call("GET", "/config").status == 200
    assert secured.reader.call("GET", "/mode").body == {"mode": "READWRITE"}


def test_a_write_user_registers_only_under_its_prefixes(secured: Secured) -> None:
    assert secured.writer.register("raw.tax.income_declared-value").status == 200
    assert secured.writer.register("raw.consent-value").status == 200
    outside = secured.writer.register("raw.welfare.benefit_claimed-value")
    assert (outside.status, outside.code) == (403, 40301)
    assert "raw.welfare.benefit_claimed-value" in outside.body["message"]  # type: ignore[index]
    looked_up = secured.writer.call("POST", "/subjects/raw.tax.income_declared-value", {"schema": schema("R")})
    assert looked_up.status == 200
    assert secured.writer.call("POST", "/subjects/raw.welfare.x-value", {"schema": schema("R")}).status == 403
    assert secured.writer.call("POST", "/compatibility/subjects/raw.tax.income_declared-value/versions/latest",
                               {"schema": schema("R")}).body == {"is_compatible": True}


def test_a_write_user_sets_its_own_subjects_level_but_nothing_global_and_deletes_nothing(secured: Secured) -> None:
    secured.writer.register("raw.tax.level-value")
    assert secured.writer.call("PUT", "/config/raw.tax.level-value", {"compatibility": "NONE"}).status == 200
    assert secured.writer.call("PUT", "/config/raw.welfare.level-value", {"compatibility": "NONE"}).status == 403
    for method, path, body in [("PUT", "/config", {"compatibility": "NONE"}), ("PUT", "/mode", {"mode": "READONLY"}),
                               ("DELETE", "/subjects/raw.tax.level-value", None),
                               ("DELETE", "/subjects/raw.tax.level-value/versions/1", None),
                               ("DELETE", "/config/raw.tax.level-value", None)]:
        assert secured.writer.call(method, path, body).status == 403, (method, path)


def test_admin_sets_the_global_level_and_deletes(secured: Secured) -> None:
    assert secured.admin.call("PUT", "/config", {"compatibility": "BACKWARD"}).body == {"compatibility": "BACKWARD"}
    secured.admin.register("raw.police.doomed-value", "Doomed")
    assert secured.admin.call("DELETE", "/subjects/raw.police.doomed-value").body == [1]


def test_readonly_mode_refuses_every_write_until_an_admin_lifts_it(secured: Secured) -> None:
    secured.writer.register("raw.tax.frozen-value")
    assert secured.admin.call("PUT", "/mode", {"mode": "READONLY"}).body == {"mode": "READONLY"}
    try:
        assert secured.reader.call("GET", "/mode").body == {"mode": "READONLY"}
        for who, (method, path, body) in [
            (secured.writer, ("POST", "/subjects/raw.tax.new-value/versions", {"schema": schema("R")})),
            (secured.admin, ("POST", "/subjects/raw.tax.new-value/versions", {"schema": schema("R")})),
            (secured.admin, ("PUT", "/config", {"compatibility": "NONE"})),
            (secured.writer, ("PUT", "/config/raw.tax.frozen-value", {"compatibility": "NONE"})),
            (secured.admin, ("DELETE", "/subjects/raw.tax.frozen-value", None)),
        ]:
            answer = who.call(method, path, body)
            assert (answer.status, answer.code) == (422, 42205), (method, path)
            assert "READONLY" in answer.body["message"]  # type: ignore[index]
        assert secured.reader.call("GET", "/subjects/raw.tax.frozen-value/versions").body == [1]
        assert secured.writer.register("raw.tax.frozen-value").status == 200  # already there: nothing written
        assert secured.writer.call("POST", "/subjects/raw.tax.frozen-value", {"schema": schema("R")}).status == 200
        assert secured.writer.call("PUT", "/mode", {"mode": "READWRITE"}).status == 403  # only admin changes the mode
    finally:
        assert secured.admin.call("PUT", "/mode", {"mode": "READWRITE"}).status == 200
    assert secured.writer.register("raw.tax.new-value").status == 200


def test_an_unknown_mode_is_42204(secured: Secured) -> None:
    answer = secured.admin.call("PUT", "/mode", {"mode": "IMPORT"})
    assert (answer.status, answer.code) == (422, 42204)


# -- clients ------------------------------------------------------------------------------------

def test_confluent_kafka_client_with_basic_auth_user_info_registers_and_reads(secured: Secured) -> None:
    client = SchemaRegistryClient({"url": secured.registry.address, "basic.auth.user.info": ":".join(WRITER)})
    schema_id = client.register_schema("raw.tax.confluent-value", Schema(schema("Confluent"), "AVRO"))
    assert json.loads(client.get_schema(schema_id).schema_str)["name"] == "Confluent"
    assert client.get_latest_version("raw.tax.confluent-value").schema_id == schema_id

    wrong = SchemaRegistryClient({"url": secured.registry.address, "basic.auth.user.info": f"{WRITER[0]}:wrong-password-00"})
    with pytest.raises(SchemaRegistryError) as refused:
        wrong.get_subjects()
    assert refused.value.http_status_code == 401


def test_backbone_clients_send_the_configured_user(secured: Secured) -> None:
    from backbone.events.serde import RegistrySchemas, registry_client

    settings = load_settings(schema_registry_url=secured.registry.address,
                             schema_registry_user=WRITER[0], schema_registry_password=WRITER[1])
    schema_id = RegistrySchemas(registry_client(settings)).register("raw.tax.serde-value", json.loads(schema("Serde")))
    assert secured.reader.call("GET", f"/schemas/ids/{schema_id}").status == 200
    anonymous = load_settings(schema_registry_url=secured.registry.address)
    with pytest.raises(SchemaRegistryError) as refused:
        registry_client(anonymous).get_subjects()
    assert refused.value.http_status_code == 401


def test_user_changes_apply_without_a_restart(secured: Secured) -> None:
    users = UsersFile(secured.registry.users_path)
    temporary = ("temporary", "temporary-password-1")
    users.put(User.create(temporary[0], Grant(Role.READ), temporary[1]))
    assert secured.as_user(temporary).call("GET", "/subjects").status == 200
    users.remove(temporary[0])
    assert secured.as_user(temporary).call("GET", "/subjects").status == 401


# -- the users file -------------------------------------------------------------------------------

def test_the_users_file_holds_hashes_with_their_own_salts_and_no_password(secured: Secured) -> None:
    text = secured.registry.users_path.read_text()
    admin_password = secured.registry.admin.password.get_secret_value()
    assert READER[1] not in text and WRITER[1] not in text and admin_password not in text
    entries = json.loads(text)["users"]
    assert {e["name"] for e in entries} >= {"admin", "backbone", "reader", "tax"}
    assert len({e["scrypt"]["salt"] for e in entries}) == len(entries)
    assert secured.registry.users_path.stat().st_mode & 0o077 == 0


def test_users_cli_adds_lists_and_removes_without_echoing_the_password(tmp_path: Path) -> None:
    users, password_file = tmp_path / "users.json", tmp_path / "password"
    password_file.write_text("cli-user-password-1\n")

    def backbone(*args: str) -> subprocess.CompletedProcess[str]:
        return run_backbone("registry", "users", *args, "--users-file", str(users), timeout=60)

    added = backbone("add", "tax", "--role", "write", "--subjects", "raw.tax.,raw.consent", "--password-file", str(password_file))
    assert added.returncode == 0, added.stderr
    listed = backbone("list")
    assert "tax" in listed.stdout and "raw.tax., raw.consent" in listed.stdout
    assert "cli-user-password-1" not in added.stdout + listed.stdout + users.read_text()
    assert UsersFile(users).read()["tax"].password.matches("cli-user-password-1")
    refused = backbone("add", "tax", "--role", "read", "--password-file", str(password_file))
    assert refused.returncode == 1 and "--replace" in refused.stderr
    assert backbone("remove", "tax").returncode == 0
    assert UsersFile(users).read() == {}


def test_grants_in_their_text_form() -> None:
    grant = Grant.parse("write:raw.tax.,raw.consent")
    assert grant == Grant(Role.WRITE, ("raw.tax.", "raw.consent")) and str(grant) == "write:raw.tax.,raw.consent"
    assert grant.permits(Access.SUBJECT, "raw.tax.income_declared-value")
    assert not grant.permits(Access.SUBJECT, "raw.taxes-value") and not grant.permits(Access.ADMIN, None)
    assert Grant.parse("read").permits(Access.READ, None) and not Grant.parse("read").permits(Access.SUBJECT, "raw.tax.x")
    assert Grant.parse("admin").permits(Access.ADMIN, None)
    for bad in ("write", "read:raw.", "owner", "write: ,"):
        with pytest.raises(ValueError):
            Grant.parse(bad)


# -- settings and start-up ----------------------------------------------------------------------

def test_client_settings_ignore_empty_variables_and_take_credentials_out_of_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("USER", "PASSWORD", "AUTH", "USERS_FILE"):
        monkeypatch.setenv(f"BACKBONE_SCHEMA_REGISTRY_{name}", "")
    settings = load_settings()
    assert settings.schema_registry_credentials() is None and settings.schema_registry_auth == "basic"

    settings = load_settings(schema_registry_url="http://tax:p%40ss%3Aword-1@127.0.0.1:8081/")
    assert settings.schema_registry_url == "http://127.0.0.1:8081"
    assert settings.schema_registry_credentials() == ("tax", "p@ss:word-1")
    assert settings.schema_registry_url_with_credentials() == "http://tax:p%40ss%3Aword-1@127.0.0.1:8081"
    assert "p@ss" not in repr(settings)


def _serve(kafka_bootstrap: str, data_dir: Path, **env: str) -> subprocess.Popen[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("BACKBONE_SCHEMA_REGISTRY")}
    environment.update({"BACKBONE_DATA_DIR": str(data_dir), **env})
    return subprocess.Popen([sys.executable, "-m", "backbone.registry", "--port", "0", "--bootstrap", kafka_bootstrap,
                             "--topic", f"_schemas.auth.{uuid.uuid4().hex[:10]}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment, cwd=PROJECT_ROOT)


@pytest.mark.parametrize("auth", [None, "", "basic"])
def test_basic_auth_without_a_users_file_refuses_to_start_naming_the_setting(kafka_bootstrap: str, tmp_path: Path, auth: str | None) -> None:
    process = _serve(kafka_bootstrap, tmp_path, **({} if auth is None else {"BACKBONE_SCHEMA_REGISTRY_AUTH": auth}))
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 1
    assert "BACKBONE_SCHEMA_REGISTRY_USERS_FILE" in output and "BACKBONE_SCHEMA_REGISTRY_AUTH=none" in output


def test_anonymous_access_only_when_set_explicitly(kafka_bootstrap: str, tmp_path: Path) -> None:
    with EmbeddedRegistry(tmp_path, kafka_bootstrap, topic=f"_schemas.auth.{uuid.uuid4().hex[:10]}", auth="none") as registry:
        assert registry.service is None and not registry.users_path.exists()
        anonymous = Client(registry.address, None)
        assert anonymous.register("anything-value").status == 200
        assert anonymous.call("PUT", "/config", {"compatibility": "NONE"}).status == 200
    assert "anyone who reaches it is admin" in registry.log_path.read_text()
