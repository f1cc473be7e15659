"""The event model: CloudEvents 1.0 in structured JSON mode, plus the hub's `seq` extension.

An event enters as a JSON object (from `POST /v1/events`, a webhook receiver or a vendor
consumer), is validated and completed by `prepare_event`, committed by the backend, which
assigns `seq` and encodes the final JSON exactly once, and leaves as that same byte string
on every stream, history page and outbound webhook.
"""

from __future__ import annotations

import re
import time
import uuid
from datetime import datetime
from typing import Any, NamedTuple, Protocol

import orjson

from hub import wire
from hub.exceptions import InvalidEvent

__all__ = ["Event", "Published", "Publish", "prepare_event", "encode_event", "encode_event_parts", "hub_event", "agent_of",
           "now_rfc3339", "event_time", "EVENT_LIMITS", "MAX_JSON_DEPTH", "check_depth", "HUB_SOURCE"]

SPECVERSION = "1.0"
JSON = "application/json"

#: Limits on attribute values; CloudEvents leaves them open, a hub must not.
EVENT_LIMITS = {
    "type": 256,
    "id": 256,
    "source": 1024,
    "subject": 1024,
    "agent": 256,
}
#: CloudEvents extension attribute names: lower-case ASCII letters and digits, at most 20.
_EXTENSION_NAME = re.compile(r"[a-z0-9]{1,20}")
#: Types are written into SSE `event:` lines and matched by glob patterns: no spaces, no controls.
_TYPE = re.compile(r"[A-Za-z0-9._:/@+-]+")
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")
#: CloudEvents' Integer type is a signed 32-bit number.
INT32 = (-(2**31), 2**31 - 1)
_CORE = {"specversion", "id", "source", "type", "time", "subject", "datacontenttype", "data", "dataschema"}
#: Attributes a client may not set: the hub assigns them.
_RESERVED = {"seq"}
#: How deeply a JSON document a client sends may nest (objects and arrays). orjson reads
#: documents up to 1024 levels deep but writes at most 254, so without a limit of our own a
#: small, deep body would be accepted and then fail to encode when stored.
MAX_JSON_DEPTH = 64
#: Levels a normaliser may wrap around a vendor's payload (`data.raw` and the like) on top of
#: `MAX_JSON_DEPTH`: what `prepare_event` allows in `data`.
_WRAP_DEPTH = 8
#: The source of the events the hub itself emits (`hub.gap`, `action.*`, `hub.upstream.*`).
HUB_SOURCE = "hub"


class Published(NamedTuple):
    """What publishing answers: the event's id, its seq, and whether it was stored before."""

    id: str
    seq: int
    duplicate: bool


class Publish(Protocol):
    """The one way an event gets into the hub (what parts that publish are given)."""

    async def __call__(self, obj: Any, *, default_source: str = ...) -> Published: ...


_second: tuple[int, str] = (-1, "")


def now_rfc3339() -> str:
    """Now as `2026-11-23T08:15:00.123Z`; the part up to the second is formatted once per second."""
    global _second
    now = time.time()
    whole = int(now)
    if whole != _second[0]:
        _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return f"{_second[1]}.{int((now - whole) * 1000):03d}Z"


def event_time(event: dict[str, Any], *, default: float) -> float:
    """An event's `time` as a Unix timestamp (`default` if it has none or it cannot be read)."""
    value = event.get("time")
    if not isinstance(value, str):
        return default
    try:
        return _parse_time(value).timestamp()
    except ValueError:
        return default


def _parse_time(value: str) -> datetime:
    """An RFC 3339 timestamp (`Z` or `z` for UTC); ValueError if it is not a valid date and time."""
    return datetime.fromisoformat(value.replace("z", "Z").replace("Z", "+00:00"))


def check_depth(obj: Any, limit: int = MAX_JSON_DEPTH, *, field: str | None = None) -> None:
    """Raise `InvalidEvent` (422) if `obj` nests objects or arrays more than `limit` levels deep.

    Iterative (a deep document must not exhaust the interpreter's stack either), linear in
    the number of values, and stops at the first container past the limit.
    """
    stack: list[tuple[Any, int]] = [(obj, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        value, depth = pop()
        kind = type(value)
        if kind is dict:
            children = value.values()
        elif kind is list:
            children = value
        else:
            continue
        if depth > limit:
            where = f"'{field}'" if field else "the document"
            raise InvalidEvent(f"{where} nests deeper than {limit} levels", code="too_deep", limit=limit,
                               **({"field": field} if field else {}))
        for child in children:
            if type(child) is dict or type(child) is list:
                push((child, depth + 1))


def _string(obj: dict[str, Any], name: str, *, default: str | None = None, required: bool = False) -> str | None:
    value = obj.get(name)
    if value is None:
        if required:
            raise InvalidEvent(f"'{name}' is required", field=name)
        return default
    if not isinstance(value, str):
        raise InvalidEvent(f"'{name}' must be a string, not {type(value).__name__}", field=name)
    if not value:
        raise InvalidEvent(f"'{name}' must not be empty", field=name)
    limit = EVENT_LIMITS.get(name)
    if limit is not None and len(value) > limit:
        raise InvalidEvent(f"'{name}' is longer than {limit} characters", field=name)
    return value


def prepare_event(obj: Any, *, default_source: str = "api") -> dict[str, Any]:
    """Validate a client's CloudEvent and fill in the defaults; raise `InvalidEvent` saying what is wrong.

    Returns the attribute dict (without `seq`) in a stable key order.
    """
    if not isinstance(obj, dict):
        raise InvalidEvent(f"an event must be a JSON object, not {type(obj).__name__}")
    specversion = _string(obj, "specversion", default=SPECVERSION)
    if specversion != SPECVERSION:
        raise InvalidEvent(f"'specversion' must be {SPECVERSION!r}", field="specversion")
    type_ = _string(obj, "type", required=True)
    assert type_ is not None
    if not _TYPE.fullmatch(type_):
        raise InvalidEvent(
            "'type' may hold only letters, digits and . _ : / @ + -", field="type"
        )
    event_id = _string(obj, "id") or str(uuid.uuid4())
    source = _string(obj, "source", default=default_source)
    event_time = _string(obj, "time")
    if event_time is None:
        event_time = now_rfc3339()
    elif not _RFC3339.fullmatch(event_time):
        raise InvalidEvent("'time' must be an RFC 3339 timestamp such as 2026-11-23T08:15:00Z", field="time")
    else:
        try:
            _parse_time(event_time)
        except ValueError:
            raise InvalidEvent("'time' is not a valid date and time", field="time") from None
    subject = _string(obj, "subject")
    content_type = _string(obj, "datacontenttype", default=JSON)
    if content_type is not None and content_type.split(";")[0].strip().lower() != JSON:
        raise InvalidEvent("'datacontenttype' must be application/json", field="datacontenttype")
    if "data_base64" in obj:
        raise InvalidEvent("binary data ('data_base64') is not accepted; send a JSON object as 'data'", field="data_base64")
    data = obj.get("data", {})
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InvalidEvent(f"'data' must be a JSON object, not {type(data).__name__}", field="data")
    check_depth(data, MAX_JSON_DEPTH + _WRAP_DEPTH, field="data")
    agent = data.get("agent")
    if agent is not None and (not isinstance(agent, str) or len(agent) > EVENT_LIMITS["agent"]):
        raise InvalidEvent("'data.agent' must be a string (or null)", field="data.agent")

    event: dict[str, Any] = {
        "specversion": SPECVERSION,
        "id": event_id,
        "source": source,
        "type": type_,
        "time": event_time,
    }
    if subject is not None:
        event["subject"] = subject
    if "dataschema" in obj:
        event["dataschema"] = _string(obj, "dataschema")
    event["datacontenttype"] = JSON
    for name, value in obj.items():
        if name in _CORE:
            continue
        if name in _RESERVED:
            raise InvalidEvent(f"'{name}' is assigned by the hub and may not be set", field=name)
        if not _EXTENSION_NAME.fullmatch(name):
            raise InvalidEvent(
                f"unknown attribute {name!r}: extension names are 1-20 lower-case letters or digits", field=name
            )
        if not isinstance(value, (str, int, bool)):
            raise InvalidEvent(f"extension attribute {name!r} must be a string, integer or boolean", field=name)
        if isinstance(value, int) and not isinstance(value, bool) and not INT32[0] <= value <= INT32[1]:
            raise InvalidEvent(f"extension attribute {name!r} is outside the 32-bit integer range", field=name)
        event[name] = value
    event["data"] = data
    return event


def encode_event(attrs: dict[str, Any], seq: int) -> bytes:
    """The event's final JSON: its attributes, then `seq`, then `data` (kept last for readability)."""
    head = {k: v for k, v in attrs.items() if k != "data"}
    head["seq"] = seq
    head["data"] = attrs["data"]
    return orjson.dumps(head)


def encode_event_parts(attrs: dict[str, Any]) -> tuple[bytes, bytes]:
    """`encode_event` split where `seq` goes: `prefix + str(seq).encode() + suffix` is the same
    bytes, for a store that assigns the seq elsewhere (the Redis backend, inside its script)."""
    head = {k: v for k, v in attrs.items() if k != "data"}
    if not head:
        raise ValueError("an event has attributes besides data")
    return orjson.dumps(head)[:-1] + b',"seq":', b',"data":' + orjson.dumps(attrs["data"]) + b"}"


def hub_event(type_: str, data: dict[str, Any], *, subject: str | None = None) -> dict[str, Any]:
    """An event the hub itself emits (`hub.gap`, ...), before it has a `seq`."""
    event: dict[str, Any] = {
        "specversion": SPECVERSION,
        "id": str(uuid.uuid4()),
        "source": HUB_SOURCE,
        "type": type_,
        "time": now_rfc3339(),
    }
    if subject is not None:
        event["subject"] = subject
    event["datacontenttype"] = JSON
    event["data"] = data
    return event


class Event:
    """A committed event: its `seq`, routing keys, and its JSON encoded once.

    `received` is a `time.perf_counter()` reading from when the hub accepted it (for the
    fan-out latency histogram); events read back from the store have `received = 0`.
    """

    __slots__ = ("seq", "type", "agent", "body", "received", "_ws", "_sse")

    def __init__(self, seq: int, type_: str, agent: str | None, body: bytes, received: float = 0.0) -> None:
        self.seq = seq
        self.type = type_
        self.agent = agent
        self.body = body
        self.received = received
        self._ws: bytes | None = None
        self._sse: bytes | None = None

    @property
    def ws_frame(self) -> bytes:
        """The complete WebSocket text frame, built once for every subscriber."""
        if self._ws is None:
            self._ws = wire.ws_text_frame(self.body)
        return self._ws

    @property
    def sse(self) -> bytes:
        """The Server-Sent Events record (`id`, `event`, `data`), built once for every subscriber."""
        if self._sse is None:
            self._sse = wire.sse_record(self.seq, self.type, self.body)
        return self._sse

    def __repr__(self) -> str:
        return f"Event(seq={self.seq}, type={self.type!r}, agent={self.agent!r})"


def agent_of(event: dict[str, Any]) -> str | None:
    data = event.get("data")
    if isinstance(data, dict):
        agent = data.get("agent")
        if isinstance(agent, str):
            return agent
    return None
