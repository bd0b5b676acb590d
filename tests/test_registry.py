"""The schema registry process on the real broker: the Confluent REST API, compatibility levels,
persistence in its topic across restarts, and agreement between two processes."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import pytest
import requests

from backbone.registry.compatibility import LEVELS, incompatibilities, parse_avro
from backbone.stack.embedded import EmbeddedRegistry

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


def record(name: str, *fields: dict) -> dict:
    return {"type": "record", "name": name, "namespace": "test", "fields": list(fields)}


A = {"name": "a", "type": "int"}
A_STRING = {"name": "a", "type": "string"}
B_DEFAULT = {"name": "b", "type": "string", "default": "x"}
B = {"name": "b", "type": "string"}
RENAMED = {"name": "renamed", "type": "int"}


class Registry:
    """A thin HTTP client for the tests: returns (status, JSON body)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def call(self, method: str, path: str, body: object | None = None, raw: str | None = None) -> tuple[int, object]:
        data = raw if raw is not None else (json.dumps(body) if body is not None else None)
        answer = requests.request(method, self.url + path, data=data, headers={"Content-Type": CONTENT_TYPE}, timeout=15)
        assert answer.headers["Content-Type"].startswith(CONTENT_TYPE)
        return answer.status_code, answer.json()

    def register(self, subject: str, schema: dict) -> tuple[int, object]:
        return self.call("POST", f"/subjects/{subject}/versions", {"schema": json.dumps(schema)})

    def schema_id(self, subject: str, schema: dict) -> int:
        status, body = self.register(subject, schema)
        assert status == 200, body
        return body["id"]  # type: ignore[index]


@pytest.fixture(scope="module")
def registry(schema_registry_url: str) -> Registry:
    return Registry(schema_registry_url)


@pytest.fixture
def subject(unique: str) -> str:
    return f"raw.test.{unique}-value"


# -- compatibility levels (the checker, no I/O) ------------------------------------------------

EVOLUTIONS = {
    # name: (old, new, {level prefix: compatible})
    "added field with default": (record("R", A), record("R", A, B_DEFAULT), {"BACKWARD": True, "FORWARD": True, "FULL": True}),
    "removed field": (record("R", A, B), record("R", A), {"BACKWARD": True, "FORWARD": False, "FULL": False}),
    "changed type": (record("R", A), record("R", A_STRING), {"BACKWARD": False, "FORWARD": False, "FULL": False}),
    "renamed without alias": (record("R", A), record("R", RENAMED), {"BACKWARD": False, "FORWARD": False, "FULL": False}),
}


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("evolution", EVOLUTIONS)
def test_each_level_accepts_or_refuses_each_evolution(level: str, evolution: str) -> None:
    old, new, verdicts = EVOLUTIONS[evolution]
    expected = True if level == "NONE" else verdicts[level.removesuffix("_TRANSITIVE")]
    reasons = incompatibilities(parse_avro(json.dumps(new)).parsed(), [(1, parse_avro(json.dumps(old)).parsed())], level)
    assert (not reasons) is expected, reasons


def test_transitive_levels_check_every_version_not_only_the_latest() -> None:
    v1, v2, v3 = record("R", A), record("R", A, B_DEFAULT), record("R", A, B)
    history = [(1, parse_avro(json.dumps(v1)).parsed()), (2, parse_avro(json.dumps(v2)).parsed())]
    candidate = parse_avro(json.dumps(v3)).parsed()
    assert incompatibilities(candidate, history, "BACKWARD") == []
    reasons = incompatibilities(candidate, history, "BACKWARD_TRANSITIVE")
    assert len(reasons) == 1 and reasons[0].startswith("version 1")


# -- the REST API ------------------------------------------------------------------------------

def test_same_schema_gets_the_same_id_in_any_subject(registry: Registry, subject: str) -> None:
    schema = record("Same", A)
    first = registry.schema_id(subject, schema)
    assert registry.schema_id(subject, schema) == first
    # Key order and whitespace do not make another schema.
    reordered = json.loads(json.dumps(schema, sort_keys=True))
    assert registry.schema_id(subject + "-other", reordered) == first
    assert registry.call("GET", f"/subjects/{subject}/versions")[1] == [1]
    assert registry.schema_id(subject + "-third", record("Different", A)) != first


def test_versions_are_listed_and_served_by_number_and_latest(registry: Registry, subject: str) -> None:
    v1, v2 = record("R", A), record("R", A, B_DEFAULT)
    id1, id2 = registry.schema_id(subject, v1), registry.schema_id(subject, v2)

    assert subject in registry.call("GET", "/subjects")[1]  # type: ignore[operator]
    assert registry.call("GET", f"/subjects/{subject}/versions") == (200, [1, 2])
    status, latest = registry.call("GET", f"/subjects/{subject}/versions/latest")
    assert status == 200 and latest["version"] == 2 and latest["id"] == id2  # type: ignore[index]
    assert json.loads(latest["schema"]) == v2  # type: ignore[index]
    assert registry.call("GET", f"/subjects/{subject}/versions/1")[1]["id"] == id1  # type: ignore[index]
    assert registry.call("GET", f"/subjects/{subject}/versions/1/schema") == (200, v1)
    assert registry.call("GET", f"/schemas/ids/{id1}/schema") == (200, v1)
    assert json.loads(registry.call("GET", f"/schemas/ids/{id2}")[1]["schema"]) == v2  # type: ignore[index]
    assert registry.call("GET", f"/schemas/ids/{id2}/subjects") == (200, [subject])
    assert registry.call("GET", f"/schemas/ids/{id2}/versions") == (200, [{"subject": subject, "version": 2}])
    assert registry.call("GET", "/schemas/types") == (200, ["AVRO"])


def test_lookup_finds_a_registered_schema_and_only_that(registry: Registry, subject: str) -> None:
    schema = record("R", A)
    schema_id = registry.schema_id(subject, schema)
    status, found = registry.call("POST", f"/subjects/{subject}", {"schema": json.dumps(schema)})
    assert status == 200 and (found["id"], found["version"], found["subject"]) == (schema_id, 1, subject)  # type: ignore[index]
    status, body = registry.call("POST", f"/subjects/{subject}", {"schema": json.dumps(record("Other", A))})
    assert (status, body["error_code"]) == (404, 40403)  # type: ignore[index]


def test_incompatible_registration_is_refused_with_409(registry: Registry, subject: str) -> None:
    registry.schema_id(subject, record("R", A))
    status, body = registry.register(subject, record("R", A_STRING))
    assert status == 409 and body["error_code"] == 409  # type: ignore[index]
    assert registry.call("GET", f"/subjects/{subject}/versions")[1] == [1]


def test_compatibility_endpoint_gives_the_verdict_and_reasons(registry: Registry, subject: str) -> None:
    registry.schema_id(subject, record("R", A))
    path = f"/compatibility/subjects/{subject}/versions/latest?verbose=true"
    status, body = registry.call("POST", path, {"schema": json.dumps(record("R", RENAMED))})
    assert status == 200 and body["is_compatible"] is False  # type: ignore[index]
    assert any("renamed" in message for message in body["messages"])  # type: ignore[index]
    assert registry.call("POST", path, {"schema": json.dumps(record("R", A, B_DEFAULT))})[1] == {
        "is_compatible": True, "messages": []
    }


def test_subject_level_overrides_the_global_level(registry: Registry, subject: str) -> None:
    registry.schema_id(subject, record("R", A, B))
    assert registry.call("GET", "/config")[1] == {"compatibilityLevel": "BACKWARD"}
    assert registry.call("GET", f"/config/{subject}")[1]["error_code"] == 40408  # type: ignore[index]
    assert registry.call("PUT", f"/config/{subject}", {"compatibility": "FORWARD"}) == (200, {"compatibility": "FORWARD"})
    assert registry.call("GET", f"/config/{subject}") == (200, {"compatibilityLevel": "FORWARD"})

    assert registry.register(subject, record("R", A))[0] == 409  # removing b breaks FORWARD
    assert registry.call("PUT", f"/config/{subject}", {"compatibility": "NONE"})[0] == 200
    assert registry.register(subject, record("R", A_STRING))[0] == 200
    assert registry.call("DELETE", f"/config/{subject}") == (200, {"compatibilityLevel": "NONE"})
    assert registry.call("GET", f"/config/{subject}?defaultToGlobal=true") == (200, {"compatibilityLevel": "BACKWARD"})


def test_unknown_compatibility_level_is_42203(registry: Registry, subject: str) -> None:
    status, body = registry.call("PUT", f"/config/{subject}", {"compatibility": "SIDEWAYS"})
    assert (status, body["error_code"]) == (422, 42203)  # type: ignore[index]


def test_soft_and_permanent_deletes(registry: Registry, subject: str, unique: str) -> None:
    name = f"Deleted{unique}"  # a schema no other test registers, so deleting this subject removes it
    v1 = registry.schema_id(subject, record(name, A))
    registry.schema_id(subject, record(name, A, B_DEFAULT))

    assert registry.call("DELETE", f"/subjects/{subject}/versions/2?permanent=true")[1]["error_code"] == 40407  # type: ignore[index]
    assert registry.call("DELETE", f"/subjects/{subject}/versions/2") == (200, 2)
    assert registry.call("GET", f"/subjects/{subject}/versions") == (200, [1])
    assert registry.call("GET", f"/subjects/{subject}/versions?deleted=true") == (200, [1, 2])
    assert registry.call("DELETE", f"/subjects/{subject}/versions/2?permanent=true") == (200, 2)
    assert registry.call("GET", f"/subjects/{subject}/versions?deleted=true") == (200, [1])

    assert registry.call("DELETE", f"/subjects/{subject}?permanent=true")[1]["error_code"] == 40405  # type: ignore[index]
    assert registry.call("DELETE", f"/subjects/{subject}") == (200, [1])
    assert subject not in registry.call("GET", "/subjects")[1]  # type: ignore[operator]
    assert subject in registry.call("GET", "/subjects?deleted=true")[1]  # type: ignore[operator]
    assert registry.call("GET", f"/subjects/{subject}/versions/1?deleted=true")[1]["id"] == v1  # type: ignore[index]
    assert registry.call("DELETE", f"/subjects/{subject}?permanent=true") == (200, [1])
    assert subject not in registry.call("GET", "/subjects?deleted=true")[1]  # type: ignore[operator]
    assert registry.call("GET", f"/schemas/ids/{v1}")[1]["error_code"] == 40403  # type: ignore[index]
    # Ids are never reused, even after a permanent delete.
    assert registry.schema_id(subject, record("Fresh", A)) > v1


@pytest.mark.parametrize(
    ("method", "path", "raw", "status", "code"),
    [
        ("GET", "/subjects/no.such.subject/versions", None, 404, 40401),
        ("GET", "/subjects/no.such.subject/versions/1", None, 404, 40401),
        ("GET", "/schemas/ids/999999", None, 404, 40403),
        ("GET", "/schemas/ids/not-a-number", None, 404, 40403),
        ("POST", "/subjects/s/versions", "{not json", 422, 42201),
        ("POST", "/subjects/s/versions", '["a list"]', 422, 42201),
        ("POST", "/subjects/s/versions", '{"schema": "{\\"type\\": \\"nonsense\\"}"}', 422, 42201),
        ("POST", "/subjects/s/versions", '{"schema": "not json either"}', 422, 42201),
        ("POST", "/subjects/s/versions", '{"schema": 12}', 422, 42201),
        ("POST", "/subjects/s/versions", '{"schemaType": "PROTOBUF", "schema": "syntax = \\"proto3\\";"}', 422, 42201),
        ("PUT", "/config", "{broken", 422, 42201),
    ],
)
def test_bad_requests_get_confluent_error_codes(
    registry: Registry, method: str, path: str, raw: str | None, status: int, code: int
) -> None:
    answer_status, body = registry.call(method, path, raw=raw)
    assert (answer_status, body["error_code"]) == (status, code)  # type: ignore[index]
    assert isinstance(body["message"], str) and body["message"]  # type: ignore[index]
    # The server is still there.
    assert registry.call("GET", "/subjects")[0] == 200


def test_unknown_and_invalid_versions(registry: Registry, subject: str) -> None:
    registry.schema_id(subject, record("R", A))
    assert registry.call("GET", f"/subjects/{subject}/versions/7")[1]["error_code"] == 40402  # type: ignore[index]
    for bad in ("abc", "0", "-5"):
        status, body = registry.call("GET", f"/subjects/{subject}/versions/{bad}")
        assert (status, body["error_code"]) == (422, 42202)  # type: ignore[index]


# -- what real clients rely on: references, listings, routes, negotiation ----------------------

def address(*extra: dict) -> dict:
    return record("Address", {"name": "street", "type": "string"}, *extra)


def person(name: str = "Person") -> dict:
    # "Address" is a short name: it resolves in the enclosing namespace "test", as Avro says
    return record(name, {"name": "home", "type": "Address"}, {"name": "work", "type": ["null", "test.Address"], "default": None})


def ref(subject: str, version: int = 1) -> dict:
    return {"name": "test.Address", "subject": subject, "version": version}


def test_a_schema_referencing_another_subject_registers_and_is_served_with_its_references(registry: Registry, subject: str) -> None:
    shared = subject.replace("-value", ".address")
    address_id = registry.schema_id(shared, address())
    status, body = registry.call("POST", f"/subjects/{subject}/versions", {"schema": json.dumps(person()), "references": [ref(shared)]})
    assert status == 200, body
    person_id = body["id"]  # type: ignore[index]
    assert person_id != address_id
    status, served = registry.call("GET", f"/schemas/ids/{person_id}")
    assert status == 200 and served["references"] == [ref(shared)] and json.loads(served["schema"]) == person()  # type: ignore[index]
    assert registry.call("GET", f"/subjects/{subject}/versions/1")[1]["references"] == [ref(shared)]  # type: ignore[index]
    status, found = registry.call("POST", f"/subjects/{subject}", {"schema": json.dumps(person()), "references": [ref(shared)]})
    assert status == 200 and found["id"] == person_id  # type: ignore[index]
    assert registry.call("GET", f"/subjects/{shared}/versions/1/referencedby") == (200, [person_id])
    assert registry.call("GET", f"/subjects/{shared}/versions/latest/referencedby/") == (200, [person_id])
    # a referenced version stays while a live schema uses it
    status, body = registry.call("DELETE", f"/subjects/{shared}/versions/1")
    assert (status, body["error_code"]) == (422, 42206)  # type: ignore[index]
    assert registry.call("DELETE", f"/subjects/{subject}") == (200, [1])
    assert registry.call("GET", f"/subjects/{shared}/versions/1/referencedby") == (200, [])
    assert registry.call("DELETE", f"/subjects/{shared}/versions/1") == (200, 1)


def test_a_reference_to_a_version_never_registered_is_refused_with_42201(registry: Registry, subject: str) -> None:
    status, body = registry.call("POST", f"/subjects/{subject}/versions",
                                 {"schema": json.dumps(person()), "references": [ref(subject + ".nothing", 3)]})
    assert (status, body["error_code"]) == (422, 42201)  # type: ignore[index]
    assert "register it first" in body["message"]  # type: ignore[index]


def test_compatibility_is_checked_with_the_referenced_versions(registry: Registry, subject: str) -> None:
    shared = subject.replace("-value", ".address")
    registry.schema_id(shared, address())
    assert registry.call("PUT", f"/config/{shared}", {"compatibility": "NONE"})[0] == 200
    registry.schema_id(shared, record("Address", {"name": "street", "type": "int"}))  # version 2: street changed type
    first = {"schema": json.dumps(person()), "references": [ref(shared, 1)]}
    changed = {"schema": json.dumps(person()), "references": [ref(shared, 2)]}
    assert registry.call("POST", f"/subjects/{subject}/versions", first)[0] == 200
    # the same text with the other version is another schema, and one BACKWARD refuses
    status, verdict = registry.call("POST", f"/compatibility/subjects/{subject}/versions/latest", changed)
    assert status == 200 and verdict == {"is_compatible": False}
    status, body = registry.call("POST", f"/subjects/{subject}/versions", changed)
    assert (status, body["error_code"]) == (409, 409)  # type: ignore[index]
    assert registry.call("POST", f"/compatibility/subjects/{subject}/versions/1", first)[1] == {"is_compatible": True}


def test_list_schemas_filters_by_prefix_deleted_latest_offset_and_limit(registry: Registry, subject: str) -> None:
    prefix = subject.removesuffix("-value")
    one, two = f"{prefix}.one", f"{prefix}.two"
    registry.schema_id(one, record("R", A))
    registry.schema_id(one, record("R", A, B_DEFAULT))
    registry.schema_id(two, record("S", A))

    def listed(query: str) -> list[tuple[str, int]]:
        status, body = registry.call("GET", f"/schemas?subjectPrefix={prefix}{query}")
        assert status == 200
        return [(entry["subject"], entry["version"]) for entry in body]  # type: ignore[union-attr]

    assert listed("") == [(one, 1), (one, 2), (two, 1)]
    assert listed("&latestOnly=true") == [(one, 2), (two, 1)]
    assert listed("&offset=1&limit=1") == [(one, 2)]
    registry.call("DELETE", f"/subjects/{two}")
    assert listed("") == [(one, 1), (one, 2)]
    assert listed("&deleted=true") == [(one, 1), (one, 2), (two, 1)]
    assert all({"subject", "version", "id", "schema"} <= set(e) for e in registry.call("GET", f"/schemas?subjectPrefix={prefix}")[1])  # type: ignore[union-attr]


@pytest.mark.parametrize("path", ["/config/", "/subjects/", "/schemas/types/", "/subjects/{s}/versions/"])
def test_a_trailing_slash_answers_as_without_it(registry: Registry, subject: str, path: str) -> None:
    registry.schema_id(subject, record("R", A))
    with_slash = registry.call("GET", path.replace("{s}", subject))
    assert with_slash == registry.call("GET", path.replace("{s}", subject).rstrip("/"))
    assert with_slash[0] == 200
    assert registry.call("PUT", f"/config/{subject}/", {"compatibility": "FULL"}) == (200, {"compatibility": "FULL"})


def test_subject_names_with_braces_work_percent_encoded(registry: Registry, unique: str) -> None:
    name = f"raw.test.{{{unique}}}-value"
    encoded = quote(name, safe="")
    status, body = registry.call("POST", f"/subjects/{encoded}/versions", {"schema": json.dumps(record("R", A))})
    assert status == 200, body
    assert name in registry.call("GET", "/subjects")[1]  # type: ignore[operator]
    assert registry.call("GET", f"/subjects/{encoded}/versions/1")[1]["subject"] == name  # type: ignore[index]


def test_a_subject_whose_versions_are_all_soft_deleted_is_not_found_and_a_second_soft_delete_is_40406(registry: Registry, subject: str) -> None:
    registry.schema_id(subject, record("R", A))
    assert registry.call("DELETE", f"/subjects/{subject}/versions/1") == (200, 1)
    status, body = registry.call("GET", f"/subjects/{subject}/versions/latest")
    assert (status, body["error_code"]) == (404, 40401)  # type: ignore[index]
    status, body = registry.call("DELETE", f"/subjects/{subject}/versions/1")
    assert (status, body["error_code"]) == (404, 40406)  # type: ignore[index]


def test_compatibility_against_a_missing_version_is_40402_even_without_the_subject(registry: Registry, subject: str) -> None:
    body = {"schema": json.dumps(record("R", A))}
    status, answer = registry.call("POST", f"/compatibility/subjects/{subject}/versions/3", body)
    assert (status, answer["error_code"]) == (404, 40402)  # type: ignore[index]
    assert registry.call("POST", f"/compatibility/subjects/{subject}/versions/latest", body) == (200, {"is_compatible": True})
    registry.schema_id(subject, record("R", A))
    status, answer = registry.call("POST", f"/compatibility/subjects/{subject}/versions/3", body)
    assert (status, answer["error_code"]) == (404, 40402)  # type: ignore[index]


def test_a_primitive_with_a_name_attribute_is_the_primitive(registry: Registry, subject: str) -> None:
    schema_id = registry.schema_id(subject, "string")  # type: ignore[arg-type]
    status, found = registry.call("POST", f"/subjects/{subject}", {"schema": json.dumps({"type": "string", "name": "ignored"})})
    assert status == 200 and found["id"] == schema_id  # type: ignore[index]
    assert registry.schema_id(subject, {"type": "string"}) == schema_id  # type: ignore[arg-type]


@pytest.mark.parametrize(("accept", "answered"), [
    (None, CONTENT_TYPE),
    ("application/json", "application/json"),
    ("application/vnd.schemaregistry+json", "application/vnd.schemaregistry+json"),
    ("text/html, application/json;q=0.5", "application/json"),
    ("*/*", CONTENT_TYPE),
])
def test_answers_in_the_media_type_the_client_accepts(registry: Registry, accept: str | None, answered: str) -> None:
    headers = {"Accept": accept} if accept else {}
    answer = requests.get(registry.url + "/subjects", headers=headers, timeout=15)
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith(answered)


def test_an_unacceptable_media_type_is_406(registry: Registry) -> None:
    answer = requests.get(registry.url + "/subjects", headers={"Accept": "text/html"}, timeout=15)
    assert answer.status_code == 406 and answer.json()["error_code"] == 406


def test_error_answers_come_in_the_accepted_media_type_too(registry: Registry) -> None:
    answer = requests.get(registry.url + "/subjects/no.such.subject/versions", headers={"Accept": "application/json"}, timeout=15)
    assert answer.status_code == 404 and answer.headers["Content-Type"].startswith("application/json")
    assert answer.json()["error_code"] == 40401


@pytest.mark.parametrize("schema_type", ["JSON", "PROTOBUF"])
def test_json_schema_and_protobuf_are_refused_naming_what_is_stored(registry: Registry, subject: str, schema_type: str) -> None:
    status, body = registry.call("POST", f"/subjects/{subject}/versions", {"schemaType": schema_type, "schema": "{}"})
    assert (status, body["error_code"]) == (422, 42201)  # type: ignore[index]
    assert "AVRO schemas only" in body["message"]  # type: ignore[index]
    assert registry.call("GET", "/schemas/types") == (200, ["AVRO"])


# -- persistence and several processes ---------------------------------------------------------

@pytest.fixture
def topic(unique: str) -> str:
    return f"_schemas.test.{unique}"


def _start(tmp_path: Path, kafka_bootstrap: str, topic: str) -> EmbeddedRegistry:
    return EmbeddedRegistry(tmp_path, kafka_bootstrap, topic=topic).start()


@pytest.fixture(scope="module")
def two_registries(
    tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str
) -> Iterator[tuple[Registry, Registry]]:
    """Two registry processes on one topic of their own, shared by this module's tests."""
    topic, directory = f"_schemas.test.{uuid.uuid4().hex[:10]}", tmp_path_factory.mktemp("two")
    first = _start(directory / "a", kafka_bootstrap, topic)
    try:
        second = _start(directory / "b", kafka_bootstrap, topic)
        try:
            yield Registry(first.url), Registry(second.url)
        finally:
            second.stop()
    finally:
        first.stop()


def test_a_restarted_registry_serves_the_same_ids(tmp_path: Path, kafka_bootstrap: str, topic: str) -> None:
    schemas = [record(f"R{n}", A) for n in range(3)]
    first = _start(tmp_path, kafka_bootstrap, topic)
    try:
        client = Registry(first.url)
        client.call("PUT", "/config/s-value", {"compatibility": "NONE"})
        ids = [client.schema_id("s-value", schema) for schema in schemas]
    finally:
        first.stop()

    again = _start(tmp_path, kafka_bootstrap, topic)
    try:
        client = Registry(again.url)
        assert [client.call("GET", f"/schemas/ids/{i}/schema")[1] for i in ids] == schemas
        assert client.call("GET", "/subjects/s-value/versions") == (200, [1, 2, 3])
        assert client.call("GET", "/config/s-value")[1] == {"compatibilityLevel": "NONE"}
        assert [client.schema_id("s-value", schema) for schema in schemas] == ids
        assert client.schema_id("s-value", record("New", A)) == max(ids) + 1
    finally:
        again.stop()


def test_two_registry_processes_agree(two_registries: tuple[Registry, Registry]) -> None:
    a, b = two_registries
    schema_id = a.schema_id("shared-value", record("R", A))
    # b reads what a wrote, and gives the same id to the same schema.
    assert json.loads(b.call("GET", f"/schemas/ids/{schema_id}")[1]["schema"]) == record("R", A)  # type: ignore[index]
    assert b.schema_id("other-value", record("R", A)) == schema_id


def test_racing_registrations_on_two_processes_never_share_an_id(two_registries: tuple[Registry, Registry]) -> None:
    a, b = two_registries
    assert a.call("PUT", "/config", {"compatibility": "NONE"})[0] == 200
    jobs = [(a if n % 2 else b, f"race{n % 3}-value", record(f"Race{n}", A)) for n in range(12)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        ids = list(pool.map(lambda job: job[0].schema_id(job[1], job[2]), jobs))

    assert len(set(ids)) == len(jobs)
    for schema_id, (_, _, schema) in zip(ids, jobs, strict=True):
        assert a.call("GET", f"/schemas/ids/{schema_id}/schema")[1] == schema
        assert b.call("GET", f"/schemas/ids/{schema_id}/schema")[1] == schema
    for name in ("race0-value", "race1-value", "race2-value"):
        assert a.call("GET", f"/subjects/{name}/versions")[1] == [1, 2, 3, 4]


# -- conflict resolution in the log (pure) -----------------------------------------------------

def test_of_two_claims_for_one_id_the_earlier_wins_and_the_id_is_burnt() -> None:
    from backbone.registry.state import RegistryState

    state = RegistryState()
    first = {"subject": "x-value", "version": 1, "id": 1, "schema": json.dumps(record("X", A))}
    rival = {"subject": "y-value", "version": 1, "id": 1, "schema": json.dumps(record("Y", A))}
    state.apply(0, {"keytype": "SCHEMA", "claim": "c1"}, first)
    state.apply(1, {"keytype": "SCHEMA", "claim": "c2"}, rival)

    assert "c1" in state.claims and "c2" not in state.claims
    assert json.loads(state.schemas[1].text)["name"] == "X"
    assert state.subject_names() == ["x-value"]
    assert state.id_for(parse_avro(json.dumps(record("Y", A))).identity) == 2


def test_embedded_registry_refuses_a_taken_port(tmp_path: Path, kafka_bootstrap: str) -> None:
    import socket

    from backbone.errors import EmbeddedError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(EmbeddedError, match=f"port {port}.*BACKBONE_SCHEMA_REGISTRY_PORT"):
            EmbeddedRegistry(tmp_path, kafka_bootstrap, port=port).start()
