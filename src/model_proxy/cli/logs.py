"""Logging to stdout and to a folder (the original's ``./log`` volume), as text or as
JSON lines (``--log-format json``, for Loki, Elasticsearch or journald).

A record's ``extra={"fields": {...}}`` (the request line, audit/request_log.py)
becomes keys of its JSON object.
"""

from __future__ import annotations

import datetime as dt
import logging
import logging.handlers
import os
import sys
from enum import StrEnum
from pathlib import Path

import orjson

LOG_FILE = "model-proxy.log"
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def number(self) -> int:
        return {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}.get(
            self.value, logging.ERROR
        )


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update({key: value for key, value in fields.items() if value is not None})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def setup_logging(
    log_dir: Path | None, *, level: int = logging.INFO, log_format: LogFormat = LogFormat.TEXT
) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if log_dir is not None:
        log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        file_handler = logging.handlers.RotatingFileHandler(
            log_dir / LOG_FILE, maxBytes=50 * 1024 * 1024, backupCount=5, encoding="utf-8"
        )
        # The log names every study and series: an older file made 0644 is tightened
        # too (new ones are 0600 from the umask serve sets).
        os.chmod(log_dir / LOG_FILE, 0o600)
        handlers.append(file_handler)
    formatter = JsonFormatter() if log_format is LogFormat.JSON else logging.Formatter(_FORMAT)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(level)
    # httpx logs every request URL at INFO; keep that for --log-level debug.
    quiet = logging.DEBUG if level <= logging.DEBUG else logging.WARNING
    logging.getLogger("httpx").setLevel(quiet)
    logging.getLogger("httpcore").setLevel(quiet)
