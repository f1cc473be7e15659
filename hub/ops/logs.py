"""Logging helpers: nothing secret reaches a log line; every line can say which request it belongs to.

Browsers pass credentials as `?token=` on the stream URLs, and uvicorn writes request paths
with their query strings into its access log and its "WebSocket ... [accepted]" line; httpx
logs outbound URLs, whose `hash=` (AntRing) lets anyone who reads it replay the request. The
filter below rewrites every record that goes through the hub's log handlers.

A query parameter's name is matched after percent-decoding, as the server decodes it: the hub
reads `?%74oken=KEY` as `token`, so the log must hide it too. Phone numbers (9 to 15 digits) keep
only their last 3 digits unless `[log] phone_numbers = "full"`.

`JsonFormatter` writes one JSON object per line: `time`, `level`, `logger`, `message`,
`request_id` (`hub.tracing`), the exception if any, and every `extra={...}` field a line carries
(`event_id`, `seq`, `subscription`, `vendor`, ...). The filter runs before any formatter, so
JSON lines are redacted exactly as text lines are.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any
from urllib.parse import unquote_plus

import orjson

from hub.tracing import request_id

__all__ = ["RedactSecrets", "QuietFrames", "JsonFormatter", "redact", "mask_phones", "SECRET_PARAMS"]

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
#: A phone number as the hub writes them: E.164 (`+84901234567`) or national digits (`0901234567`),
#: not inside a longer word or number (an id, a hash, a timestamp with a fraction).
_PHONE = re.compile(r"(?<![\w.+-])(\+?)(\d{6,12})(\d{3})(?![\w.])")


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


def mask_phones(text: str) -> str:
    """`+84901234567` -> `+********567`: enough to tell calls apart in a log, not to call anyone."""
    return _PHONE.sub(lambda m: m.group(1) + "*" * len(m.group(2)) + m.group(3), text)


def _redact_arg(value: Any, phones: bool) -> Any:
    if isinstance(value, (int, float)) or value is None:
        return value  # formatters may need the number (`%d`)
    text = str(value)  # an httpx.URL, say, renders its query string
    cleaned = redact(text)
    if phones:
        cleaned = mask_phones(cleaned)
    return value if cleaned == text else cleaned


class QuietFrames(logging.Filter):
    """Drops the websockets library's per-frame debug lines (`< PING …`, `> TEXT …`): at debug
    level a client's ping flood would otherwise write a line per frame."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.DEBUG and record.msg in ("< %s", "> %s"))


class RedactSecrets(logging.Filter):
    """Redacts the message and each string argument, keeping the arguments' shape: uvicorn's
    access-log formatter unpacks exactly five of them, so they may not be folded into the message.
    `phone_numbers="masked"` (the default) also masks phone numbers. It stamps the record with the
    request id of the context it was logged in (`record.request_id`, None outside a request)."""

    def __init__(self, phone_numbers: str = "masked") -> None:
        super().__init__()
        self.phones = phone_numbers != "full"

    def filter(self, record: logging.LogRecord) -> bool:
        phones = self.phones
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
            if phones:
                record.msg = mask_phones(record.msg)
        args = record.args
        if isinstance(args, tuple):
            record.args = tuple(_redact_arg(a, phones) for a in args)
        elif isinstance(args, dict):
            record.args = {k: _redact_arg(v, phones) for k, v in args.items()}
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        return True


#: LogRecord's own attributes: anything else on a record came from `extra=` and is written out.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "color_message", "request_id"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line. Fields given with `extra=` are kept (redacted like the message);
    uvicorn's `color_message` copy of the message is not."""

    def __init__(self, phone_numbers: str = "masked", **_: Any) -> None:
        super().__init__()
        self.phones = phone_numbers != "full"

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or request_id.get(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = _redact_arg(value, self.phones) if not isinstance(value, (list, dict)) else value
        args = record.args
        if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
            line.update(client=args[0], method=args[1], path=args[2], status=args[4])
        if record.exc_info:
            text = redact(self.formatException(record.exc_info))
            line["exception"] = mask_phones(text) if self.phones else text
        return orjson.dumps(line, default=str).decode()
