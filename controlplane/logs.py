"""Logging filters: the request id on every record, and secrets scrubbed from every message."""

from __future__ import annotations

import logging
import re

from controlplane.requestid import current_request_id

# Anything shaped like one of our secrets, a JWT, or a bearer/OAuth credential.
SECRET_PATTERNS = re.compile(
    r"tp_(?:cs|us|wh)_[A-Za-z0-9_-]+"
    r"|eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"
    r"|(?i:bearer)\s+[A-Za-z0-9._~+/=-]+"
    r"|oauth_(?:token|token_secret|signature|verifier)=[^&\s\"',]+"
)
REDACTED = "[redacted]"


def redact(text: str) -> str:
    return SECRET_PATTERNS.sub(REDACTED, text)


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", None):
            record.request_id = current_request_id.get() or None
        return True


class RedactSecretsFilter(logging.Filter):
    """Formats the message once, scrubs it, and drops the arguments so nothing re-expands."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = str(record.msg)
        record.msg = redact(message)
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True
