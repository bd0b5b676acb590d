"""One logging set-up from settings for every process: level from BACKBONE_LOG_LEVEL, lines as
key=value text or JSON from BACKBONE_LOG_FORMAT, the same for the CLI, the registry and Faust."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from backbone.errors import SettingsError
from backbone.settings import PROJECT_ROOT, load_settings
from backbone.telemetry.logs import configure_logging, level_name, worker_logging_config
from tests.cli import run_backbone

# key=value, the value bare or double-quoted with backslash escapes
PAIR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


def parse_text(line: str) -> dict[str, str]:
    pairs = PAIR.findall(line)
    assert " ".join(f"{key}={value}" for key, value in pairs) == line, f"not key=value: {line!r}"
    return {key: json.loads(value) if value.startswith('"') else value for key, value in pairs}


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put the root logger back as it was: these tests configure the process's logging."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    noisy = {name: logging.getLogger(name).level for name in ("httpx", "httpcore")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, value in noisy.items():
        logging.getLogger(name).setLevel(value)


def lines_logged(log_format: str, log_level: str = "INFO", level: str | None = None) -> list[str]:
    stream = io.StringIO()
    configure_logging(load_settings(log_format=log_format, log_level=log_level), level, stream=stream)
    log = logging.getLogger("tests.logging")
    log.debug("debug line")
    log.info('enforcing %d agreements; "quoted" name=value', 4)
    log.warning("agreement %s is now %s", "tax-to-fraud@2", "suspended")
    return stream.getvalue().splitlines()


def test_text_lines_are_key_value_with_time_level_logger_and_message(restore_logging: None) -> None:
    lines = lines_logged("text")
    assert len(lines) == 2  # INFO: the debug line is left out
    first = parse_text(lines[0])
    assert list(first) == ["time", "level", "pid", "logger", "msg"]
    assert first["pid"] == str(os.getpid())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"])
    assert first["level"] == "INFO" and first["logger"] == "tests.logging"
    assert first["msg"] == 'enforcing 4 agreements; "quoted" name=value'
    assert 'msg="agreement tax-to-fraud@2 is now suspended"' in lines[1]  # what the demo waits for


def test_json_lines_are_one_object_each(restore_logging: None) -> None:
    lines = lines_logged("json")
    records = [json.loads(line) for line in lines]
    assert [record["level"] for record in records] == ["INFO", "WARNING"]
    assert records[0]["msg"] == 'enforcing 4 agreements; "quoted" name=value'
    assert set(records[0]) == {"time", "level", "pid", "logger", "msg"}


def test_the_level_comes_from_settings_and_an_explicit_level_wins(restore_logging: None) -> None:
    assert [parse_text(line)["level"] for line in lines_logged("text", "WARNING")] == ["WARNING"]
    assert [parse_text(line)["level"] for line in lines_logged("text", "WARNING", level="debug")] == ["DEBUG", "INFO", "WARNING"]


def test_a_traceback_stays_on_its_line(restore_logging: None) -> None:
    for log_format in ("text", "json"):
        stream = io.StringIO()
        configure_logging(load_settings(log_format=log_format), stream=stream)
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("tests.logging").exception("failed")
        [line] = stream.getvalue().splitlines()
        record = parse_text(line) if log_format == "text" else json.loads(line)
        assert record["msg"] == "failed" and "ValueError: boom" in record["exc"]


def test_configuring_again_replaces_the_handler_instead_of_doubling_lines(restore_logging: None) -> None:
    lines_logged("text")
    assert len(lines_logged("json")) == 2


def test_an_invalid_log_format_is_refused_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKBONE_LOG_FORMAT", "xml")
    with pytest.raises(SettingsError, match="BACKBONE_LOG_FORMAT"):
        load_settings()


def test_log_levels_take_faust_spellings() -> None:
    assert [level_name(name) for name in ("crit", "error", "warn", "info", "debug", "WARNING")] == [
        "CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG", "WARNING"]
    with pytest.raises(SettingsError, match="loud"):
        level_name("loud")


def test_a_faust_worker_logs_in_the_same_format_at_its_own_level(tmp_path: Path, restore_logging: None) -> None:
    from mode.utils.logging import setup_logging  # what a Faust worker runs with its logging_config

    config = worker_logging_config(load_settings(log_format="json"))
    setup_logging(loglevel="WARNING", logfile=str(tmp_path / "worker.log"), logging_config=dict(config))
    logging.getLogger("processors").info("left out at WARNING")
    logging.getLogger("processors").warning("agreement %s is now %s", "tax-to-fraud@2", "active")
    for handler in logging.getLogger().handlers:
        handler.flush()
    [record] = [json.loads(line) for line in (tmp_path / "worker.log").read_text().splitlines()]
    assert record["msg"] == "agreement tax-to-fraud@2 is now active" and record["logger"] == "processors"


def _child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKBONE_")}
    return {**env, "PYTHONPATH": str(PROJECT_ROOT), **extra}


def test_the_registry_process_logs_json_when_asked(tmp_path: Path) -> None:
    # Nothing listens on port 1: the registry logs that it starts, then that Kafka did not answer.
    result = subprocess.run(
        [sys.executable, "-m", "backbone.registry", "--port", "0", "--bootstrap", "127.0.0.1:1"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env=_child_env(BACKBONE_LOG_FORMAT="json", BACKBONE_KAFKA_TIMEOUT_S="1", BACKBONE_DATA_DIR=str(tmp_path / "data"),
                       BACKBONE_SCHEMA_REGISTRY_AUTH="none"),  # no users file here: anonymous, explicitly
    )
    assert result.returncode == 1
    records = [json.loads(line) for line in result.stderr.splitlines()]  # every line is a JSON object
    assert any(r["logger"] == "backbone.registry" and "schema registry" in r["msg"] for r in records)
    assert records[-1]["level"] == "ERROR" and "BACKBONE_KAFKA_BOOTSTRAP" in records[-1]["msg"]


def test_the_backbone_command_refuses_an_invalid_log_format(tmp_path: Path) -> None:
    result = run_backbone("version", env={"BACKBONE_LOG_FORMAT": "xml"}, timeout=60, cwd=tmp_path)
    assert result.returncode == 1
    assert "BACKBONE_LOG_FORMAT" in result.stderr and "Traceback" not in result.stderr
