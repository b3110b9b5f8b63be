"""Structured logs: one JSON line per event on stderr, with secrets scrubbed.

Every record passes through `JsonFormatter`, which masks the values of sensitive query
parameters and headers in URLs and any string that looks like a bearer/basic credential;
task-specific secrets never reach a log call in the first place (the runner logs only
redacted messages)."""

from __future__ import annotations

import json
import logging
import re
import sys
import time

from engine import Redactor

_REDACTOR = Redactor()
_CREDENTIAL = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=\-]{6,}")
_URL = re.compile(r"https?://[^\s\"'<>]+")


def scrub(text: str) -> str:
    text = _URL.sub(lambda m: _REDACTOR.url(m.group(0)), text)
    return _CREDENTIAL.sub(lambda m: f"{m.group(1)} ***", text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if fields:
            entry["event"] = record.getMessage()
            entry.update(fields)
        else:
            entry["message"] = record.getMessage()
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return scrub(json.dumps(entry, default=str, separators=(",", ":")))


def configure_logging(level: str) -> None:
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("urllib3", "werkzeug"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


def log_event(event: str, level: int = logging.INFO, **fields) -> None:
    logging.getLogger("pageferry").log(level, event, extra={"fields": fields})
