"""Structured logs: one JSON line per event on stderr, with secrets scrubbed.

Every record, at every level, passes through `scrub`: `JsonFormatter` scrubs the whole JSON
line, and `ScrubFilter` scrubs records handled elsewhere (gunicorn's own error log). It masks
the values of sensitive query parameters (signed-link `sig` included) and URL passwords, bearer/
basic credentials, AWS signatures (`Credential=`, `Signature=`, `X-Amz-Security-Token`) and AWS
access key ids. Task-specific secrets never reach a log call in the first place (the runner logs
only redacted messages), and the libraries that dump requests with their credentials at DEBUG
(botocore, boto3, s3transfer, urllib3, google-auth) log at WARNING or above whatever LOG_LEVEL
says."""

from __future__ import annotations

import json
import logging
import re
import sys
import time

from engine import Redactor

_REDACTOR = Redactor()
_CREDENTIAL = re.compile(r"(?i)\b(bearer|basic|aws4-hmac-sha256)\s+[A-Za-z0-9._~+/=\-]{6,}")
_URL = re.compile(r"(?:https?|wss?)://[^\s\"'<>]+")
# a password in any other URL (postgresql://, redis://, …): the settings' DSNs
_URL_PASSWORD = re.compile(r"\b([a-z][a-z0-9+.-]*://[^\s:/@\"'<>]*:)[^\s@/\"'<>]+@", re.IGNORECASE)
_AWS_FIELD = re.compile(
    r"(?i)\b(credential|signature|x-amz-security-token|x-amz-signature|x-amz-credential|sig)([=:]\s*|\\?[\"']:\s*\\?[\"'])[^\s,&;\"'\\]+"
)
_AWS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|ABIA|ACCA)[A-Z0-9]{12,}\b")
# loggers that dump whole requests (headers included) at DEBUG
QUIET_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3", "werkzeug", "google.auth", "google.resumable_media")


def scrub(text: str) -> str:
    text = _URL.sub(lambda m: _REDACTOR.url(m.group(0)), text)
    text = _URL_PASSWORD.sub(lambda m: f"{m.group(1)}***@", text)
    text = _CREDENTIAL.sub(lambda m: f"{m.group(1)} ***", text)
    text = _AWS_FIELD.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)
    return _AWS_KEY_ID.sub("***", text)


class ScrubFilter(logging.Filter):
    """Scrubs a record's message in place, for handlers whose formatter is not ours."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed format string: leave it to the handler's own error path
            return True
        record.msg, record.args = scrub(message), None
        return True


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
    for noisy in QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    for name in ("gunicorn.error", "gunicorn.access"):  # gunicorn's handlers, with its own format
        for other in logging.getLogger(name).handlers:
            if not any(isinstance(f, ScrubFilter) for f in other.filters):
                other.addFilter(ScrubFilter())


def log_event(event: str, level: int = logging.INFO, **fields) -> None:
    logging.getLogger("pageferry").log(level, event, extra={"fields": fields})
