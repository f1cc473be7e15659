"""The AntRing call-signal socket: subscribe to KAZOO call events over one of four protocol revisions.

AntBuddy documents a Socket.IO endpoint (`io.connect('https://ws.antbuddy.com:5557')`, one
`subscribe` emit per binding) but not which Socket.IO revision it runs, and the revisions do not
interoperate; newer KAZOO speaks the same subscribe as plain WebSocket JSON. `[antring]
ws_protocol` picks one, each in its own module, imported only when used:

    socketio        Socket.IO JS 3/4, Engine.IO 4 (python-socketio)     socketio_v4.py
    socketio-eio3   Socket.IO JS 1/2, Engine.IO 3 (websocket only)      socketio_eio3.py
    socketio-0.9    Socket.IO 0.9 (websocket only)                      socketio_09.py
    blackhole       KAZOO 4 Blackhole, plain WebSocket JSON             blackhole.py

`stream_signals` is one connection: it ends with an exception, never quietly, and does not
reconnect; the consumer owns reconnects, token refresh and gap reconciliation.
"""

from __future__ import annotations

import importlib
import logging

from .base import AuthRejected, ConnectionLost, OnSignal, OnSubscribed, SignalStreamError

__all__ = [
    "PROTOCOLS",
    "AuthRejected",
    "ConnectionLost",
    "OnSignal",
    "OnSubscribed",
    "SignalStreamError",
    "stream_signals",
]

#: `ws_protocol` → the module implementing it.
PROTOCOLS = {
    "socketio": "socketio_v4",
    "socketio-eio3": "socketio_eio3",
    "socketio-0.9": "socketio_09",
    "blackhole": "blackhole",
}
#: Bound on connecting, handshaking and (for Blackhole) every subscribe reply.
DEFAULT_OPEN_TIMEOUT = 10.0

log = logging.getLogger(__name__)


async def stream_signals(
    protocol: str,
    url: str,
    *,
    account_id: str,
    auth_token: str,
    bindings: list[str],
    on_signal: OnSignal,
    on_subscribed: OnSubscribed | None = None,
    open_timeout: float = DEFAULT_OPEN_TIMEOUT,
) -> None:
    """Connect to `url` speaking `protocol`, subscribe every binding, and deliver call events.

    `await on_signal(name, payload)` runs for every call event, in arrival order, with the event
    name (`CHANNEL_CREATE`) and the bare KAZOO payload (unwrapped from `{name, args}`).
    `on_subscribed()` runs once every subscribe was sent (for Blackhole: acknowledged).

    Runs until the connection ends, and then raises: `ConnectionLost` when it could not be opened
    within `open_timeout`, a heartbeat timed out or the server closed it; `AuthRejected` when the
    server refused `auth_token`. Exceptions from the callbacks propagate; cancelling closes the
    connection. The token is never logged.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown ws_protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    if not bindings:
        raise ValueError("at least one binding is needed")
    module = importlib.import_module(f"{__name__}.{PROTOCOLS[protocol]}")
    log.info("antring socket connecting to %s (%s) account=%s", url, protocol, account_id)
    await module.stream(
        url,
        account_id=account_id,
        auth_token=auth_token,
        bindings=list(bindings),
        on_signal=on_signal,
        on_subscribed=on_subscribed,
        open_timeout=open_timeout,
    )
