"""Logging helpers: nothing secret reaches a log line.

Browsers pass credentials as `?token=` on the stream URLs, and uvicorn writes request paths
with their query strings into its access log and its "WebSocket ... [accepted]" line; httpx
logs outbound URLs, whose `hash=` (AntRing) lets anyone who reads it replay the request. The
filter below rewrites every record that goes through the hub's log handlers.

A query parameter's name is matched after percent-decoding, as the server decodes it: the hub
reads `?%74oken=KEY` as `token`, so the log must hide it too.
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import unquote_plus

__all__ = ["RedactSecrets", "QuietFrames", "redact", "SECRET_PARAMS"]

#: Query and form parameter names whose values are credentials (compared lower-case, decoded).
SECRET_PARAMS = frozenset({"token", "access_token", "api_key", "apikey", "key", "secret", "hash", "signature", "sig",
                           "password", "auth_token"})
#: `name=value` after a start, `?`, `&`, `;`, a space or a quote; the name may be percent-encoded.
#: The value runs to the next `&` or space: a credential holding `;` or a quote is hidden whole.
_PARAM = re.compile(r"(?P<lead>^|[?&;\s\"'])(?P<name>[^=&?;\s\"']{1,64})=(?P<value>[^&\s]+)")
#: What is left of a decoded name to compare: `token[]`, `token%00` and `Token ` are all `token`.
_NAME_NOISE = re.compile(r"[^a-z0-9_]")
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
REDACTED = "REDACTED"


def _param(match: re.Match[str]) -> str:
    name = match.group("name")
    if _NAME_NOISE.sub("", unquote_plus(name).lower()) not in SECRET_PARAMS:
        return match.group(0)
    return f"{match.group('lead')}{name}={REDACTED}"


def redact(text: str) -> str:
    if "=" in text:
        text = _PARAM.sub(_param, text)
    if "earer" in text:
        text = _BEARER.sub(rf"\g<1>{REDACTED}", text)
    return text


def _redact_arg(value: Any) -> Any:
    if isinstance(value, (int, float)) or value is None:
        return value  # formatters may need the number (`%d`)
    text = str(value)  # an httpx.URL, say, renders its query string
    cleaned = redact(text)
    return value if cleaned == text else cleaned


class QuietFrames(logging.Filter):
    """Drops the websockets library's per-frame debug lines (`< PING …`, `> TEXT …`): at debug
    level a client's ping flood would otherwise write a line per frame."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.DEBUG and record.msg in ("< %s", "> %s"))


class RedactSecrets(logging.Filter):
    """Redacts the message and each string argument, keeping the arguments' shape: uvicorn's
    access-log formatter unpacks exactly five of them, so they may not be folded into the message."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        args = record.args
        if isinstance(args, tuple):
            record.args = tuple(_redact_arg(a) for a in args)
        elif isinstance(args, dict):
            record.args = {k: _redact_arg(v) for k, v in args.items()}
        return True
