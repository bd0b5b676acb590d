"""One logging set-up for every backbone process, from settings.

`BACKBONE_LOG_LEVEL` sets the level and `BACKBONE_LOG_FORMAT` the line format:

- `text`: one key=value line per record,
  `time=2026-03-01T12:00:00.123Z level=INFO pid=4242 logger=processors msg="enforcing 4 agreements"`
- `json`: one JSON object per line with the same keys, for log shippers.

The pid tells apart the workers of one deployment (and lets a supervisor find the process behind a log).

The CLI and the schema registry call `configure_logging`; a processor worker hands Faust
`worker_logging_config`, so its lines (and Faust's own) come out the same way. Messages never
carry personal data: callers log field, topic and file names, codes and counts, never values.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any

from backbone.errors import SettingsError
from backbone.settings import Settings

LOG_FORMATS = ("text", "json")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Faust's `worker -l` spells levels crit, error, warn, info, debug.
_ALIASES = {"CRIT": "CRITICAL", "WARN": "WARNING", "FATAL": "CRITICAL"}
# Libraries that log every request at INFO (httpx: one line per schema fetch): WARNING unless DEBUG.
NOISY_LOGGERS = ("httpx", "httpx2", "httpcore")


def level_name(level: str) -> str:
    """`info`, `warn`, `WARNING`, `crit` ... -> the logging level name; refuses anything else."""
    name = _ALIASES.get(level.strip().upper(), level.strip().upper())
    if name not in LEVELS:
        raise SettingsError(f"unknown log level {level!r}; one of {', '.join(level.lower() for level in LEVELS)}")
    return name


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"


def _fields(formatter: logging.Formatter, record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {"time": _timestamp(record), "level": record.levelname, "pid": record.process,
                              "logger": record.name, "msg": record.getMessage()}
    if record.exc_info:
        fields["exc"] = formatter.formatException(record.exc_info)
    if record.stack_info:
        fields["stack"] = formatter.formatStack(record.stack_info)
    return fields


_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"})


def _value(text: str, quote: bool) -> str:
    if quote or not text or any(c in text for c in ' "=\\\n\r\t'):
        return '"' + text.translate(_ESCAPES) + '"'
    return text


class TextFormatter(logging.Formatter):
    """`key=value` lines; `msg` is always quoted, other values when they hold spaces or quotes."""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{key}={_value(str(value), key in ('msg', 'exc', 'stack'))}"
                        for key, value in _fields(self, record).items())


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, pid, logger, msg (and exc when there is a traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(self, record), ensure_ascii=False)


FORMATTERS: dict[str, type[logging.Formatter]] = {"text": TextFormatter, "json": JsonFormatter}


def formatter(log_format: str) -> logging.Formatter:
    """The formatter for `text` or `json`."""
    try:
        return FORMATTERS[log_format]()
    except KeyError:
        raise SettingsError(f"BACKBONE_LOG_FORMAT: expected one of {', '.join(LOG_FORMATS)}, got {log_format!r}") from None


class _Handler(logging.StreamHandler):
    """The backbone's root handler: writes to `stream`, or to whatever `sys.stderr` is when it
    writes (so redirections made later, by pytest or a daemon wrapper, are honoured)."""

    def __init__(self, stream: IO[str] | None) -> None:
        super().__init__(stream)
        self._fixed = stream

    @property
    def stream(self) -> IO[str]:  # type: ignore[override]
        return self._fixed if self._fixed is not None else sys.stderr

    @stream.setter
    def stream(self, value: IO[str] | None) -> None:
        self._fixed = value


def configure_logging(settings: Settings, level: str | None = None, stream: IO[str] | None = None) -> None:
    """Send every log record of this process through one handler in `settings.log_format`, at
    `level` (default `settings.log_level`), to `stream` (default stderr). Calling it again replaces
    the handler it installed before; handlers others installed stay."""
    name = level_name(level or settings.log_level)
    handler = _Handler(stream)
    handler.setFormatter(formatter(settings.log_format))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(name)
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel("DEBUG" if name == "DEBUG" else "WARNING")


def worker_logging_config(settings: Settings, level: str | None = None) -> dict[str, Any]:
    """A `logging.config.dictConfig` for a Faust worker (`faust.App(logging_config=...)`).

    Faust builds its handlers from `worker -l LEVEL`; with `merge` this replaces only their
    formatters (Faust's `default` and `colored`) by the backbone's, so `-l` still sets the level.
    """
    formatter(settings.log_format)  # refuses an unknown format, naming the variable
    name = level_name(level or settings.log_level)
    ours = {"()": f"{__name__}.{FORMATTERS[settings.log_format].__name__}"}
    return {
        "version": 1,
        "merge": True,
        "disable_existing_loggers": False,
        "formatters": {"default": ours, "colored": ours},
        "loggers": {noisy: {"level": "DEBUG" if name == "DEBUG" else "WARNING"} for noisy in NOISY_LOGGERS},
    }
