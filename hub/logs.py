"""Logging helpers: nothing secret reaches a log line.

Browsers pass credentials as `?token=` on the stream URLs, and uvicorn writes request paths
with their query strings into its access log and its "WebSocket ... [accepted]" line; httpx
logs outbound URLs, whose `hash=` (AntRing) lets anyone who reads it replay the request. The
filter below rewrites every record that goes through the hub's log handlers.
"""

from __future__ import annotations

import logging
import re

__all__ = ["RedactSecrets", "redact"]

_SECRET_PARAM = re.compile(r"((?:^|[?&\s\"'])(?:token|access_token|api_key|key|secret|hash|signature|sig)=)[^&\s\"']+", re.IGNORECASE)
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
REDACTED = "REDACTED"


def redact(text: str) -> str:
    return _BEARER.sub(rf"\g<1>{REDACTED}", _SECRET_PARAM.sub(rf"\g<1>{REDACTED}", text))


class RedactSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True
