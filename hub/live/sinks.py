"""Where a subscriber's events go: a bounded, non-blocking writer per connection.

The fan-out calls `Sink.write(payload)` synchronously for every subscriber that should get a
batch of events. A sink never awaits, never encodes, and never holds more than `limit`
undelivered events: past that it reports an overflow and the subscriber is disconnected
(it can resume from its last seq; nothing is lost, the store has it).

Two implementations:

- `TransportSink` writes the pre-built bytes straight to the asyncio transport under the
  ASGI server (uvicorn's httptools and websockets-sansio protocols). Its backlog is the
  number of events still in the transport's user-space write buffer, which is exact:
  `get_write_buffer_size()` tells how many of the bytes written are not yet handed to the
  kernel. Kernel socket buffers come on top of the limit.
- `QueueSink` works under any ASGI server (Starlette's TestClient included): a bounded
  queue drained by one sender task through the ASGI `send` callable.

While a subscriber catches up from the store, its sink *holds* live events instead of
writing them (see `hub.fanout`), so history and live events are never interleaved.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from hub import wire
from hub.events import Event

logger = logging.getLogger("callhub.fanout")

__all__ = ["Payload", "Sink", "TransportSink", "QueueSink", "make_sink"]

Kind = Literal["ws", "sse"]
Send = Callable[[dict[str, Any]], Any]

class Heartbeat(NamedTuple):
    """An SSE heartbeat, built once: as written to the stream, and as one HTTP chunk of it."""

    record: bytes
    chunk: bytes

    @classmethod
    def of(cls, record: bytes) -> Heartbeat:
        return cls(record, wire.http_chunk(record))


#: The default SSE heartbeat, written as one pre-built chunk to every SSE subscriber.
HEARTBEAT = Heartbeat.of(wire.sse_comment("keepalive"))


@functools.cache
def heartbeat_event(interval: float) -> Heartbeat:
    """The heartbeat as an SSE event (`?heartbeat=event`): a browser's EventSource never shows
    comments to the page, so a page that wants to notice a silently dead connection needs this.
    It has no `id:`, so it never moves a client's Last-Event-ID. Built once per interval."""
    return Heartbeat.of(b"event: heartbeat\ndata: {\"interval\": %s}\n\n" % (b"%g" % interval))


class Payload:
    """The events of one batch that one group of subscribers gets, in every wire form, built lazily once."""

    __slots__ = ("events", "last_seq", "_ws", "_sse", "_sse_chunk")

    def __init__(self, events: list[Event]) -> None:
        self.events = events
        self.last_seq = events[-1].seq
        self._ws: bytes | None = None
        self._sse: bytes | None = None
        self._sse_chunk: bytes | None = None

    def __len__(self) -> int:
        return len(self.events)

    @property
    def ws(self) -> bytes:
        if self._ws is None:
            events = self.events
            self._ws = events[0].ws_frame if len(events) == 1 else b"".join(e.ws_frame for e in events)
        return self._ws

    @property
    def sse(self) -> bytes:
        if self._sse is None:
            events = self.events
            self._sse = events[0].sse if len(events) == 1 else b"".join(e.sse for e in events)
        return self._sse

    @property
    def sse_chunk(self) -> bytes:
        if self._sse_chunk is None:
            self._sse_chunk = wire.http_chunk(self.sse)
        return self._sse_chunk


class Sink:
    """Common state: the hold used during catch-up, the last seq written, the overflow hook."""

    __slots__ = ("kind", "limit", "byte_limit", "closed", "last_seq", "held", "held_count", "held_lost", "on_overflow",
                 "_send", "beat", "floor")

    def __init__(self, kind: Kind, send: Send, limit: int, byte_limit: int = 0) -> None:
        self.kind: Kind = kind
        self.limit = limit
        #: Bytes waiting in the transport's buffer past which the subscriber is dropped too (0: none).
        self.byte_limit = byte_limit
        #: What `heartbeat()` writes (SSE only): the comment, or a `heartbeat_event`.
        self.beat = HEARTBEAT
        self.closed = False
        self.last_seq = 0
        self.held: list[Payload] | None = None
        self.held_count = 0
        self.held_lost = False
        self.on_overflow: Callable[[], None] = lambda: None
        self._send = send
        #: After a resume: the seq through which the subscriber has everything, when live events
        #: up to it may still come (this process's fan-out was behind the store); 0 otherwise.
        self.floor = 0

    # -- catch-up hold ---------------------------------------------------------------------

    def hold(self) -> None:
        self.held, self.held_count, self.held_lost = [], 0, False
        self.floor = 0  # a new catch-up writes from its own cursor

    def _hold(self, payload: Payload) -> None:
        assert self.held is not None
        if self.held_lost:
            return
        self.held.append(payload)
        self.held_count += len(payload)
        if self.held_count > self.limit:
            # Too much arrived while catching up: forget it, the catch-up will read it from the store.
            self.held, self.held_count, self.held_lost = [], 0, True

    def release(self, after: int) -> bool:
        """Write the held events newer than `after` and go live; False if some were dropped."""
        held, lost = self.held or [], self.held_lost
        if lost:
            self.hold()
            return False
        self.held = None
        events = [e for p in held for e in p.events if e.seq > after]
        self.floor = after
        if events:
            self.write(Payload(events))
        return True

    def _above_floor(self, payload: Payload) -> Payload | None:
        """`payload` without what the subscriber has already (seq <= floor); None if nothing is left.
        Live events come in seq order, so the floor is forgotten once one is past it."""
        floor, self.floor = self.floor, 0
        if payload.last_seq <= floor:
            self.floor = floor
            return None
        if payload.events[0].seq <= floor:
            return Payload([e for e in payload.events if e.seq > floor])
        return payload

    # -- writing -----------------------------------------------------------------------------

    def write(self, payload: Payload) -> None:
        raise NotImplementedError

    def heartbeat(self) -> None:
        raise NotImplementedError

    def control(self, body: bytes) -> None:
        """A WebSocket control message (`{"op": ...}`), outside the event stream and its hold; it
        counts as one event against `limit`, so answers a client never reads overflow it too."""
        raise NotImplementedError

    @property
    def backlog(self) -> int:
        """Events written but not yet handed to the kernel."""
        raise NotImplementedError

    async def drained(self, below: int, timeout: float) -> bool:
        """Wait until the backlog is under `below`; False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        delay = 0.001
        while self.backlog >= below and not self.closed:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
        return True

    async def close(self, code: int, reason: str) -> None:
        """Send the close frame (WS) or end the response (SSE)."""
        self.closed = True
        if self.kind == "ws":
            await self._send({"type": "websocket.close", "code": code, "reason": reason})
        else:
            await self._send({"type": "http.response.body", "body": b"", "more_body": False})

    def abort(self) -> None:
        """Drop the connection without ceremony (a peer that will not read its close frame)."""

    def discard(self) -> None:
        """The connection is gone: stop writing and release what the sink owns."""
        self.closed = True
        self.held = None


class TransportSink(Sink):
    __slots__ = ("transport", "_form", "_written", "_marks", "_queued")

    def __init__(self, kind: Kind, send: Send, limit: int, transport: asyncio.WriteTransport,
                 byte_limit: int = 0) -> None:
        super().__init__(kind, send, limit, byte_limit)
        self.transport = transport
        self._form = "ws" if kind == "ws" else "sse_chunk"
        # Bytes written since the buffer was last seen empty, and (end offset, events) per write
        # still in the buffer. The deque is made on first need: most sockets never back up,
        # and an empty deque costs 700 bytes per connection.
        self._written = 0
        self._marks: deque[tuple[int, int]] | None = None
        self._queued = 0

    def write(self, payload: Payload) -> None:
        if self.held is not None:
            self._hold(payload)
            return
        if self.closed:
            return
        if self.floor:
            above = self._above_floor(payload)
            if above is None:
                return
            payload = above
        data: bytes = getattr(payload, self._form)
        self.transport.write(data)
        self.last_seq = payload.last_seq
        self._account(len(data), len(payload))

    def _account(self, size: int, events: int) -> None:
        """Count `events` written as `size` bytes against the limit until the kernel has taken them."""
        pending = self.transport.get_write_buffer_size()
        if pending == 0:
            if self._queued:
                self._written, self._queued = 0, 0
                self._marks = None
            return
        self._written += size
        marks = self._marks
        if marks is None:
            marks = self._marks = deque()
        marks.append((self._written, events))
        self._queued += events
        flushed = self._written - pending
        while marks and marks[0][0] <= flushed:
            self._queued -= marks.popleft()[1]
        if self._queued > self.limit or (self.byte_limit and pending > self.byte_limit):
            self.on_overflow()

    def heartbeat(self) -> None:
        if self.held is None and not self.closed:
            self.transport.write(self.beat.chunk)

    def control(self, body: bytes) -> None:
        if not self.closed:
            frame = wire.ws_text_frame(body)
            self.transport.write(frame)
            self._account(len(frame), 1)  # a client that asks and never reads fills its buffer too

    @property
    def backlog(self) -> int:
        pending = self.transport.get_write_buffer_size()
        if pending == 0:
            return 0
        flushed = self._written - pending
        return sum(n for end, n in self._marks or () if end > flushed)

    def abort(self) -> None:
        self.transport.abort()


class QueueSink(Sink):
    __slots__ = ("_queue", "_queued", "_wake", "_task")

    def __init__(self, kind: Kind, send: Send, limit: int) -> None:
        super().__init__(kind, send, limit)
        # Payloads, raw SSE bytes (heartbeats) and WebSocket control texts, in order.
        self._queue: deque[Payload | bytes | str] = deque()
        self._queued = 0
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._sender())

    def write(self, payload: Payload) -> None:
        if self.held is not None:
            self._hold(payload)
            return
        if self.closed:
            return
        if self.floor:
            above = self._above_floor(payload)
            if above is None:
                return
            payload = above
        self._queue.append(payload)
        self._queued += len(payload)
        self.last_seq = payload.last_seq
        self._wake.set()
        if self._queued > self.limit:
            self.on_overflow()

    def heartbeat(self) -> None:
        if self.held is None and not self.closed:
            self._queue.append(self.beat.record)
            self._wake.set()

    def control(self, body: bytes) -> None:
        if not self.closed:
            self._queue.append(body.decode())
            self._queued += 1
            self._wake.set()
            if self._queued > self.limit:
                self.on_overflow()

    @property
    def backlog(self) -> int:
        return self._queued

    async def _sender(self) -> None:
        send = self._send
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue and not self.closed:
                item = self._queue.popleft()
                if isinstance(item, bytes):
                    await send({"type": "http.response.body", "body": item, "more_body": True})
                    continue
                if isinstance(item, str):
                    self._queued -= 1
                    await send({"type": "websocket.send", "text": item})
                    continue
                self._queued -= len(item)
                if self.kind == "sse":
                    await send({"type": "http.response.body", "body": item.sse, "more_body": True})
                else:
                    for event in item.events:
                        await send({"type": "websocket.send", "text": event.body.decode()})

    async def close(self, code: int, reason: str) -> None:
        self.closed = True
        self._task.cancel()
        await super().close(code, reason)

    def abort(self) -> None:
        self._task.cancel()

    def discard(self) -> None:
        super().discard()
        self._queue.clear()
        self._task.cancel()


def transport_of(send: Send, kind: Kind) -> asyncio.WriteTransport | None:
    """The transport behind an ASGI `send`, when the server is one whose framing we know.

    uvicorn passes bound methods: for WebSockets, of its websockets-sansio protocol (which
    writes complete frames, so our frames can go between them); for HTTP, of its httptools
    request cycle, once it has chosen chunked encoding for the response.
    """
    owner = getattr(send, "__self__", None)
    if owner is None:
        return None
    name = type(owner).__name__
    transport: asyncio.WriteTransport | None = getattr(owner, "transport", None)
    if transport is None or not hasattr(transport, "get_write_buffer_size"):
        return None
    if kind == "ws" and isinstance(owner, WebSocketsSansIOProtocol):
        return transport
    if kind == "sse" and name == "RequestResponseCycle" and getattr(owner, "chunked_encoding", None) is True:
        return transport
    return None


def make_sink(kind: Kind, send: Send, limit: int, byte_limit: int = 0) -> Sink:
    """A sink for `send`: at most `limit` events (and, under uvicorn, `byte_limit` bytes) unsent."""
    transport = transport_of(send, kind)
    if transport is not None:
        return TransportSink(kind, send, limit, transport, byte_limit)
    return QueueSink(kind, send, limit)
