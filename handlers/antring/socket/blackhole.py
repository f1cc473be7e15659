"""`ws_protocol = "blackhole"`: KAZOO 4's Blackhole over a plain WebSocket with JSON messages.

    client → {"action": "subscribe", "auth_token": …, "request_id": …,
              "data": {"account_id": …, "binding": "call.CHANNEL_CREATE.*"}}
    server → {"action": "reply", "request_id": …, "status": "success" | "error", "data": …}
    server → {"action": "event", "subscribed_key": "call.CHANNEL_CREATE.*", "name": "CHANNEL_CREATE",
              "routing_key": "call.CHANNEL_CREATE.<call id>", "data": {…KAZOO…}}

Events are read tolerantly: the name from `name`, else the payload's `Event-Name`; the payload from
`data`, else `args`, unwrapped if it is itself `{name, args}`. The URL's path is used as given.

Every subscribe must be answered within `open_timeout`. Liveness: WebSocket pings every
`PING_INTERVAL`, the connection is dead after `PING_TIMEOUT` without a pong (`ConnectionLost`).

Auth rejection is not documented by AntBuddy. ASSUMPTION: a server that refuses the token answers
the subscribe with `"status": "error"` (KAZOO's convention); every error reply is raised as
`AuthRejected`, carrying the server's message.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import orjson

from .base import (
    AuthRejected,
    OnSignal,
    OnSubscribed,
    error_message,
    event_name,
    notify,
    open_websocket,
    recv_text,
    send_text,
    transport_url,
    unwrap,
)

PROTOCOL = "blackhole"
PING_INTERVAL = 20.0
PING_TIMEOUT = 20.0

log = logging.getLogger(__name__)


def event_signal(message: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(event name, bare KAZOO payload) of a Blackhole event message; None if it carries no object."""
    raw = message["data"] if "data" in message else message.get("args")
    wrapped_name, payload = unwrap(raw)
    if payload is None:
        return None
    name = event_name(message.get("name"), wrapped_name, payload=payload)
    return (name, payload) if name else None


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
    target = transport_url(url, websocket=True)
    ws = await open_websocket(
        target, protocol=PROTOCOL, shown_url=url, open_timeout=open_timeout,
        ping_interval=PING_INTERVAL, ping_timeout=PING_TIMEOUT,
    )
    try:
        pending: dict[str, str] = {}
        for binding in bindings:
            request_id = uuid.uuid4().hex
            pending[request_id] = binding
            subscribe = {
                "action": "subscribe",
                "auth_token": auth_token,
                "request_id": request_id,
                "data": {"account_id": account_id, "binding": binding},
            }
            await send_text(ws, orjson.dumps(subscribe).decode(), protocol=PROTOCOL, shown_url=url)
        deadline = asyncio.get_running_loop().time() + open_timeout
        while True:
            timeout = max(0.0, deadline - asyncio.get_running_loop().time()) if pending else None
            text = await recv_text(ws, timeout, what="subscribe reply", protocol=PROTOCOL, shown_url=url)
            try:
                message = orjson.loads(text)
            except orjson.JSONDecodeError:
                log.warning("antring socket: ignoring a message that is not JSON (%d bytes)", len(text))
                continue
            if not isinstance(message, dict):
                continue
            action = message.get("action")
            if action == "reply" and message.get("request_id") in pending:
                binding = pending.pop(message["request_id"])
                if message.get("status") == "error":
                    raise AuthRejected(
                        f"server refused {binding}: {error_message(message)}", protocol=PROTOCOL, url=url
                    )
                if not pending:
                    log.info("antring socket subscribed account=%s bindings=%s (%s)", account_id, bindings, PROTOCOL)
                    await notify(on_subscribed)
            elif action == "event" or (action is None and "routing_key" in message):
                signal = event_signal(message)
                if signal is None:
                    log.warning("antring socket: ignoring an event without a name or object payload")
                else:
                    await on_signal(*signal)
    finally:
        await ws.close()
