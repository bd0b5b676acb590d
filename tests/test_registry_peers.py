"""The registry against real clients' own test suites: confluent-kafka-python's schema registry
integration tests and python-schema-registry-client's tests, vendored unchanged (but for the
cluster fixture) in `../shared/vendor/peer-registry-tests` (`BACKBONE_PEER_REGISTRY_TESTS` elsewhere).

Each suite is copied to a temporary directory and run by pytest in a child process, from a virtual
environment of its own (its clients and test tools; cached under `.backbone/peer-venvs/`, built
from PyPI the first time), against a fresh embedded broker and registry that authenticates every
request: the suites connect as the registry's admin. Only the tests in `DESELECTED` are left out,
each with its reason; every other test of both suites must pass.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from backbone.settings import PROJECT_ROOT
from backbone.stack.embedded import EmbeddedStack
from tests.cli import clean_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PEERS = Path(os.environ.get("BACKBONE_PEER_REGISTRY_TESTS") or PROJECT_ROOT.parent / "shared" / "vendor" / "peer-registry-tests")
VENVS = PROJECT_ROOT / ".backbone" / "peer-venvs"
INSTALL_TIMEOUT_S = 900  # a first install from PyPI; later runs reuse the cached environment
RUN_TIMEOUT_S = 900  # measured: confluent-kafka-python ~40 s, python-schema-registry-client ~2 min on 2 shared cores


@dataclass(frozen=True)
class Suite:
    folder: str  # under PEERS
    tests: str  # what pytest runs, relative to the copy
    requirements: tuple[str, ...]
    pytest_args: tuple[str, ...]
    environment: Callable[[EmbeddedStack], dict[str, str]]


def _confluent_env(stack: EmbeddedStack) -> dict[str, str]:
    admin = stack.registry.admin  # type: ignore[union-attr]
    return {"BROKERS": stack.broker.bootstrap, "SR_URL": stack.registry.address,  # type: ignore[union-attr]
            "SR_USER_INFO": f"{admin.name}:{admin.password.get_secret_value()}"}


def _python_client_env(stack: EmbeddedStack) -> dict[str, str]:
    admin = stack.registry.admin  # type: ignore[union-attr]
    user, password = (quote(part, safe="") for part in (admin.name, admin.password.get_secret_value()))
    return {"SCHEMA_REGISTRY_URL": stack.registry.address.replace("http://", f"http://{user}:{password}@")}  # type: ignore[union-attr]


SUITES = {
    "confluent-kafka-python": Suite(
        "confluent-kafka-python", "tests/integration/schema_registry",
        ("confluent-kafka[avro,schemaregistry,protobuf,json]==2.15.0", "pytest>=7,<9", "pytest-asyncio", "pytest-timeout",
         "trivup", "googleapis-common-protos"),
        ("--timeout", "120"), _confluent_env,
    ),
    "python-schema-registry-client": Suite(
        "python-schema-registry-client", "tests",
        ("python-schema-registry-client[faust]==2.6.1", "pytest>=7,<9", "pytest-asyncio>=0.21,<0.24", "pytest-mock",
         "dataclasses-avroschema[pydantic,faker]>=0.57,<0.62"),
        ("-o", "asyncio_mode=strict"), _python_client_env,
    ),
}

JSON_SCHEMA = "JSON Schema: out of scope, the registry stores Avro only (it answers 422 42201 saying so)"
PROTOBUF = "Protobuf: out of scope, the registry stores Avro only (it answers 422 42201 saying so)"
INTERNET = "needs internet: sends its request to https://example.com, not to the registry"
CP_7_0_1 = "expects the HTTP 500 of Confluent Platform 7.0.1's registry, from a second cluster we do not run"
_CK = "tests/integration/schema_registry"
_PSRC_SYNC, _PSRC_ASYNC = "tests/client/sync_client", "tests/client/async_client"
_PSRC_JSON_CLIENT = {
    "test_schema_compatibility.py": ("test_json_compatibility", "test_json_compatibility_dataclasses_jsonschema"),
    "test_schema_delete.py": ("test_json_delete_subject",),
    "test_schema_getters.py": ("test_json_getters", "test_json_get_subjects"),
    "test_schema_registration.py": ("test_json_register", "test_json_register_json_data", "test_json_register_with_custom_headers",
                                    "test_json_multi_subject_register", "test_json_dupe_register", "test_json_multi_register",
                                    "test_register_dataclass_json_schema"),
    "test_schema_version.py": ("test_json_version_does_not_exists", "test_json_get_versions", "test_json_check_version",
                               "test_json_delete_version", "test_json_delete_version_does_not_exist"),
}
_PSRC_JSON_SERIALIZER = ("test_json_encode_with_schema_id", "test_json_encode_decode_with_schema_from_json",
                         "test_json_fail_encode_with_schema", "test_json_encode_record_with_schema")

# (suite, test as "path::function", reason): every test not run, in one place. An entry names one
# test function, all of its parameter sets unless it gives one ("function[params]").
DESELECTED: list[tuple[str, str, str]] = [
    *[("confluent-kafka-python", f"{_CK}/{flavour}/test_json_serializers.py::{test}", JSON_SCHEMA)
      for flavour in ("_sync", "_async")
      for test in ("test_json_record_serialization", "test_json_record_serialization_incompatible",
                   "test_json_record_serialization_custom", "test_json_record_deserialization_mismatch",
                   "test_json_reference", "test_json_reference_custom")],
    *[("confluent-kafka-python", f"{_CK}/{flavour}/test_proto_serializers.py::{test}", PROTOBUF)
      for flavour in ("_sync", "_async")
      for test in ("test_protobuf_message_serialization", "test_protobuf_reference_registration",
                   "test_protobuf_deserializer_type_mismatch")],
    *[("confluent-kafka-python", f"{_CK}/{flavour}/test_api_client.py::test_api_get_register_schema_invalid[kafka_cluster_cp_7_0_1-500-500]",
       CP_7_0_1) for flavour in ("_sync", "_async")],
    *[("python-schema-registry-client", f"{folder}/{module}::{test}", JSON_SCHEMA)
      for folder in (_PSRC_SYNC, _PSRC_ASYNC) for module, tests in _PSRC_JSON_CLIENT.items() for test in tests],
    ("python-schema-registry-client", f"{_PSRC_SYNC}/test_schema_version.py::test_json_check_version_dataclasses_jsonschema", JSON_SCHEMA),
    ("python-schema-registry-client", f"{_PSRC_ASYNC}/test_schema_version.py::test_json_check_version_dataclasses_avroschema", JSON_SCHEMA),
    *[("python-schema-registry-client", f"tests/serializer/{module}::{test}", JSON_SCHEMA)
      for module in ("test_message_serializer.py", "test_async_message_serializer.py") for test in _PSRC_JSON_SERIALIZER],
    *[("python-schema-registry-client", f"tests/serializer/test_faust_serializer.py::{test}", JSON_SCHEMA)
      for test in ("test_json_dumps_load_message", "test_json_nested_schema", "test_json_dumps_load_with_register_codec",
                   "test_json_nested_schema_with_register_codec", "test_json_dumps_load_message_dataclasses_json_schema",
                   "test_json_dumps_load_message_union_json_schema")],
    *[("python-schema-registry-client", f"{folder}/test_http_client.py::{test}", INTERNET)
      for folder in (_PSRC_SYNC, _PSRC_ASYNC)
      for test in ("test_override_headers", "test_basic_auth_url", "test_basic_auth_user_info", "test_auth", "test_custom_auth")],
]


def deselected_for(suite: str, test: str) -> str | None:
    """The reason `test` (a collected node id) is left out, or None when it runs."""
    for name, entry, reason in DESELECTED:
        if name == suite and (test == entry or test.startswith(entry + "[")):
            return reason
    return None


def _index_reachable() -> bool:
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    try:
        with urllib.request.urlopen(f"{index}/pip/", timeout=10) as answer:
            return answer.status == 200
    except (OSError, ValueError):
        return False


def suite_python(name: str, suite: Suite) -> Path:
    """The Python of the suite's own virtual environment, built once (under a lock) and cached."""
    digest = hashlib.sha256("\n".join(suite.requirements).encode()).hexdigest()[:10]
    venv = VENVS / f"{name}-{digest}"
    python = venv / "bin" / "python"
    done = venv / ".installed"
    VENVS.mkdir(parents=True, exist_ok=True)
    with open(VENVS / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists():
            return python
        if not _index_reachable():
            pytest.skip(f"PyPI is unreachable: cannot install {name}'s test requirements (set PIP_INDEX_URL to a mirror)")
        shutil.rmtree(venv, ignore_errors=True)
        try:
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
            install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *suite.requirements],
                                     capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.skip(f"installing {name}'s test requirements from PyPI took over {INSTALL_TIMEOUT_S} s")
        if install.returncode != 0:
            pytest.fail(f"pip could not install {name}'s test requirements: {install.stderr.strip().splitlines()[-1:]}")
        done.write_text("\n".join(suite.requirements))
    return python


@dataclass(frozen=True)
class Outcome:
    collected: int
    left_out: dict[str, int]  # reason -> tests deselected for it
    ran: int
    passed: int
    failed: list[str]


def run_suite(name: str, python: Path, stack: EmbeddedStack, workdir: Path) -> Outcome:
    suite = SUITES[name]
    source = PEERS / suite.folder
    copy = workdir / suite.folder
    shutil.copytree(source, copy)
    env = clean_env(suite.environment(stack), PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTHONPATH", None)
    base = [str(python), "-m", "pytest", "-p", "no:cacheprovider", *suite.pytest_args, suite.tests]
    listing = subprocess.run([*base, "--collect-only", "-q"], cwd=copy, env=env, capture_output=True, text=True, timeout=300)
    collected = [line for line in listing.stdout.splitlines() if "::" in line]
    assert collected, f"{name}: nothing collected: {listing.stdout[-800:]} {listing.stderr[-800:]}"
    entries = [entry for suite_name, entry, _ in DESELECTED if suite_name == name]
    stale = [entry for entry in entries if not any(test == entry or test.startswith(entry + "[") for test in collected)]
    assert not stale, f"{name}: DESELECTED names tests the suite no longer has: {stale}"
    left_out: dict[str, int] = {}
    selected = []
    for test in collected:
        reason = deselected_for(name, test)
        if reason is None:
            selected.append(test)
        else:
            left_out[reason] = left_out.get(reason, 0) + 1
    report = workdir / f"{name}.xml"
    try:
        subprocess.run([*base[:-1], "-q", f"--junitxml={report}", *selected], cwd=copy, env=env, capture_output=True,
                       text=True, timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{name}'s suite did not finish within {RUN_TIMEOUT_S} s")
    failed, ran = [], 0
    for case in ET.parse(report).getroot().iter("testcase"):
        ran += 1
        outcome = next((child for child in case if child.tag in {"failure", "error", "skipped"}), None)
        if outcome is not None:
            message = (outcome.get("message") or "")[:200]
            failed.append(f"{case.get('classname')}::{case.get('name')} {outcome.tag}: {message}")
    return Outcome(len(collected), left_out, ran, ran - len(failed), failed)


@pytest.fixture(scope="module")
def peers() -> Path:
    if not PEERS.is_dir():
        pytest.skip(f"the vendored peer suites are not at {PEERS}; set BACKBONE_PEER_REGISTRY_TESTS to their folder")
    return PEERS


@pytest.mark.parametrize("name", sorted(SUITES))
def test_every_avro_test_of_a_real_clients_suite_passes_against_the_registry(
    name: str, peers: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    python = suite_python(name, SUITES[name])
    with EmbeddedStack(tmp_path / "stack") as stack:
        outcome = run_suite(name, python, stack, tmp_path)
    deselected = sum(outcome.left_out.values())
    with capsys.disabled():
        print(f"\n{name}: {outcome.passed} of {outcome.ran} selected tests passed; {deselected} of {outcome.collected} deselected: "
              + "; ".join(f"{count} {reason.split(':')[0]}" for reason, count in outcome.left_out.items()))
    assert outcome.ran == outcome.collected - deselected > 0, "every selected test ran"
    assert not outcome.failed, f"{name}: {len(outcome.failed)} of {outcome.ran} failed:\n" + "\n".join(outcome.failed)
