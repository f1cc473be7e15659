"""uvicorn's protocols, with the limits a public service needs and uvicorn lacks.

HTTP (httptools):

- the request head (request line and headers) must arrive within `header_timeout` of the
  connection opening or of the request's first byte, and may be at most `max_head` bytes
  (431 past it: httptools would otherwise buffer a header of any size);
- the body must arrive within `body_timeout` of the head;
- an answer the client does not read may keep the transport's buffer full for at most
  `send_timeout`: then the connection is cut (a client that requests and never reads would
  otherwise hold its connection slot forever);
- at most `MAX_PIPELINED` requests may wait behind the one running (HTTP pipelining, which no
  browser uses, would otherwise queue any number of answers for a client that never reads);
- when the connection is lost, every request still running or queued on it is told so, so
  none writes to a closed transport (uvicorn marks only the last one parsed).

Past a time limit the client gets `408 Request Timeout` (unless an answer already started) and
the connection is closed; a handler waiting for the body sees the client gone. WebSocket
upgrades and bodiless requests never arm the body timer.

WebSocket (websockets-sansio):

- a handshake refused with an HTTP answer (the denial response extension: the hub's
  401/403/429 JSON) counts as a completed handshake; uvicorn would log an ERROR for every
  refused client, which an attacker could use to flood the log;
- pings and pongs are limited to `max_control_per_s` per connection (1008 past it), and a
  client whose unread answers pass `max_unread` bytes is cut: uvicorn answers every ping with a
  pong and never reads the write buffer's size;
- a client that misses the keepalive ping is cut (`abort`), not closed: a close waits for a
  write buffer the client will never read.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from typing import Any

from uvicorn._types import ASGISendEvent
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

__all__ = ["Limits", "GuardedHttpToolsProtocol", "WebSocketProtocol", "protocols", "MAX_PIPELINED"]

#: Requests that may wait behind the one running on a connection.
MAX_PIPELINED = 8


@dataclass(frozen=True, slots=True)
class Limits:
    header_timeout: float
    body_timeout: float
    send_timeout: float
    max_head: int
    max_unread: int
    max_control_per_s: int


def _answer(status: bytes, code: bytes, message: bytes) -> bytes:
    body = b'{"error":{"code":"%s","message":"%s"}}' % (code, message)
    return (b"HTTP/1.1 %s\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%s"
            % (status, len(body), body))


_HEAD_LATE = _answer(b"408 Request Timeout", b"request_timeout", b"the request head did not arrive in time")
_BODY_LATE = _answer(b"408 Request Timeout", b"request_timeout", b"the request body did not arrive in time")
_HEAD_TOO_LARGE = _answer(b"431 Request Header Fields Too Large", b"header_too_large",
                          b"the request head is larger than the hub accepts")


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, limits: Limits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self._deadline: asyncio.TimerHandle | None = None
        self._send_deadline: asyncio.TimerHandle | None = None
        #: Bytes received while the current request's head is incomplete.
        self._head_bytes = 0
        self._in_head = True
        #: The request whose handler runs now (uvicorn keeps only the last one parsed).
        self._running: RequestResponseCycle | None = None

    # -- timers ------------------------------------------------------------------------------

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

    def _refuse(self, answer: bytes) -> None:
        self._disarm()
        self.transport.write(answer)
        self.transport.close()

    # -- connection --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.limits.header_timeout, _HEAD_LATE)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._stop_send_deadline()
        for cycle in [self._running, *(c for c, _ in self.pipeline)]:
            if cycle is not None and not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._in_head and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_head:
                self._refuse(_HEAD_TOO_LARGE)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._send_deadline is None and self.limits.send_timeout > 0:
            self._send_deadline = self.loop.call_later(self.limits.send_timeout, self.transport.abort)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._stop_send_deadline()

    def _stop_send_deadline(self) -> None:
        if self._send_deadline is not None:
            self._send_deadline.cancel()
            self._send_deadline = None

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        self._running = cycle
        super()._start_asgi_task(cycle, app)

    # -- parser callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._arm(self.limits.header_timeout, _HEAD_LATE)

    def on_headers_complete(self) -> None:
        self._disarm()
        self._in_head, self._head_bytes = False, 0
        if len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers) > self.limits.max_head:
            self._refuse(_HEAD_TOO_LARGE)  # arrived whole in one read; `data_received` counts the rest
            return
        super().on_headers_complete()
        if len(self.pipeline) > MAX_PIPELINED:
            self.transport.abort()
            return
        if not self.transport.is_closing() and not (self.parser.should_upgrade() and self._should_upgrade()):
            # Disarmed again at once by on_message_complete for a request without a body.
            self._arm(self.limits.body_timeout, _BODY_LATE)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()


class WebSocketProtocol(WebSocketsSansIOProtocol):
    def __init__(self, *args: Any, limits: Limits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self._control_second = 0.0
        self._control_count = 0

    async def send(self, message: ASGISendEvent) -> None:
        await super().send(message)
        if message["type"] == "websocket.http.response.body" and not message.get("more_body", False):
            self.handshake_complete = True  # answered (refused) over HTTP: nothing is missing

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self.transport.is_closing() and self.transport.get_write_buffer_size() > self.limits.max_unread:
            self.transport.abort()  # it asks and never reads: what it asked for stays unread

    def handle_ping(self) -> None:
        if self._control_frame():
            super().handle_ping()

    def handle_pong(self, event: Any) -> None:
        if self._control_frame():
            super().handle_pong(event)

    def _control_frame(self) -> bool:
        """Count one ping or pong; past the rate, fail the connection (1008) and say False."""
        now = self.loop.time()
        if now - self._control_second >= 1.0:
            self._control_second, self._control_count = now, 0
        self._control_count += 1
        if self._control_count <= self.limits.max_control_per_s:
            return True
        if not self.close_sent:
            self.conn.fail(1008, "too many control frames")
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.close_sent = True
        self.transport.abort()
        return False

    def keepalive_timeout(self) -> None:
        super().keepalive_timeout()
        self.transport.abort()


def protocols(limits: Limits) -> tuple[Any, Any]:
    """What `uvicorn.Config(http=..., ws=...)` take: both protocol classes with the limits bound."""
    return (functools.partial(GuardedHttpToolsProtocol, limits=limits),
            functools.partial(WebSocketProtocol, limits=limits))
