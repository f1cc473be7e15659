"""uvicorn's protocols, with what a public service needs and uvicorn lacks.

HTTP (httptools), with two timeouts.

uvicorn closes a connection that stays idle between requests (`timeout_keep_alive`), but a
client that opens a connection and sends a request head one byte at a time, or declares a
body and never sends it, holds a connection and a task for as long as it likes. Here:

- the request head (request line and headers) must arrive within `header_timeout` of the
  connection opening or of the request's first byte;
- the body must arrive within `body_timeout` of the head.

Past either, the client gets `408 Request Timeout` (unless an answer already started) and the
connection is closed; a handler waiting for the body sees the client gone. WebSocket upgrades
and bodiless requests never arm the body timer.

WebSocket (websockets-sansio): a handshake refused with an HTTP answer (the denial response
extension: the hub's 401/403/429 JSON) counts as a completed handshake; uvicorn would log an
ERROR for every refused client, which an attacker could use to flood the log.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from uvicorn._types import ASGISendEvent
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

__all__ = ["GuardedHttpToolsProtocol", "guarded_protocol", "WebSocketProtocol"]

_TIMEOUT_ANSWER = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b'content-length: %d\r\n\r\n%s'
)


def _answer(message: bytes) -> bytes:
    body = b'{"error":{"code":"request_timeout","message":"%s"}}' % message
    return _TIMEOUT_ANSWER % (len(body), body)


_HEAD_LATE = _answer(b"the request head did not arrive in time")
_BODY_LATE = _answer(b"the request body did not arrive in time")


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, header_timeout: float, body_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self._deadline: asyncio.TimerHandle | None = None

    def _arm(self, seconds: float, answer: bytes) -> None:
        self._disarm()
        if seconds > 0:
            self._deadline = self.loop.call_later(seconds, self._expired, answer)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self, answer: bytes) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is None or cycle.response_complete or not cycle.response_started:
            self.transport.write(answer)
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.header_timeout, _HEAD_LATE)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm(self.header_timeout, _HEAD_LATE)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()
        if not self.transport.is_closing() and not (self.parser.should_upgrade() and self._should_upgrade()):
            # Disarmed again at once by on_message_complete for a request without a body.
            self._arm(self.body_timeout, _BODY_LATE)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()


def guarded_protocol(*, header_timeout: float, body_timeout: float) -> Any:
    """What `uvicorn.Config(http=...)` takes: the protocol class with the timeouts bound."""
    return functools.partial(GuardedHttpToolsProtocol, header_timeout=header_timeout, body_timeout=body_timeout)


class WebSocketProtocol(WebSocketsSansIOProtocol):
    async def send(self, message: ASGISendEvent) -> None:
        await super().send(message)
        if message["type"] == "websocket.http.response.body" and not message.get("more_body", False):
            self.handshake_complete = True  # answered (refused) over HTTP: nothing is missing
