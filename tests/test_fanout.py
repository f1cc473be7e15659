"""Fan-out behaviour a subscriber notices: everyone gets everything, a slow one is cut off alone, and loses nothing."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from hub.config import BackendConfig
from hub.events import Event, prepare_event
from hub.live.fanout import Fanout, Subscriber
from hub.live.sinks import QueueSink
from hub.matcher import MATCH_ALL
from hub.ops.metrics import Metrics
from hub.store import open_backend
from tests.helpers import (
    ADMIN,
    ADMIN_KEY,
    TICK,
    WAIT,
    ServerThread,
    SSEReader,
    event,
    iter_ws_json,
    make_config,
)

#: Big enough that a few hundred events fill the kernel's socket buffers.
BIG = "x" * 16_000
#: Bound on publishes while waiting for a slow subscriber to overflow.
MAX_PUBLISHES = 3000


@pytest.fixture
def small_buffer_server(data_dir: Path) -> Iterator[ServerThread]:
    with ServerThread(make_config(data_dir, streams={"buffer": 20, "close_timeout": 20 * TICK})) as s:
        yield s


def _small_socket(port: int) -> socket.socket:
    """A client socket with a small receive buffer, so a client that stops reading backs up quickly."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    return sock


def _publish_until_dropped(server: ServerThread, transport: str) -> list[int]:
    seqs: list[int] = []
    with httpx.Client(base_url=server.url, headers=ADMIN, timeout=WAIT) as client:
        for i in range(MAX_PUBLISHES):
            seqs.append(client.post("/v1/events", json=event("call.ringing", n=i, pad=BIG)).json()["seq"])
            if i % 20 == 19 and server.metric(
                "callhub_subscribers_dropped_total", transport=transport, reason="slow_consumer"
            ):
                return seqs
    raise AssertionError("the slow subscriber was never dropped")


def test_every_subscriber_gets_every_event_in_order(server: ServerThread) -> None:
    """Forty WebSocket and SSE subscribers with different filters each get exactly their events, in order."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(connect(f"{server.ws_url}/v1/ws?token={ADMIN_KEY}")) for _ in range(20)]
        filtered = [stack.enter_context(connect(f"{server.ws_url}/v1/ws?token={ADMIN_KEY}&types=call.end*"))
                    for _ in range(10)]
        client = stack.enter_context(httpx.Client(timeout=WAIT))
        streams = [SSEReader(stack.enter_context(client.stream("GET", f"{server.url}/v1/stream?token={ADMIN_KEY}")))
                   for _ in range(10)]
        server.wait_subscribers(40)
        seqs = server.publish(*[event("call.ringing" if i % 3 else "call.ended", n=i) for i in range(30)])
        ended = seqs[::3]
        for ws in sockets:
            assert [e["seq"] for e in iter_ws_json(ws, 30)] == seqs
        for ws in filtered:
            assert [e["seq"] for e in iter_ws_json(ws, len(ended))] == ended
        for stream in streams:
            assert [int(e.id or 0) for e in stream.take(30)] == seqs
    assert server.metric("callhub_events_delivered_total", transport="ws") == 20 * 30 + 10 * len(ended)
    assert server.metric("callhub_events_delivered_total", transport="sse") == 10 * 30


def test_slow_ws_subscriber_is_closed_1013_alone_and_resumes_without_loss(small_buffer_server: ServerThread) -> None:
    """A WS subscriber that stops reading is closed with 1013; a fast one is not delayed; the slow one resumes losing nothing."""
    server = small_buffer_server
    received_fast: list[int] = []
    with connect(f"{server.ws_url}/v1/ws?token={ADMIN_KEY}", max_queue=4, sock=_small_socket(server.port)) as slow, \
            connect(f"{server.ws_url}/v1/ws?token={ADMIN_KEY}", max_size=None) as fast:
        server.wait_subscribers(2)

        def read_fast() -> None:
            with contextlib.suppress(ConnectionClosed, TimeoutError):
                while True:
                    received_fast.append(orjson.loads(fast.recv(timeout=20 * TICK))["seq"])

        reader = threading.Thread(target=read_fast)
        reader.start()
        seqs = _publish_until_dropped(server, "ws")
        # The slow one now reads: what was buffered, then the close frame.
        got: list[int] = []
        with pytest.raises(ConnectionClosed) as info:
            while True:
                got.append(orjson.loads(slow.recv(timeout=WAIT))["seq"])
        assert info.value.rcvd is not None and info.value.rcvd.code == 1013
        assert "slow" in info.value.rcvd.reason
        reader.join(WAIT)
    assert received_fast == seqs, "the fast subscriber missed events or was held back"
    assert got == seqs[: len(got)], "delivered events are a prefix, in order"
    with connect(f"{server.ws_url}/v1/ws?token={ADMIN_KEY}&after={got[-1]}", max_size=None) as again:
        rest = [e["seq"] for e in iter_ws_json(again, len(seqs) - len(got))]
    assert got + rest == seqs


def test_slow_sse_subscriber_stream_ends_and_resumes_without_loss(small_buffer_server: ServerThread) -> None:
    """An SSE subscriber that stops reading has its stream ended; with Last-Event-ID it gets the rest."""
    server = small_buffer_server
    sock = _small_socket(server.port)
    sock.sendall(f"GET /v1/stream?token={ADMIN_KEY} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    try:
        server.wait_subscribers(1)
        seqs = _publish_until_dropped(server, "sse")
        data = bytearray()
        sock.settimeout(WAIT)
        while not data.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(1 << 20)
            assert chunk, "connection closed before the stream's last chunk"
            data += chunk
    finally:
        sock.close()
    got = [int(line[4:]) for line in bytes(data).split(b"\n") if line.startswith(b"id: ")]
    assert got == seqs[: len(got)] and len(got) < len(seqs)
    with httpx.Client(timeout=WAIT) as client, client.stream(
        "GET", f"{server.url}/v1/stream?token={ADMIN_KEY}", headers={"Last-Event-ID": str(got[-1])}
    ) as response:
        rest = [int(e.id or 0) for e in SSEReader(response).take(len(seqs) - len(got))]
    assert got + rest == seqs


def test_subscribers_endpoint_shows_transport_agent_filter_and_buffer(server: ServerThread) -> None:
    """`GET /v1/subscribers` lists who is connected: transport, agent, filter, since, buffer fill."""
    with connect(f"{server.ws_url}/v1/ws?token={ADMIN_KEY}&types=call.*"):
        (sub,) = server.wait_subscribers(1)
    assert sub["transport"] == "ws" and sub["types"] == ["call.*"] and sub["agent"] is None
    assert sub["buffer"] == {"events": 0, "limit": 1000, "fill": 0.0}
    assert sub["since"].endswith("Z")
    time.sleep(TICK)
    assert server.subscribers() == []


class _Resume:
    """A real fan-out over a real store holding three events, whose commit reports the test
    hands to the fan-out by hand, and one WebSocket-like subscriber recording the seqs sent."""

    def __init__(self, data_dir: Path) -> None:
        self.told: list[list[Event]] = []
        self.backend = open_backend(BackendConfig(url="local", synchronous="normal"), data_dir)
        self.fanout = Fanout(self.backend, Metrics(), catchup_page=100, close_timeout=1.0, sse_heartbeat=30.0)
        self.received: list[int] = []

    async def append(self, n: int) -> None:
        await self.backend.append(prepare_event(event("call.ringing", n=n)), agent=None, received=0.0)

    async def send(self, message: dict[str, Any]) -> None:
        self.received.append(orjson.loads(message["text"])["seq"])

    async def resume(self, after: int) -> None:
        subscriber = Subscriber(transport="ws", principal="admin", agent=None, filter=MATCH_ALL,
                                sink=QueueSink("ws", self.send, 100), remote="test")
        self.fanout.register(subscriber, expires_at=None)
        self.fanout.subscribe(subscriber, after=after)
        assert subscriber.catchup is not None
        await asyncio.wait_for(subscriber.catchup, 2.0)  # read the store and went live

    @classmethod
    def received_after(cls, data_dir: Path, steps: Callable[[_Resume], Awaitable[None]]) -> list[int]:
        """What the subscriber was sent once `steps` ran (and the sender had time to send)."""

        async def main() -> list[int]:
            resume = cls(data_dir)
            await resume.backend.start(resume.told.append)
            try:
                for i in range(3):
                    await resume.append(i)
                await steps(resume)
                for _ in range(10):
                    await asyncio.sleep(0.01)
                return resume.received
            finally:
                await resume.backend.close()

        return asyncio.run(main())


def test_a_resume_that_reads_an_event_stored_but_not_yet_published_sends_it_once(data_dir: Path) -> None:
    """The store may hold an event the fan-out has not been told of yet (SQLite's writer has
    committed it; Redis has it from another process): a resume reading history at that moment
    sends it once, when it is published, not also from the read (CI saw seq 51 twice)."""

    async def steps(resume: _Resume) -> None:
        resume.fanout.publish(resume.told[0])
        resume.fanout.publish(resume.told[1])  # seq 3 is stored, the fan-out is not told yet
        await resume.resume(after=0)
        resume.fanout.publish(resume.told[2])

    assert _Resume.received_after(data_dir, steps) == [1, 2, 3]


def test_a_resume_finishes_when_the_fan_out_was_told_of_more_than_the_store_holds(data_dir: Path) -> None:
    """A store that lost writes it had acknowledged (Redis with `appendfsync everysec` after a
    crash) holds less than the fan-out has published: a resume reads what is there and goes
    live, rather than reading again and again for events that will never be stored."""

    async def steps(resume: _Resume) -> None:
        for batch in resume.told:
            resume.fanout.publish(batch)
        # What the store lost: published, no longer stored.
        resume.fanout.publish([Event(seq, "call.ringing", None, b"{}") for seq in range(4, 11)])
        await resume.resume(after=0)

    assert _Resume.received_after(data_dir, steps) == [1, 2, 3]


def test_a_resume_past_what_this_process_has_published_gets_nothing_it_already_has(data_dir: Path) -> None:
    """Behind a load balancer a client may resume on a process whose fan-out is a few events
    behind the shared store, from a seq it got elsewhere: the events up to that seq, when this
    process publishes them, are not sent again."""

    async def steps(resume: _Resume) -> None:
        resume.fanout.publish(resume.told[0])  # this process has published seq 1 only
        await resume.resume(after=3)  # the client has 1..3
        resume.fanout.publish(resume.told[1])
        resume.fanout.publish(resume.told[2])
        await resume.append(3)
        resume.fanout.publish(resume.told[3])

    assert _Resume.received_after(data_dir, steps) == [4]
