"""What every AntRing call-signal transport shares: the errors, the callbacks, and payload helpers.

Exceptions::

    SignalStreamError          anything that ends a signal stream
    ├── ConnectionLost         could not connect, handshake or heartbeat timed out, or the server
    │                          closed the connection: reconnect with back-off
    └── AuthRejected           the server refused the voice token: refresh it, then reconnect

Every transport module exposes ``async def stream(url, *, account_id, auth_token, bindings,
on_signal, on_subscribed, open_timeout) -> None`` with the contract of
:func:`handlers.antring.socket.stream_signals`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

log = logging.getLogger(__name__)

#: Awaited once per call event with its name (``CHANNEL_CREATE``) and the bare KAZOO payload.
OnSignal = Callable[[str, dict[str, Any]], Awaitable[None]]
#: Called (and awaited if it returns an awaitable) once every binding is subscribed.
OnSubscribed = Callable[[], Awaitable[None] | None]

#: The Socket.IO event a server emits to refuse a subscription (an assumption, see the transports).
ERROR_EVENT = "error"
#: Largest frame accepted from the server; a KAZOO call event is a few KiB.
MAX_MESSAGE_SIZE = 1 << 20
#: Bound on the closing handshake when a stream ends.
CLOSE_TIMEOUT = 5.0


class SignalStreamError(Exception):
    """The call-signal stream ended; `protocol` and `url` say which one."""

    def __init__(self, message: str, *, protocol: str = "", url: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.protocol = protocol
        self.url = url

    def __str__(self) -> str:
        where = " ".join(x for x in (self.protocol, self.url) if x)
        return f"{self.message} ({where})" if where else self.message


class ConnectionLost(SignalStreamError):
    """The connection could not be opened, timed out, or was closed by the server."""


class AuthRejected(SignalStreamError):
    """The server refused the auth token (the message is the server's, never the token)."""


class Redact(logging.Filter):
    """Masks `secret` in the records of a logger it is added to: Engine.IO's client logs whole
    packets at INFO, and a subscribe packet carries the auth token."""

    def __init__(self, secret: str) -> None:
        super().__init__()
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.secret and self.secret in message:
            record.msg, record.args = message.replace(self.secret, "[redacted]"), None
        return True


async def notify(callback: OnSubscribed | None) -> None:
    """Call `callback`, awaiting it if it is a coroutine function (or returns an awaitable)."""
    if callback is None:
        return
    result = callback()
    if inspect.isawaitable(result):
        await result


def unwrap(raw: Any) -> tuple[str | None, dict[str, Any] | None]:
    """(wrapper name, bare KAZOO payload) of an event payload, which may be bare or `{name, args}`.

    `args` may be a dict or a list whose first dict is the payload; wrapping may nest.
    A payload that is no dict at all gives `(None, None)`.
    """
    if isinstance(raw, list):
        raw = next((x for x in raw if isinstance(x, dict)), None)
    if not isinstance(raw, dict):
        return None, None
    # A KAZOO event has hyphenated keys; only a wrapper has `args` and no `Call-ID`.
    if "args" in raw and "Call-ID" not in raw:
        inner_name, payload = unwrap(raw["args"])
        name = raw.get("name")
        return (name if isinstance(name, str) and name else inner_name), payload
    return None, raw


def event_name(*candidates: Any, payload: dict[str, Any] | None = None) -> str | None:
    """The first non-empty string among `candidates`, else the payload's own `Event-Name`."""
    for candidate in candidates:
        if isinstance(candidate, str) and candidate:
            return candidate
    if payload is not None:
        name = payload.get("Event-Name")
        if isinstance(name, str) and name:
            return name
    return None


def error_message(raw: Any) -> str:
    """A short human message out of a server's error payload (`{message}`, `{errors: [...]}`, a string)."""
    if isinstance(raw, (list, tuple)):
        return "; ".join(error_message(x) for x in raw) or "error"
    if isinstance(raw, dict):
        for key in ("message", "error", "errors", "reason", "data"):
            if key in raw:
                return error_message(raw[key])
        return "error"
    return str(raw) if raw not in (None, "") else "error"


def binding_matches(binding: str, routing_key: str) -> bool:
    """KAZOO (AMQP topic) matching: `*` is exactly one word, `#` zero or more words."""
    return _match(binding.split("."), routing_key.split("."))


def _match(pattern: list[str], words: list[str]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_match(rest, words[i:]) for i in range(len(words) + 1))
    if not words:
        return False
    return (head == "*" or head == words[0]) and _match(rest, words[1:])


def transport_url(url: str, *, websocket: bool, path: str | None = None, query: str = "") -> str:
    """`url` with the scheme a transport needs (`https` → `wss` for WebSockets), `path` replacing its
    path when given, and `query` added to its query string."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https", "ws", "wss"):
        raise ValueError(f"unsupported ws_url scheme {parts.scheme!r}")
    secure = scheme in ("https", "wss")
    if websocket:
        scheme = "wss" if secure else "ws"
    else:
        scheme = "https" if secure else "http"
    full_query = "&".join(q for q in (query, parts.query) if q)
    return urllib.parse.urlunsplit((scheme, parts.netloc, path if path is not None else parts.path or "/", full_query, ""))


def socketio_signal(name: str, args: list[Any]) -> tuple[str, dict[str, Any]] | None:
    """(event name, bare KAZOO payload) of a Socket.IO event's arguments; None if no object is carried."""
    wrapped_name, payload = unwrap(args)
    if payload is None:
        return None
    return event_name(wrapped_name, name, payload=payload) or name, payload


async def open_websocket(
    url: str, *, protocol: str, shown_url: str, open_timeout: float, ping_interval: float | None = None,
    ping_timeout: float | None = None,
) -> ClientConnection:
    """A websockets client connection, or `ConnectionLost`. Pings are off unless asked for: the
    Socket.IO revisions carry their own heartbeats."""
    try:
        return await connect(
            url,
            open_timeout=open_timeout,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            close_timeout=CLOSE_TIMEOUT,
            max_size=MAX_MESSAGE_SIZE,
            compression=None,
        )
    except (OSError, TimeoutError, WebSocketException) as exc:
        raise ConnectionLost(f"could not connect: {exc or type(exc).__name__}", protocol=protocol, url=shown_url) from exc


async def recv_text(ws: ClientConnection, timeout: float | None, *, what: str, protocol: str, shown_url: str) -> str:
    """The next text frame, waiting at most `timeout` for any frame (binary frames are skipped);
    `ConnectionLost` when the connection closes or stays silent."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                frame = await ws.recv()
                if isinstance(frame, str):
                    return frame
    except TimeoutError as exc:
        raise ConnectionLost(f"no {what} within {timeout:g} s", protocol=protocol, url=shown_url) from exc
    except ConnectionClosed as exc:
        raise ConnectionLost(f"server closed the connection ({exc})", protocol=protocol, url=shown_url) from exc


async def send_text(ws: ClientConnection, text: str, *, protocol: str, shown_url: str) -> None:
    try:
        await ws.send(text)
    except ConnectionClosed as exc:
        raise ConnectionLost(f"server closed the connection ({exc})", protocol=protocol, url=shown_url) from exc


async def subscribe_each(ws: ClientConnection, encode: Callable[..., str], *, account_id: str, auth_token: str,
                         bindings: list[str], on_subscribed: OnSubscribed | None, protocol: str,
                         shown_url: str) -> None:
    """The hand-written Socket.IO transports' subscribe: one `subscribe` event per binding, then `on_subscribed`."""
    for binding in bindings:
        subscribe = {"account_id": account_id, "auth_token": auth_token, "binding": binding}
        await send_text(ws, encode("subscribe", subscribe), protocol=protocol, shown_url=shown_url)
    log.info("antring socket subscribed account=%s bindings=%s (%s)", account_id, bindings, protocol)
    await notify(on_subscribed)


async def deliver_socketio_event(name: str, args: list[Any], on_signal: OnSignal, *, protocol: str,
                                 shown_url: str) -> None:
    """A Socket.IO event the server emitted: a refusal (`ERROR_EVENT`) raises, a call event goes to `on_signal`."""
    if name == ERROR_EVENT:
        raise AuthRejected(f"server refused the subscription: {error_message(args)}", protocol=protocol, url=shown_url)
    signal = socketio_signal(name, args)
    if signal is None:
        log.warning("antring socket: ignoring %s event without an object payload", name)
    else:
        await on_signal(*signal)
