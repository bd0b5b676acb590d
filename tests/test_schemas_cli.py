"""`backbone schemas ...` as a user runs it, against a registry process of its own on the real broker."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from backbone.events.catalog import default_catalog
from backbone.settings import PROJECT_ROOT
from backbone.stack.embedded import EmbeddedRegistry, free_port
from tests.cli import run_backbone

EVENT_TYPES = sorted(default_catalog().events)


@pytest.fixture(scope="module")
def registry_url(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    topic = f"_schemas.cli.{os.getpid()}.{free_port()}"
    with EmbeddedRegistry(tmp_path_factory.mktemp("cli-registry"), kafka_bootstrap, topic=topic) as registry:
        yield registry.url


def backbone(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    return run_backbone(*args, env={"BACKBONE_SCHEMA_REGISTRY_URL": url}, timeout=60)


@pytest.fixture(scope="module")
def registered(registry_url: str) -> str:
    result = backbone("schemas", "register", url=registry_url)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_register_puts_every_event_schema_under_its_raw_topic_subject(registered: str, registry_url: str) -> None:
    for event_type in EVENT_TYPES:
        assert f"raw.{event_type}-value" in registered
    again = backbone("schemas", "register", url=registry_url)
    assert again.returncode == 0 and again.stdout == registered  # same ids, same versions


def test_register_prints_its_own_output_and_no_library_log_lines(registered: str, registry_url: str) -> None:
    again = backbone("schemas", "register", url=registry_url)
    assert again.returncode == 0 and again.stdout == registered
    assert "level=" not in again.stdout + again.stderr and "HTTP Request" not in again.stdout + again.stderr
    verbose = backbone("-v", "schemas", "register", url=registry_url)  # asked for: the HTTP requests show
    assert verbose.returncode == 0 and "level=INFO" in verbose.stderr and "HTTP Request" in verbose.stderr


def test_list_shows_the_registered_subjects(registered: str, registry_url: str) -> None:
    result = backbone("schemas", "list", url=registry_url)
    assert result.returncode == 0, result.stderr
    for event_type in EVENT_TYPES:
        assert f"raw.{event_type}-value" in result.stdout


def test_show_lists_fields_with_their_tags(registered: str, registry_url: str) -> None:
    result = backbone("schemas", "show", "raw.welfare.benefit_claimed-value", "--version", "1", url=registry_url)
    assert result.returncode == 0, result.stderr
    assert "version 1" in result.stdout
    bank_account = next(line for line in result.stdout.splitlines() if "bank_account" in line)
    assert "PII" in bank_account


def _evolved(tmp_path: Path, change: dict[str, object]) -> Path:
    source = PROJECT_ROOT / "schemas" / "welfare.benefit_claimed.avsc"
    schema = json.loads(source.read_text())
    schema["fields"] = [change if f["name"] == change["name"] or f["name"] == change.get("replaces") else f
                        for f in schema["fields"]]
    for field in schema["fields"]:
        field.pop("replaces", None)
    path = tmp_path / source.name
    path.write_text(json.dumps(schema))
    return path


def test_check_accepts_a_compatible_change(registered: str, registry_url: str, tmp_path: Path) -> None:
    path = _evolved(tmp_path, {"name": "household_size", "type": "long", "doc": "widened"})  # int -> long reads old data
    result = backbone("schemas", "check", str(path), "--subject", "raw.welfare.benefit_claimed-value", url=registry_url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "compatible" in result.stdout


def test_check_refuses_a_rename_and_says_why(registered: str, registry_url: str, tmp_path: Path) -> None:
    path = _evolved(tmp_path, {"name": "household_members", "type": "int", "doc": "renamed", "replaces": "household_size"})
    result = backbone("schemas", "check", str(path), "--subject", "raw.welfare.benefit_claimed-value", url=registry_url)
    assert result.returncode == 1
    assert "incompatible" in result.stdout and "household_members" in result.stdout


def test_unreachable_registry_is_one_line_naming_the_url(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = backbone("schemas", "list", url=url)
    assert result.returncode == 1
    assert url in result.stderr and "backbone up" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
