"""`ws_protocol = "socketio-0.9"`: the Socket.IO 0.9 protocol, websocket transport only.

No Python library speaks it. The exchange a subscriber needs:

    GET /socket.io/1/?t=<ms>       → `sid:heartbeat_timeout:close_timeout:websocket,xhr-polling,…`
    ws://host/socket.io/1/websocket/<sid>
    server → `1::`                 connect
    server → `2::`, client → `2::` heartbeat: the SERVER sends, the client echoes
    client → `5:::{"name":"subscribe","args":[{…}]}`, and the server's events look the same
    `0::`                          disconnect
    `7:::<reason>+<advice>`        error; reasons are indexes into
                                   (transport not supported, client not handshaken, unauthorized)

Frames are `type:id:endpoint:data`. Liveness: if nothing (not even a heartbeat) arrives for the
handshake's heartbeat timeout, the connection is dead (`ConnectionLost`). A server that disables
heartbeats (empty timeout) is watched with WebSocket pings instead.

Auth rejection is not documented by AntBuddy. ASSUMPTION: a server that refuses the token of a
`subscribe` emits an `error` event (`5:::{"name":"error","args":[{"message":…}]}`) and may then
disconnect; that, an error packet whose reason is `unauthorized`, and an HTTP 401/403 on the
handshake are raised as `AuthRejected`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import httpx
import orjson
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from .base import (
    AuthRejected,
    ConnectionLost,
    OnSignal,
    OnSubscribed,
    deliver_socketio_event,
    open_websocket,
    recv_text,
    send_text,
    subscribe_each,
    transport_url,
)

PROTOCOL = "socketio-0.9"
HANDSHAKE_PATH = "/socket.io/1/"
#: WebSocket pings when the server turns Socket.IO heartbeats off.
FALLBACK_PING_INTERVAL = 20.0
FALLBACK_PING_TIMEOUT = 20.0

# Socket.IO 0.9 packet types.
DISCONNECT, CONNECT, HEARTBEAT, MESSAGE, JSON_MESSAGE, EVENT, ACK, ERROR, NOOP = "012345678"
#: Error packet reasons are sent as indexes into this list.
ERROR_REASONS = ["transport not supported", "client not handshaken", "unauthorized"]
UNAUTHORIZED = "unauthorized"

log = logging.getLogger(__name__)


def parse_frame(text: str) -> tuple[str, str, str, str]:
    """(type, message id, endpoint, data) of a `type:id:endpoint:data` frame."""
    kind, _, rest = text.partition(":")
    message_id, _, rest = rest.partition(":")
    endpoint, _, data = rest.partition(":")
    return kind, message_id, endpoint, data


def encode_event(name: str, *args: Any) -> str:
    return f"{EVENT}:::" + orjson.dumps({"name": name, "args": list(args)}).decode()


def error_reason(data: str) -> str:
    """`2+0` → `unauthorized`; a reason that is no index is returned as sent."""
    reason = data.partition("+")[0]
    if reason.isdigit() and int(reason) < len(ERROR_REASONS):
        return ERROR_REASONS[int(reason)]
    return reason or "error"


async def handshake(url: str, open_timeout: float) -> tuple[str, float | None]:
    """(session id, heartbeat timeout in seconds or None) from the HTTP handshake."""
    target = transport_url(url, websocket=False, path=HANDSHAKE_PATH, query=f"t={int(time.time() * 1000)}")
    try:
        async with httpx.AsyncClient(timeout=open_timeout) as http:
            response = await http.get(target)
    except httpx.HTTPError as exc:
        raise ConnectionLost(f"handshake failed: {exc or type(exc).__name__}", protocol=PROTOCOL, url=url) from exc
    if response.status_code in (401, 403):
        raise AuthRejected(f"handshake refused: HTTP {response.status_code}", protocol=PROTOCOL, url=url)
    if response.status_code != 200:
        raise ConnectionLost(f"handshake failed: HTTP {response.status_code}", protocol=PROTOCOL, url=url)
    parts = response.text.strip().split(":")
    if len(parts) < 4 or not parts[0]:
        raise ConnectionLost(f"unexpected handshake answer {response.text[:60]!r}", protocol=PROTOCOL, url=url)
    if "websocket" not in parts[3].split(","):
        raise ConnectionLost(f"server offers no websocket transport ({parts[3]})", protocol=PROTOCOL, url=url)
    try:
        heartbeat_timeout = float(parts[1]) if parts[1] else None
    except ValueError as exc:
        raise ConnectionLost(f"bad heartbeat timeout {parts[1]!r}", protocol=PROTOCOL, url=url) from exc
    return parts[0], heartbeat_timeout


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
    sid, heartbeat_timeout = await handshake(url, open_timeout)
    target = transport_url(url, websocket=True, path=f"{HANDSHAKE_PATH}websocket/{sid}")
    ws = await open_websocket(
        target, protocol=PROTOCOL, shown_url=url, open_timeout=open_timeout,
        ping_interval=None if heartbeat_timeout else FALLBACK_PING_INTERVAL,
        ping_timeout=None if heartbeat_timeout else FALLBACK_PING_TIMEOUT,
    )
    try:
        while True:
            text = await recv_text(ws, open_timeout, what="connect packet", protocol=PROTOCOL, shown_url=url)
            if text.startswith(CONNECT):
                break
            await _handle(ws, text, url, on_signal)
        await subscribe_each(ws, encode_event, account_id=account_id, auth_token=auth_token, bindings=bindings,
                             on_subscribed=on_subscribed, protocol=PROTOCOL, shown_url=url)
        while True:
            text = await recv_text(ws, heartbeat_timeout, what="heartbeat", protocol=PROTOCOL, shown_url=url)
            await _handle(ws, text, url, on_signal)
    finally:
        with contextlib.suppress(ConnectionClosed):
            await ws.send(f"{DISCONNECT}::")
        await ws.close()


async def _handle(ws: ClientConnection, text: str, url: str, on_signal: OnSignal) -> None:
    kind, _, endpoint, data = parse_frame(text)
    if kind == HEARTBEAT:
        await send_text(ws, f"{HEARTBEAT}::", protocol=PROTOCOL, shown_url=url)
    elif endpoint:
        return  # another endpoint (namespace): not ours
    elif kind == DISCONNECT:
        raise ConnectionLost("server disconnected", protocol=PROTOCOL, url=url)
    elif kind == ERROR:
        reason = error_reason(data)
        error = AuthRejected if reason == UNAUTHORIZED else ConnectionLost
        raise error(f"server error: {reason}", protocol=PROTOCOL, url=url)
    elif kind == EVENT:
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            log.warning("antring socket: ignoring a malformed event frame (%d bytes)", len(text))
            return
        name = event.get("name") if isinstance(event, dict) else None
        if not isinstance(name, str):
            return
        args = event.get("args") or []
        await deliver_socketio_event(name, args if isinstance(args, list) else [args], on_signal,
                                     protocol=PROTOCOL, shown_url=url)
    # CONNECT (again), MESSAGE, JSON_MESSAGE, ACK and NOOP carry nothing for a subscriber.
