"""`ws_protocol = "socketio-eio3"`: Socket.IO JS 1/2 (Engine.IO 3), websocket transport only.

No installed library speaks this revision (python-socketio 4.x cannot live beside 5.x), and the
part a subscriber needs is small. Text frames are an Engine.IO packet type digit, then data:

    server → `0{"sid":…,"upgrades":[],"pingInterval":25000,"pingTimeout":5000}`  open
    server → `40`                       Socket.IO connect (default namespace, sent unasked)
    client → `42["subscribe",{…}]`      an event; the server's events look the same
    client → `2`, server → `3`          ping and pong: in Engine.IO 3 the CLIENT pings
    `41` / `1`                          namespace disconnect / transport close
    `44…`                               Socket.IO error packet (delivered to JS as an `error` event)

Liveness: the client pings every `pingInterval`; if nothing arrives for `pingInterval +
pingTimeout` the connection is dead (`ConnectionLost`).

Auth rejection is not documented by AntBuddy. ASSUMPTION: a server that refuses the token of a
`subscribe` emits an `error` event (`42["error",{"message":…}]`) and may then disconnect; that,
and an error packet `44…`, are raised as `AuthRejected`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from .base import (
    AuthRejected,
    ConnectionLost,
    OnSignal,
    OnSubscribed,
    deliver_socketio_event,
    error_message,
    open_websocket,
    recv_text,
    send_text,
    subscribe_each,
    transport_url,
)

PROTOCOL = "socketio-eio3"
PATH = "/socket.io/"
#: Used when the server's open packet leaves them out (the Socket.IO 2 defaults).
DEFAULT_PING_INTERVAL = 25.0
DEFAULT_PING_TIMEOUT = 5.0

# Engine.IO 3 packet types.
OPEN, CLOSE, PING, PONG, MESSAGE, UPGRADE, NOOP = "0123456"
# Socket.IO 2 packet types (inside an Engine.IO MESSAGE).
SIO_CONNECT, SIO_DISCONNECT, SIO_EVENT, SIO_ACK, SIO_ERROR = "01234"

log = logging.getLogger(__name__)


def parse_socketio(text: str) -> tuple[str, str, Any]:
    """(packet type, namespace, JSON data or None) of a Socket.IO 2 packet: `2/nsp,12["name",…]`."""
    kind, rest = text[:1], text[1:]
    namespace = "/"
    if rest.startswith("/"):
        namespace, _, rest = rest.partition(",")
    rest = rest.lstrip("0123456789")  # an ack id we never answer
    return kind, namespace, orjson.loads(rest) if rest else None


def encode_event(name: str, *args: Any) -> str:
    return MESSAGE + SIO_EVENT + orjson.dumps([name, *args]).decode()


async def stream(
    url: str,
    *,
    account_id: str,
    auth_token: str,
    bindings: list[str],
    on_signal: OnSignal,
    on_subscribed: OnSubscribed | None,
    open_timeout: float,
) -> None:
    target = transport_url(url, websocket=True, path=PATH, query="EIO=3&transport=websocket")
    ws = await open_websocket(target, protocol=PROTOCOL, shown_url=url, open_timeout=open_timeout)
    pinger: asyncio.Task[None] | None = None
    try:
        interval, timeout = await _handshake(ws, url, open_timeout)
        pinger = asyncio.create_task(_ping(ws, interval), name="antring-eio3-ping")
        await subscribe_each(ws, encode_event, account_id=account_id, auth_token=auth_token, bindings=bindings,
                             on_subscribed=on_subscribed, protocol=PROTOCOL, shown_url=url)
        while True:
            text = await recv_text(ws, interval + timeout, what="pong", protocol=PROTOCOL, shown_url=url)
            await _handle(ws, text, url, on_signal)
    finally:
        if pinger is not None:
            pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pinger
        await ws.close()


async def _handshake(ws: ClientConnection, url: str, open_timeout: float) -> tuple[float, float]:
    """Read the open packet and the namespace connect; (ping interval, ping timeout) in seconds."""
    text = await recv_text(ws, open_timeout, what="open packet", protocol=PROTOCOL, shown_url=url)
    if not text.startswith(OPEN):
        raise ConnectionLost(f"expected an Engine.IO 3 open packet, got {text[:40]!r}", protocol=PROTOCOL, url=url)
    try:
        info = orjson.loads(text[1:])
        interval = float(info.get("pingInterval", DEFAULT_PING_INTERVAL * 1000)) / 1000
        timeout = float(info.get("pingTimeout", DEFAULT_PING_TIMEOUT * 1000)) / 1000
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError) as exc:
        raise ConnectionLost(f"bad open packet {text[:40]!r}", protocol=PROTOCOL, url=url) from exc
    while True:
        text = await recv_text(ws, open_timeout, what="Socket.IO connect", protocol=PROTOCOL, shown_url=url)
        if text.startswith(MESSAGE + SIO_CONNECT):
            return interval, timeout
        if text.startswith(MESSAGE + SIO_ERROR):
            try:
                data = parse_socketio(text[1:])[2]
            except orjson.JSONDecodeError:
                data = text[2:]
            raise AuthRejected(f"server refused the connection: {error_message(data)}", protocol=PROTOCOL, url=url)
        if not text.startswith((PONG, NOOP)):
            raise ConnectionLost(f"expected a Socket.IO connect, got {text[:40]!r}", protocol=PROTOCOL, url=url)


async def _handle(ws: ClientConnection, text: str, url: str, on_signal: OnSignal) -> None:
    kind = text[:1]
    if kind == PING:  # an Engine.IO 4-style server ping: answering costs nothing
        await send_text(ws, PONG + text[1:], protocol=PROTOCOL, shown_url=url)
    elif kind == CLOSE:
        raise ConnectionLost("server closed the Engine.IO session", protocol=PROTOCOL, url=url)
    elif kind == MESSAGE:
        try:
            sio_kind, namespace, data = parse_socketio(text[1:])
        except orjson.JSONDecodeError:
            log.warning("antring socket: ignoring a malformed Socket.IO packet (%d bytes)", len(text))
            return
        if namespace != "/":
            return
        if sio_kind == SIO_DISCONNECT:
            raise ConnectionLost("server disconnected the namespace", protocol=PROTOCOL, url=url)
        if sio_kind == SIO_ERROR:
            raise AuthRejected(f"server refused the subscription: {error_message(data)}", protocol=PROTOCOL, url=url)
        if sio_kind == SIO_EVENT and isinstance(data, list) and data and isinstance(data[0], str):
            await deliver_socketio_event(data[0], data[1:], on_signal, protocol=PROTOCOL, shown_url=url)
    # PONG and NOOP only prove the connection alive; UPGRADE does not happen on a websocket.


async def _ping(ws: ClientConnection, interval: float) -> None:
    with contextlib.suppress(ConnectionClosed):
        while True:
            await asyncio.sleep(interval)
            await ws.send(PING)
