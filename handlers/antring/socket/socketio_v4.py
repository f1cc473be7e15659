"""`ws_protocol = "socketio"`: Socket.IO JS 3/4 (Engine.IO 4), through python-socketio's AsyncClient.

The websocket transport only (no long-polling), no library-side reconnection: the consumer owns
reconnects, so that it can refresh the token and reconcile the gap in between.

Liveness: in Engine.IO 4 the server pings; the library closes the connection when nothing arrives
for the server's `pingInterval + pingTimeout`, which ends this stream with `ConnectionLost`.

Auth rejection is not documented by AntBuddy. ASSUMPTION: a Socket.IO server that refuses the
token of a `subscribe` emits an `error` event whose payload carries a message (and may then
disconnect), as KAZOO's Socket.IO Blackhole did; any `error` event is raised as `AuthRejected`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import socketio

from .base import (
    CLOSE_TIMEOUT,
    ERROR_EVENT,
    AuthRejected,
    ConnectionLost,
    OnSignal,
    OnSubscribed,
    Redact,
    error_message,
    notify,
    socketio_signal,
)

PROTOCOL = "socketio"
#: Events received but not yet handled by `on_signal`. The library reads ahead without
#: back-pressure, so past this the stream ends (the consumer reconnects and reconciles).
INBOX_LIMIT = 10_000

log = logging.getLogger(__name__)
# The library's own chatter: connection attempts, event names, and whole packets (redacted).
_library_log = log.getChild("library")


class _Closed:
    """The connection ended."""


class _Rejected:
    def __init__(self, message: str) -> None:
        self.message = message


_Item = tuple[str, dict[str, Any]] | _Closed | _Rejected


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
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[_Item] = asyncio.Queue()
    overflowed = False

    def put(item: _Item) -> None:
        nonlocal overflowed
        if inbox.qsize() >= INBOX_LIMIT:
            overflowed = True
        else:
            inbox.put_nowait(item)

    # Engine.IO runs each incoming message's handler as its own task, in arrival order; plain
    # functions that only enqueue keep that order, whereas awaiting `on_signal` there would not.
    def on_event(name: str, *args: Any) -> None:
        if name == ERROR_EVENT:
            put(_Rejected(error_message(args[0] if len(args) == 1 else list(args))))
            return
        signal = socketio_signal(name, list(args))
        if signal is None:
            log.warning("antring socket: ignoring %s event without an object payload", name)
            return
        put(signal)

    def on_disconnect(reason: Any = None) -> None:
        # Scheduled, not enqueued now: message tasks already started must enqueue first.
        loop.call_soon(put, _Closed())

    async with aiohttp.ClientSession() as http:
        sio = socketio.AsyncClient(
            reconnection=False,
            handle_sigint=False,
            http_session=http,
            request_timeout=open_timeout,
            logger=_library_log,
            engineio_logger=_library_log,
        )
        sio.on("*", on_event)
        sio.on("disconnect", on_disconnect)
        redact = Redact(auth_token)
        _library_log.addFilter(redact)
        try:
            try:
                await asyncio.wait_for(
                    sio.connect(url, transports=["websocket"], wait_timeout=open_timeout),
                    open_timeout,
                )
                for binding in bindings:
                    await sio.emit("subscribe", {"account_id": account_id, "auth_token": auth_token, "binding": binding})
            except (socketio.exceptions.SocketIOError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                raise ConnectionLost(f"could not subscribe: {exc or type(exc).__name__}", protocol=PROTOCOL, url=url) from exc
            log.info("antring socket subscribed account=%s bindings=%s (%s)", account_id, bindings, PROTOCOL)
            await notify(on_subscribed)
            while True:
                item = await inbox.get()
                if overflowed:
                    raise ConnectionLost(f"more than {INBOX_LIMIT} signals waiting", protocol=PROTOCOL, url=url)
                if isinstance(item, _Closed):
                    raise ConnectionLost("server closed the connection", protocol=PROTOCOL, url=url)
                if isinstance(item, _Rejected):
                    raise AuthRejected(f"server refused the subscription: {item.message}", protocol=PROTOCOL, url=url)
                await on_signal(*item)
        finally:
            await _close(sio)
            _library_log.removeFilter(redact)


async def _close(sio: socketio.AsyncClient) -> None:
    try:
        await asyncio.wait_for(sio.disconnect(), CLOSE_TIMEOUT)
    except (socketio.exceptions.SocketIOError, aiohttp.ClientError, OSError, TimeoutError) as exc:
        log.debug("antring socket: close failed: %r", exc)
