"""Fan-out benchmark client for callhub: N WebSocket and/or M SSE subscribers, one paced publisher.

Opens the subscriber connections in K worker processes (each a raw asyncio Protocol on its own
uvloop/asyncio loop, parsing with the sans-I/O `websockets` and `h11` state machines so the client's
per-message cost stays low), publishes E events at R events/s through `POST /v1/events`, and reports
deliveries, loss, duplicates, end-to-end latency (publish `time.time_ns()` -> receipt), the hub's CPU
per delivery and RSS per connection, and the client's own CPU so a client-bound run can be told apart
from a hub-bound one.

    python -m bench.fanout --url http://127.0.0.1:8080 --key KEY --ws 100 --events 2000 --rate 500
    python -m bench.fanout --url http://127.0.0.1:8080 --key KEY --ws 5000 --idle --hub-pid PID

See bench/README.md for the standard scenarios and how to read the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import multiprocessing
import os
import random
import resource
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from array import array
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any, cast
from urllib.parse import urlencode, urlsplit

import h11
import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidState
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

try:  # uvloop trims the event loop's own cost per read; plain asyncio works too, a little slower.
    import uvloop
except ImportError:  # pragma: no cover - depends on the environment
    uvloop = None

# --- Limits and timings -------------------------------------------------------------------------

#: How long to wait, after the last publish, for every subscriber to receive every event.
DEFAULT_DRAIN_TIMEOUT_S = 30.0
#: Connection attempts in flight at once (across all workers): more would overrun the hub's
#: accept backlog and turn a capacity test into a SYN-retry test.
CONNECT_CONCURRENCY = 100
#: One attempt (TCP connect + HTTP/WebSocket handshake) may take this long.
CONNECT_TIMEOUT_S = 10.0
#: Attempts per connection; a refused or reset attempt under load is retried after a back-off.
CONNECT_ATTEMPTS = 3
CONNECT_BACKOFF_S = 0.25
#: The whole connect phase, all workers, must finish within this.
CONNECT_PHASE_TIMEOUT_S = 300.0
#: After all handshakes complete, the hub may still be registering subscriptions; publishing at once
#: would count events published before a subscription existed as "lost".
PRE_PUBLISH_SETTLE_S = 1.0
#: --idle: time for the hub's RSS to settle (allocator, per-connection buffers) before sampling it.
IDLE_SETTLE_S = 5.0
#: Publisher: concurrent in-flight POSTs, enough to hold the rate when one request is slow.
PUBLISH_CONCURRENCY = 8
PUBLISH_TIMEOUT_S = 10.0
#: A publish reply is tiny; these bound the reads spent on one.
PUBLISH_READ_BYTES = 64 * 1024
PUBLISH_MAX_READS = 1024
#: Latency samples kept per worker; beyond this a uniform reservoir sample replaces them.
LATENCY_SAMPLE_CAP = 1_000_000
#: How often a draining worker checks whether its subscribers are complete.
DRAIN_POLL_S = 0.05
#: Slack for a worker to analyse and reply after its own deadline has passed.
WORKER_REPLY_MARGIN_S = 60.0
#: A worker waits at most this long for the next command beyond the expected run time.
WORKER_COMMAND_MARGIN_S = 600.0
WORKER_EXIT_TIMEOUT_S = 15.0
#: After closing its connections a worker lingers this long so close frames and FINs get out.
WORKER_CLOSE_LINGER_S = 0.2
#: Largest WebSocket message accepted; a bench event is a few hundred bytes.
WS_MAX_MESSAGE_BYTES = 1 << 20
#: SSE framing sanity limits: a chunk-size line is a few hex digits; an event line one CloudEvent.
SSE_MAX_CHUNK_LINE = 1024
SSE_MAX_LINE = 1 << 20
#: Up to this many connections one worker process keeps up; above it, DEFAULT_MULTI_WORKERS.
SINGLE_WORKER_MAX_CONNS = 200
DEFAULT_MULTI_WORKERS = 2
#: Sanity bounds on the command line, so a typo cannot start an unbounded run.
MAX_WORKERS = 32
MAX_CONNECTIONS = 100_000
MAX_EVENTS = 10_000_000
MAX_RATE = 1_000_000.0
#: A worker using this share of one core or more was probably the bottleneck, not the hub.
CLIENT_SATURATED_PCT = 90.0
#: --spawn-cmd: how long the hub may take to answer GET /healthz with 200, and poll interval.
SPAWN_READY_TIMEOUT_S = 30.0
SPAWN_POLL_S = 0.2
SPAWN_STOP_TIMEOUT_S = 10.0
#: File descriptors besides the subscriber sockets: publisher, pipes, stdio and the like.
FD_HEADROOM = 64
#: Connection errors quoted per worker in the report (the rest are only counted).
ERROR_SAMPLES = 5

EVENTS_PATH = "/v1/events"
WS_PATH = "/v1/ws"
SSE_PATH = "/v1/stream"
HEALTH_PATH = "/healthz"
METRICS_PATH = "/metrics"
DEFAULT_TYPES = "bench.*"
DEFAULT_EVENT_TYPE = "bench.tick"
EVENT_SOURCE = "bench"

_OP_TEXT = Opcode.TEXT
_OP_BINARY = Opcode.BINARY
_OP_CONT = Opcode.CONT
_loads = orjson.loads
_time_ns = time.time_ns


# --- Small helpers ------------------------------------------------------------------------------


def raise_nofile_limit() -> int:
    """Raise the soft file-descriptor limit to the hard one (5,000+ sockets need it); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass  # keep the old limit; connections beyond it will be reported as failed
    return soft


def own_cpu_s() -> float:
    """User + system CPU seconds of this process."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def machine_busy_cpu_s() -> float | None:
    """CPU seconds all cores spent not idle, machine-wide (None without psutil).

    Minus the hub's and the client's share this shows what else competed for the cores.
    """
    try:
        import psutil
    except ImportError:
        return None
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def new_event_loop() -> asyncio.AbstractEventLoop:
    return uvloop.new_event_loop() if uvloop is not None else asyncio.new_event_loop()


def percentile(sorted_values: Sequence[int], pct: float) -> int:
    """Nearest-rank percentile of an already sorted sequence (0 when empty)."""
    if not sorted_values:
        return 0
    rank = max(1, min(len(sorted_values), round(pct / 100.0 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


# --- Per-subscriber bookkeeping (worker side) ---------------------------------------------------


class LatencyStore:
    """All latency samples (ns) up to a cap, then a uniform reservoir sample (Algorithm R)."""

    __slots__ = ("samples", "seen", "cap", "floor_ns", "_rng")

    def __init__(self, cap: int = LATENCY_SAMPLE_CAP) -> None:
        self.samples = array("q")
        self.seen = 0
        self.cap = cap
        # Events stamped before this run's first publish (a replay, an earlier run) are not ours.
        self.floor_ns = 0
        self._rng = random.Random(0x5EED)  # fixed seed: repeatable runs sample alike

    def add(self, value: int) -> None:
        self.seen += 1
        if len(self.samples) < self.cap:
            self.samples.append(value)
            return
        slot = self._rng.randrange(self.seen)
        if slot < self.cap:
            self.samples[slot] = value


class Subscriber:
    """What one connection received: seqs in arrival order, plus counters. Kept lean: hot path."""

    __slots__ = ("seqs", "count", "last_ns", "closed", "unparsable", "unsequenced", "latency", "checked_at")

    def __init__(self, latency: LatencyStore) -> None:
        self.seqs = array("q")
        self.count = 0
        self.last_ns = 0
        self.closed = False
        self.unparsable = 0
        self.unsequenced = 0
        self.latency = latency
        self.checked_at = -1  # `count` when completeness was last checked, to avoid re-checking

    def record(self, payload: bytes | bytearray | memoryview, id_seq: int | None) -> None:
        """Account one message: ignore control objects (no "specversion"), keep seq and latency."""
        now = _time_ns()  # before parsing: latency is to the socket, not to our JSON decoder
        try:
            obj = _loads(payload)
        except orjson.JSONDecodeError:
            self.unparsable += 1
            return
        if type(obj) is not dict or "specversion" not in obj:
            return
        seq = obj.get("seq", id_seq)
        if type(seq) is not int:
            self.unsequenced += 1
            return
        self.seqs.append(seq)
        self.count += 1
        self.last_ns = now
        data = obj.get("data")
        if type(data) is dict:
            t_ns = data.get("t_ns")
            if type(t_ns) is int and t_ns >= self.latency.floor_ns:
                self.latency.add(now - t_ns)

    def is_complete(self, published: set[int]) -> bool:
        """Has every published seq arrived? Re-checked only when more events came in."""
        if self.count < len(published):
            return False
        if self.checked_at == self.count:
            return False
        self.checked_at = self.count
        return published.issubset(self.seqs)


class HandshakeFailed(Exception):
    """The hub refused the stream (HTTP status other than 101/200, or wrong content type)."""


class WsClient(asyncio.Protocol):
    """A WebSocket subscriber on the sans-I/O `websockets` ClientProtocol."""

    def __init__(self, uri_text: str, sub: Subscriber, ready: asyncio.Future[None]) -> None:
        self.uri = parse_uri(uri_text)
        self.sub = sub
        self.ready = ready
        self.transport: asyncio.Transport | None = None
        self.proto: ClientProtocol | None = None
        self.fragments: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports don't subclass it
        # No extensions offered: permessage-deflate would cost CPU on both ends per message.
        self.proto = ClientProtocol(self.uri, max_size=WS_MAX_MESSAGE_BYTES)
        self.proto.send_request(self.proto.connect())
        self._flush()

    def data_received(self, data: bytes) -> None:
        proto = self.proto
        assert proto is not None
        proto.receive_data(data)
        for event in proto.events_received():
            if type(event) is Frame:
                self._on_frame(event)
            elif isinstance(event, Response):
                self._on_handshake()
        # Pongs for the hub's pings and the reply to a close frame are queued by the protocol.
        self._flush()

    def _on_frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is _OP_TEXT or opcode is _OP_BINARY:
            if frame.fin:
                self.sub.record(frame.data, None)
            else:
                self.fragments = [bytes(frame.data)]
        elif opcode is _OP_CONT and self.fragments:
            self.fragments.append(bytes(frame.data))
            if frame.fin:
                payload, self.fragments = b"".join(self.fragments), []
                self.sub.record(payload, None)

    def _on_handshake(self) -> None:
        assert self.proto is not None
        if self.ready.done():
            return
        exc = self.proto.handshake_exc
        if exc is None:
            self.ready.set_result(None)
        else:
            self.ready.set_exception(HandshakeFailed(f"websocket handshake: {exc}"))

    def _flush(self) -> None:
        assert self.proto is not None and self.transport is not None
        for chunk in self.proto.data_to_send():
            if chunk:
                self.transport.write(chunk)
            elif self.transport.can_write_eof():  # SEND_EOF: the protocol asks for a half-close
                self.transport.write_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        self.sub.closed = True
        if self.proto is not None:
            self.proto.receive_eof()
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed during handshake: {exc!r}"))

    def close(self) -> None:
        """Polite close: a close frame, then the TCP close (the hub must not wait for a timeout)."""
        if self.transport is None or self.transport.is_closing():
            return
        if self.proto is not None and not self.sub.closed:
            try:
                self.proto.send_close(1000)
                self._flush()
            except InvalidState:  # already closing on the protocol level: just drop the socket
                pass
        self.transport.close()


class SseClient(asyncio.Protocol):
    """An SSE subscriber: h11 parses the response head, then a small chunk decoder and line parser.

    h11 also decodes chunked bodies, but at ~12 µs per chunk (each SSE event is one chunk) it would
    triple the client's per-delivery cost, so once the head is parsed the body is decoded here.
    """

    def __init__(self, target: str, host_header: str, sub: Subscriber, ready: asyncio.Future[None]) -> None:
        self.target = target
        self.host_header = host_header
        self.sub = sub
        self.ready = ready
        self.transport: asyncio.Transport | None = None
        self.conn = h11.Connection(h11.CLIENT)
        self.in_body = False  # False while h11 reads the head
        self.chunked = False
        self.raw = b""  # undecoded chunked bytes (a size line or CRLF split across reads)
        self.chunk_left = 0
        self.expect_crlf = False
        self.buffer = b""  # decoded bytes of an unterminated SSE line
        self.data_lines: list[bytes] = []
        self.last_id: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports don't subclass it
        request = h11.Request(
            method="GET",
            target=self.target,
            headers=[
                ("Host", self.host_header),
                ("Accept", "text/event-stream"),
                ("Cache-Control", "no-cache"),
            ],
        )
        self.transport.write(self.conn.send(request) + (self.conn.send(h11.EndOfMessage()) or b""))

    def data_received(self, data: bytes) -> None:
        try:
            if not self.in_body:
                self._read_head(data)
            elif self.chunked:
                self._dechunk(data)
            else:
                self._feed(data)  # close-delimited body: the bytes are the stream
        except (h11.RemoteProtocolError, ValueError) as exc:
            self._fail(exc)

    def _read_head(self, data: bytes) -> None:
        self.conn.receive_data(data)
        event = self.conn.next_event()
        if event is h11.NEED_DATA:
            return
        if type(event) is not h11.Response:
            raise h11.RemoteProtocolError(f"unexpected {type(event).__name__} before the response head")
        headers = dict(event.headers)
        content_type = headers.get(b"content-type", b"")
        if event.status_code != 200 or not content_type.startswith(b"text/event-stream"):
            shown = content_type.decode(errors="replace")
            self._fail(HandshakeFailed(f"SSE: HTTP {event.status_code} {shown}"))
            return
        self.in_body = True
        self.chunked = headers.get(b"transfer-encoding", b"").endswith(b"chunked")
        if not self.ready.done():
            self.ready.set_result(None)
        rest = self.conn.trailing_data[0]  # body bytes that arrived with the head
        if rest:
            self.data_received(rest)

    def _dechunk(self, data: bytes) -> None:
        """Decode chunked transfer encoding; every step consumes bytes or waits for more."""
        buf = self.raw + data if self.raw else data
        pos, end = 0, len(buf)
        body: list[bytes] = []
        ended = False
        while pos < end:
            if self.chunk_left:
                take = min(self.chunk_left, end - pos)
                body.append(buf[pos : pos + take])
                pos += take
                self.chunk_left -= take
                self.expect_crlf = self.chunk_left == 0
            elif self.expect_crlf:
                if end - pos < 2:
                    break
                if buf[pos : pos + 2] != b"\r\n":
                    raise ValueError("chunk not followed by CRLF")
                pos += 2
                self.expect_crlf = False
            else:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    if end - pos > SSE_MAX_CHUNK_LINE:
                        raise ValueError("chunk size line too long")
                    break
                size = int(buf[pos:eol].partition(b";")[0], 16)
                pos = eol + 2
                if size == 0:  # last chunk: the hub ended the stream
                    ended = True
                    break
                self.chunk_left = size
        self.raw = buf[pos:]
        if body:
            self._feed(body[0] if len(body) == 1 else b"".join(body))
        if ended:
            self._fail(ConnectionError("stream ended"))

    def _feed(self, chunk: bytes) -> None:
        """Split into lines; dispatch an event at each blank line (the EventSource rules we need)."""
        buffer = self.buffer + chunk if self.buffer else chunk
        lines = buffer.split(b"\n")
        self.buffer = lines.pop()  # the unterminated tail waits for the next chunk
        if len(self.buffer) > SSE_MAX_LINE:
            raise ValueError("SSE line too long")
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                self._dispatch()
            elif line[0] == 0x3A:  # ':' comment, e.g. a heartbeat
                continue
            else:
                name, _, value = line.partition(b":")
                if value.startswith(b" "):
                    value = value[1:]
                if name == b"data":
                    self.data_lines.append(value)
                elif name == b"id":
                    self.last_id = int(value) if value.isdigit() else None
                # `event:` and `retry:` carry nothing the benchmark needs.

    def _dispatch(self) -> None:
        lines, self.data_lines = self.data_lines, []
        if lines:
            payload = lines[0] if len(lines) == 1 else b"\n".join(lines)
            self.sub.record(payload, self.last_id)

    def _fail(self, exc: Exception) -> None:
        if not self.ready.done():
            self.ready.set_exception(exc)
        self.sub.closed = True
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.sub.closed = True
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed during handshake: {exc!r}"))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


Client = WsClient | SseClient


# --- Target and worker processes ---------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where the hub is, parsed once from --url: socket address and the three endpoints."""

    host: str
    port: int
    host_header: str
    ws_url: str
    sse_target: str
    events_path: str
    prefix: str = ""

    @classmethod
    def parse(cls, url: str, key: str, types: str) -> Target:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise SystemExit(f"--url must be http://host[:port][/prefix] (got {url!r})")
        prefix = parts.path.rstrip("/")  # a hub mounted under a path prefix works too
        query = urlencode({"token": key, "types": types})
        return cls(
            host=parts.hostname,
            port=parts.port or 80,
            host_header=parts.netloc,
            ws_url=f"ws://{parts.netloc}{prefix}{WS_PATH}?{query}",
            sse_target=f"{prefix}{SSE_PATH}?{query}",
            events_path=f"{prefix}{EVENTS_PATH}",
            prefix=prefix,
        )


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs; picklable for the spawn start method."""

    index: int
    target: Target
    n_ws: int
    n_sse: int
    connect_concurrency: int
    command_timeout_s: float


@dataclass
class Worker:
    """Runs in a child process: connect, report, wait for go, drain, analyse, report, close."""

    spec: WorkerSpec
    pipe: Connection
    latency: LatencyStore = field(default_factory=LatencyStore)
    clients: list[Client] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    async def run(self) -> None:
        started = time.monotonic()
        await self.connect_all()
        # Connection objects live for the whole run: freezing them keeps the GC passes that the
        # per-message dicts trigger from re-scanning thousands of long-lived objects.
        gc.freeze()
        self.pipe.send(("ready", self.ready_report(time.monotonic() - started)))
        try:
            await self.serve_commands()
        finally:
            self.close_all()

    async def serve_commands(self) -> None:
        command = await self.recv()
        if command[0] != "go":
            return
        cpu0, wall0 = own_cpu_s(), time.monotonic()
        self.latency.floor_ns = int(command[1])
        command = await self.recv()
        if command[0] != "drain":
            return
        published = set(array("q", command[1]))
        drained = await self.drain(published, float(command[2]))
        cpu_s, wall_s = own_cpu_s() - cpu0, time.monotonic() - wall0
        self.pipe.send(("result", self.result(published, drained, cpu_s, wall_s)))
        await self.recv()  # "close"

    async def connect_all(self) -> None:
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(self.spec.connect_concurrency)
        kinds = ["ws"] * self.spec.n_ws + ["sse"] * self.spec.n_sse
        results = await asyncio.gather(*(self.connect_one(loop, gate, kind) for kind in kinds))
        self.clients = [client for client in results if client is not None]

    async def connect_one(
        self, loop: asyncio.AbstractEventLoop, gate: asyncio.Semaphore, kind: str
    ) -> Client | None:
        last = "no attempt made"
        target = self.spec.target
        async with gate:
            for attempt in range(CONNECT_ATTEMPTS):
                client = self.new_client(loop, kind)
                try:
                    async with asyncio.timeout(CONNECT_TIMEOUT_S):
                        await loop.create_connection(lambda c=client: c, target.host, target.port)  # type: ignore[misc]
                        await client.ready
                    return client
                except (OSError, TimeoutError, HandshakeFailed, ConnectionError) as exc:
                    client.close()
                    last = f"{type(exc).__name__}: {exc}"
                    if isinstance(exc, HandshakeFailed):
                        break  # a refusal (401, 503...) will not change on retry
                    await asyncio.sleep(CONNECT_BACKOFF_S * (attempt + 1))
            self.errors[last] += 1
            return None

    def new_client(self, loop: asyncio.AbstractEventLoop, kind: str) -> Client:
        ready: asyncio.Future[None] = loop.create_future()
        # A failed attempt's exception is read in connect_one; mark it retrieved for the others.
        ready.add_done_callback(lambda f: f.cancelled() or f.exception())
        sub = Subscriber(self.latency)
        target = self.spec.target
        if kind == "ws":
            return WsClient(target.ws_url, sub, ready)
        return SseClient(target.sse_target, target.host_header, sub, ready)

    def ready_report(self, connect_s: float) -> dict[str, Any]:
        return {
            "worker": self.spec.index,
            "connected": len(self.clients),
            "ws": sum(isinstance(c, WsClient) for c in self.clients),
            "sse": sum(isinstance(c, SseClient) for c in self.clients),
            "failed": sum(self.errors.values()),
            "errors": dict(self.errors.most_common(ERROR_SAMPLES)),
            "connect_s": connect_s,
        }

    async def drain(self, published: set[int], timeout_s: float) -> bool:
        """Wait until every live subscriber has every published seq, or the timeout passes."""
        deadline = time.monotonic() + timeout_s
        pending = [c.sub for c in self.clients]
        while time.monotonic() < deadline:
            # A closed connection cannot receive more: stop waiting for it, it shows up as loss.
            pending = [s for s in pending if not s.closed and not s.is_complete(published)]
            if not pending:
                return True
            await asyncio.sleep(DRAIN_POLL_S)
        return False

    def result(self, published: set[int], drained: bool, cpu_s: float, wall_s: float) -> dict[str, Any]:
        totals: Counter[str] = Counter()
        last_ns = 0
        for client in self.clients:
            sub = client.sub
            got = set(sub.seqs)
            matched = len(got & published)
            totals["delivered"] += matched
            totals["lost"] += len(published) - matched
            totals["subs_with_loss"] += matched < len(published)
            totals["duplicates"] += len(sub.seqs) - len(got)
            totals["extra"] += len(got - published)
            totals["out_of_order"] += sum(b < a for a, b in itertools.pairwise(sub.seqs))
            totals["closed_early"] += sub.closed
            totals["unparsable"] += sub.unparsable
            totals["unsequenced"] += sub.unsequenced
            last_ns = max(last_ns, sub.last_ns)
        return {
            "worker": self.spec.index,
            **totals,
            "drained": drained,
            "last_receipt_ns": last_ns,
            "cpu_s": cpu_s,
            "wall_s": wall_s,
            "latency_seen": self.latency.seen,
            "latency_ns": self.latency.samples.tobytes(),
        }

    async def recv(self) -> tuple[Any, ...]:
        return await recv_command(self.pipe, self.spec.command_timeout_s)

    def close_all(self) -> None:
        for client in self.clients:
            client.close()


async def recv_command(pipe: Connection, timeout_s: float) -> tuple[Any, ...]:
    """Next command from the main process, without blocking the loop (("close",) on EOF or timeout)."""
    loop = asyncio.get_running_loop()
    readable: asyncio.Future[None] = loop.create_future()
    fd = pipe.fileno()
    loop.add_reader(fd, lambda: readable.done() or readable.set_result(None))
    try:
        async with asyncio.timeout(timeout_s):
            await readable
    except TimeoutError:
        return ("close",)
    finally:
        loop.remove_reader(fd)
        os.set_blocking(fd, True)  # uvloop's add_reader made it non-blocking; Connection needs blocking
    try:
        return pipe.recv()
    except EOFError:
        return ("close",)


def worker_main(spec: WorkerSpec, pipe: Connection) -> None:
    """Entry point of a worker process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled by the main process
    raise_nofile_limit()
    worker = Worker(spec, pipe)
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(worker.run())
        # Give the close frames / FINs a moment to leave before the process exits.
        runner.run(asyncio.sleep(WORKER_CLOSE_LINGER_S))


class WorkerPool:
    """The worker processes and their command pipes, as seen from the main process."""

    def __init__(
        self,
        specs: Sequence[Any],
        entry: Callable[[Any, Connection], None] = worker_main,
        name: str = "fanout",
    ) -> None:
        """Start one `entry(spec, pipe)` process per spec (`spec.index` names it); bench.ingest reuses this."""
        context = multiprocessing.get_context("spawn")  # no inherited loop or sockets
        self.pipes: list[Connection] = []
        self.procs: list[multiprocessing.process.BaseProcess] = []
        for spec in specs:
            parent, child = context.Pipe()
            proc = context.Process(target=entry, args=(spec, child), name=f"{name}-{spec.index}", daemon=True)
            proc.start()
            child.close()
            self.pipes.append(parent)
            self.procs.append(proc)

    def broadcast(self, message: tuple[Any, ...]) -> None:
        for pipe in self.pipes:
            try:
                pipe.send(message)
            except (BrokenPipeError, OSError):
                pass  # a dead worker shows up as a missing reply

    def gather(self, kind: str, timeout_s: float) -> list[dict[str, Any]]:
        """One `kind` reply per worker, or RuntimeError naming what went missing."""
        deadline = time.monotonic() + timeout_s
        replies: dict[int, dict[str, Any]] = {}
        waiting = dict(enumerate(self.pipes))
        while waiting:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"workers {sorted(waiting)} sent no {kind!r} within {timeout_s:.0f} s")
            for pipe in wait(list(waiting.values()), timeout=remaining):
                index = next(i for i, p in waiting.items() if p is pipe)
                try:
                    message = pipe.recv()
                except EOFError:
                    raise RuntimeError(f"worker {index} exited before sending {kind!r}") from None
                if message[0] == kind:
                    replies[index] = message[1]
                    del waiting[index]
        return [replies[i] for i in sorted(replies)]

    def close(self) -> None:
        self.broadcast(("close",))
        deadline = time.monotonic() + WORKER_EXIT_TIMEOUT_S
        for proc in self.procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.terminate()
                proc.join(1.0)


# --- Hub probe (CPU, RSS) -----------------------------------------------------------------------


class HubProbe:
    """CPU seconds and RSS of the hub process and its children (uvicorn --workers forks some)."""

    def __init__(self, pid: int, *more: int) -> None:
        import psutil  # only needed with --hub-pid

        self._psutil = psutil
        self.roots = [psutil.Process(p) for p in (pid, *more)]
        self.root = self.roots[0]

    def _processes(self) -> list[Any]:
        found = []
        for root in self.roots:  # several hub processes (on Redis): their figures add up
            try:
                found += [root, *root.children(recursive=True)]
            except self._psutil.NoSuchProcess:
                pass
        return found

    def cpu_s(self) -> float:
        total = 0.0
        for proc in self._processes():
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except self._psutil.NoSuchProcess:
                pass
        return total

    def rss_bytes(self) -> int:
        total = 0
        for proc in self._processes():
            try:
                total += proc.memory_info().rss
            except self._psutil.NoSuchProcess:
                pass
        return total


# --- Publisher ----------------------------------------------------------------------------------


@dataclass
class PublishResult:
    seqs: array
    failures: Counter[str]
    first_ns: int
    duration_s: float


class PublishError(Exception):
    """A POST that did not yield a seq: HTTP error status, malformed reply, or a broken connection."""


class PublishConnection:
    """One keep-alive HTTP/1.1 connection for POST /v1/events, parsed with h11.

    httpx costs ~1-1.5 ms of CPU per request here (its pool bookkeeping dominates); on a 2-core
    machine that is CPU taken from the hub under test and caps the rate near 500/s. A bare h11
    exchange costs a tenth of that.
    """

    def __init__(self, host: str, port: int, host_header: str, path: str, key: str) -> None:
        self.host, self.port, self.path = host, port, path
        self.headers = [
            ("Host", host_header),
            ("Authorization", f"Bearer {key}"),
            ("Content-Type", "application/json"),
        ]
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.conn = h11.Connection(h11.CLIENT)

    async def post(self, body: bytes) -> int:
        """Send one event, return the hub's seq for it."""
        if self.writer is None or self.conn.our_state is not h11.IDLE:
            await self._reconnect()
        assert self.reader is not None and self.writer is not None
        conn = self.conn
        headers = [*self.headers, ("Content-Length", str(len(body)))]
        self.writer.write(
            conn.send(h11.Request(method="POST", target=self.path, headers=headers))
            + conn.send(h11.Data(data=body))
            + conn.send(h11.EndOfMessage())
        )
        status, reply = await self._read_response()
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()  # keep-alive; otherwise the next post reconnects
        if status // 100 != 2:
            raise PublishError(f"HTTP {status}")
        try:
            seq = orjson.loads(reply).get("seq")
        except (orjson.JSONDecodeError, AttributeError):
            raise PublishError("malformed reply") from None
        if type(seq) is not int:
            raise PublishError("reply without seq")
        return seq

    async def _read_response(self) -> tuple[int, bytes]:
        assert self.reader is not None
        status, body = 0, bytearray()
        for _ in range(PUBLISH_MAX_READS):
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                data = await self.reader.read(PUBLISH_READ_BYTES)
                self.conn.receive_data(data)  # b"" means EOF; h11 then reports ConnectionClosed
            elif type(event) is h11.Response:
                status = event.status_code
            elif type(event) is h11.Data:
                body += event.data
            elif type(event) is h11.EndOfMessage:
                return status, bytes(body)
            elif type(event) is h11.ConnectionClosed:
                raise PublishError("connection closed")
        raise PublishError("reply too long")

    async def _reconnect(self) -> None:
        self.close()
        self.conn = h11.Connection(h11.CLIENT)
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def event_body(run_id: str, index: int, event_type: str) -> bytes:
    """One bench CloudEvent; `t_ns` is taken here, just before the POST, for end-to-end latency."""
    return orjson.dumps(
        {
            "specversion": "1.0",
            "type": event_type,
            "source": EVENT_SOURCE,
            "id": f"{run_id}-{index}",
            "data": {"t_ns": time.time_ns(), "n": index},
        }
    )


async def publish(target: Target, key: str, events: int, rate: float, event_type: str) -> PublishResult:
    """POST `events` CloudEvents on a fixed schedule of `rate`/s over PUBLISH_CONCURRENCY connections.

    Each lane takes the next index and waits for its slot, so up to PUBLISH_CONCURRENCY requests are
    in flight and a slow reply delays only its own lane; a lane behind schedule catches up at once.
    """
    loop = asyncio.get_running_loop()
    run_id = uuid.uuid4().hex[:12]
    seqs = array("q")
    failures: Counter[str] = Counter()
    indexes = iter(range(events))
    start = loop.time()

    async def lane() -> None:
        connection = PublishConnection(target.host, target.port, target.host_header, target.events_path, key)
        try:
            for index in indexes:  # shared iterator: each index is taken by exactly one lane
                delay = start + index / rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                try:
                    async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                        seqs.append(await connection.post(event_body(run_id, index, event_type)))
                except (PublishError, OSError, TimeoutError, h11.ProtocolError) as exc:
                    failures[str(exc) if isinstance(exc, PublishError) else type(exc).__name__] += 1
                    connection.close()  # state unknown after a failure: start afresh
        finally:
            connection.close()

    first_ns = time.time_ns()
    await asyncio.gather(*(lane() for _ in range(min(PUBLISH_CONCURRENCY, events))))
    return PublishResult(seqs, failures, first_ns, loop.time() - start)


# --- Optional: spawn the hub --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class SpawnedHub:
    proc: subprocess.Popen[bytes]
    url: str
    log_path: str

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: a wrapper's children go too
        except ProcessLookupError:
            return
        try:
            self.proc.wait(SPAWN_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(SPAWN_STOP_TIMEOUT_S)


def spawn_hub(template: str, url: str, key: str, label: str = "fanout") -> SpawnedHub:
    """Start `template` ({python}, {port}, {key} substituted), wait for GET /healthz == 200."""
    if "{port}" in template:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        template = template.replace("{port}", str(port))
    command = shlex.split(template.replace("{python}", sys.executable).replace("{key}", key))
    log = tempfile.NamedTemporaryFile(prefix=f"{label}-hub-", suffix=".log", delete=False)
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    hub = SpawnedHub(proc, url, log.name)
    deadline = time.monotonic() + SPAWN_READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"hub exited with {proc.returncode}; see {log.name}")
        try:
            if httpx.get(url + HEALTH_PATH, timeout=SPAWN_POLL_S * 5).status_code == 200:
                return hub
        except httpx.HTTPError:
            pass
        time.sleep(SPAWN_POLL_S)
    hub.stop()
    raise RuntimeError(f"hub not healthy within {SPAWN_READY_TIMEOUT_S:.0f} s; see {log.name}")


# --- Orchestration ------------------------------------------------------------------------------


def worker_specs(args: argparse.Namespace, target: Target, second: Target | None = None) -> list[WorkerSpec]:
    """Spread the connections evenly over the workers (with a `second` hub: every other worker
    subscribes there, so half of the subscribers are on each)."""
    total = args.ws + args.sse
    workers = args.workers or (1 if total <= SINGLE_WORKER_MAX_CONNS else DEFAULT_MULTI_WORKERS)
    if second is not None:
        workers = max(2, workers + workers % 2)
    workers = max(1, min(workers, total))
    run_estimate_s = CONNECT_PHASE_TIMEOUT_S + args.events / args.rate * 2 + args.drain_timeout
    return [
        WorkerSpec(
            index=i,
            target=target if second is None or i % 2 == 0 else second,
            n_ws=args.ws // workers + (i < args.ws % workers),
            n_sse=args.sse // workers + (i < args.sse % workers),
            connect_concurrency=max(1, CONNECT_CONCURRENCY // workers),
            command_timeout_s=run_estimate_s + IDLE_SETTLE_S + WORKER_COMMAND_MARGIN_S,
        )
        for i in range(workers)
    ]


def run_publish(args: argparse.Namespace, target: Target) -> PublishResult:
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(publish(target, args.key, args.events, args.rate, args.event_type))


def connect_summary(ready: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    errors: Counter[str] = Counter()
    for report in ready:
        errors.update(report["errors"])
    return {
        "workers": len(ready),
        "connected": sum(r["connected"] for r in ready),
        "connected_ws": sum(r["ws"] for r in ready),
        "connected_sse": sum(r["sse"] for r in ready),
        "connect_failed": sum(r["failed"] for r in ready),
        "connect_errors": dict(errors.most_common(ERROR_SAMPLES)),
        "connect_s": round(max(r["connect_s"] for r in ready), 3),
        "connect_wall_s": round(wall_s, 3),  # includes starting the worker processes
    }


def mib(value: int | None) -> float | None:
    return None if value is None else round(value / (1 << 20), 1)


def per_conn_kib(before: int | None, after: int | None, conns: int) -> float | None:
    if before is None or after is None or conns == 0:
        return None
    return round((after - before) / conns / 1024, 2)


def run_idle(args: argparse.Namespace, target: Target, probe: HubProbe | None) -> dict[str, Any]:
    rss0 = probe.rss_bytes() if probe else None
    started = time.monotonic()
    pool = WorkerPool(worker_specs(args, target))
    try:
        ready = pool.gather("ready", CONNECT_PHASE_TIMEOUT_S)
        summary = connect_summary(ready, time.monotonic() - started)
        time.sleep(IDLE_SETTLE_S)
        rss1 = probe.rss_bytes() if probe else None
    finally:
        pool.close()
    return {
        "mode": "idle",
        **summary,
        "hub_rss_before_mib": mib(rss0),
        "hub_rss_after_mib": mib(rss1),
        "hub_rss_per_conn_kib": per_conn_kib(rss0, rss1, summary["connected"]),
    }


def run_fanout(args: argparse.Namespace, target: Target, probe: HubProbe | None,
               second: Target | None = None) -> dict[str, Any]:
    rss0 = probe.rss_bytes() if probe else None
    started = time.monotonic()
    pool = WorkerPool(worker_specs(args, target, second))
    try:
        ready = pool.gather("ready", CONNECT_PHASE_TIMEOUT_S)
        summary = connect_summary(ready, time.monotonic() - started)
        if summary["connected"] == 0:
            raise RuntimeError(f"no subscriber connected: {summary['connect_errors']}")
        rss1 = probe.rss_bytes() if probe else None
        time.sleep(PRE_PUBLISH_SETTLE_S)
        hub_cpu0, main_cpu0, wall0 = (probe.cpu_s() if probe else 0.0), own_cpu_s(), time.monotonic()
        machine0 = machine_busy_cpu_s()
        buckets0 = fanout_buckets(target)
        pool.broadcast(("go", time.time_ns()))
        published = run_publish(args, target)
        pool.broadcast(("drain", published.seqs.tobytes(), args.drain_timeout))
        results = pool.gather("result", args.drain_timeout + WORKER_REPLY_MARGIN_S)
        # Sampled before the connections close: closing thousands of them costs the hub CPU too.
        hub_cpu = (probe.cpu_s() - hub_cpu0) if probe else None
        main_cpu, window_s = own_cpu_s() - main_cpu0, time.monotonic() - wall0
        machine1 = machine_busy_cpu_s()
        machine = None if machine0 is None or machine1 is None else machine1 - machine0
        rss2 = probe.rss_bytes() if probe else None
        hub_latency = hub_fanout_latency(buckets0, fanout_buckets(target))
    finally:
        pool.close()
    return {
        "mode": "fanout",
        **hub_latency,
        **summary,
        **delivery_figures(published, results, summary["connected"], split=second is not None),
        **cpu_figures(hub_cpu, main_cpu, results, window_s, machine),
        "hub_rss_before_connect_mib": mib(rss0),
        "hub_rss_after_connect_mib": mib(rss1),
        "hub_rss_after_run_mib": mib(rss2),
        "hub_rss_per_conn_kib": per_conn_kib(rss0, rss1, summary["connected"]),
        "hub_rss_run_delta_mib": None if rss1 is None or rss2 is None else mib(rss2 - rss1),
    }


#: The hub's own histogram: from accepting an event to having written it to every live subscriber.
FANOUT_HISTOGRAM = "callhub_fanout_latency_seconds"


def fanout_buckets(target: Target) -> dict[float, float] | None:
    """Cumulative bucket counts of the hub's fan-out latency histogram, from its /metrics (None if absent)."""
    try:
        text = httpx.get(f"http://{target.host_header}{target.prefix}{METRICS_PATH}", timeout=PUBLISH_TIMEOUT_S).text
    except httpx.HTTPError:
        return None
    for family in text_string_to_metric_families(text):
        if family.name == FANOUT_HISTOGRAM:
            return {
                float(sample.labels["le"]): sample.value
                for sample in family.samples
                if sample.name.endswith("_bucket")
            }
    return None


def hub_fanout_latency(before: dict[float, float] | None, after: dict[float, float] | None) -> dict[str, Any]:
    """p50/p99 of the hub-side fan-out latency during the run, as histogram bucket upper bounds."""
    if before is None or after is None:
        return {"hub_fanout_p50_le_ms": None, "hub_fanout_p99_le_ms": None}
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0

    def upper(pct: float) -> float | None:
        if not total:
            return None
        for bound, count in zip(bounds, counts, strict=False):
            if count >= total * pct / 100:
                return round(bound * 1000, 3)
        return None

    return {"hub_fanout_p50_le_ms": upper(50), "hub_fanout_p99_le_ms": upper(99)}


def delivery_figures(pub: PublishResult, results: list[dict[str, Any]], subs: int,
                     split: bool = False) -> dict[str, Any]:
    delivered = sum(r.get("delivered", 0) for r in results)
    last_ns = max((r["last_receipt_ns"] for r in results), default=0)
    window_s = (last_ns - pub.first_ns) / 1e9 if last_ns > pub.first_ns else 0.0
    # Workers split connections evenly, so when reservoirs kick in they sample at similar rates
    # and pooling them stays close to unbiased.
    latencies: list[int] = sorted(itertools.chain.from_iterable(array("q", r["latency_ns"]) for r in results))
    ms = 1e6
    return {
        "events_published": len(pub.seqs),
        "publish_failed": sum(pub.failures.values()),
        "publish_failures": dict(pub.failures),
        "publish_rate_achieved": round(len(pub.seqs) / pub.duration_s, 1) if pub.duration_s else 0.0,
        "deliveries_expected": len(pub.seqs) * subs,
        "delivered": delivered,
        "lost": sum(r.get("lost", 0) for r in results),
        "subs_with_loss": sum(r.get("subs_with_loss", 0) for r in results),
        "duplicates": sum(r.get("duplicates", 0) for r in results),
        "extra": sum(r.get("extra", 0) for r in results),
        "out_of_order": sum(r.get("out_of_order", 0) for r in results),
        "closed_early": sum(r.get("closed_early", 0) for r in results),
        "unparsable": sum(r.get("unparsable", 0) for r in results),
        "unsequenced": sum(r.get("unsequenced", 0) for r in results),
        "drained": all(r["drained"] for r in results),
        "delivery_window_s": round(window_s, 3),
        "deliveries_per_s": round(delivered / window_s, 1) if window_s else 0.0,
        "latency_samples": len(latencies),
        "latency_sampled": any(r["latency_seen"] > LATENCY_SAMPLE_CAP for r in results),
        "latency_p50_ms": round(percentile(latencies, 50) / ms, 3),
        "latency_p90_ms": round(percentile(latencies, 90) / ms, 3),
        "latency_p99_ms": round(percentile(latencies, 99) / ms, 3),
        "latency_max_ms": round((latencies[-1] if latencies else 0) / ms, 3),
        **(hub_split(results) if split else {}),
    }


def hub_split(results: list[dict[str, Any]]) -> dict[str, Any]:
    """With a second hub, publish->receipt apart for the subscribers on the hub published to
    (even workers) and on the other one (odd workers), which the log reaches through Redis."""
    out: dict[str, Any] = {}
    for name, part in (("same_hub", results[0::2]), ("other_hub", results[1::2])):
        values = sorted(itertools.chain.from_iterable(array("q", r["latency_ns"]) for r in part))
        out[f"latency_p50_ms_{name}"] = round(percentile(values, 50) / 1e6, 3)
        out[f"latency_p99_ms_{name}"] = round(percentile(values, 99) / 1e6, 3)
    return out


def cpu_figures(
    hub_cpu: float | None,
    main_cpu: float,
    results: list[dict[str, Any]],
    window_s: float,
    machine_cpu: float | None,
) -> dict[str, Any]:
    delivered = sum(r.get("delivered", 0) for r in results)
    client_cpu = main_cpu + sum(r["cpu_s"] for r in results)
    worker_pct = [100.0 * r["cpu_s"] / r["wall_s"] for r in results if r["wall_s"] > 0]
    known = machine_cpu is not None and window_s > 0
    other = machine_cpu - (hub_cpu or 0.0) - client_cpu if known and hub_cpu is not None else None
    return {
        "machine_cores": os.cpu_count(),
        "machine_busy_pct": round(100.0 * machine_cpu / window_s, 1) if known else None,
        "other_processes_cpu_s": None if other is None else round(max(0.0, other), 3),
        "window_s": round(window_s, 3),
        "hub_cpu_s": None if hub_cpu is None else round(hub_cpu, 3),
        "hub_cpu_pct": None if hub_cpu is None or not window_s else round(100.0 * hub_cpu / window_s, 1),
        "hub_cpu_us_per_delivery": (
            None if hub_cpu is None or not delivered else round(hub_cpu / delivered * 1e6, 2)
        ),
        "client_cpu_s": round(client_cpu, 3),
        "client_main_cpu_s": round(main_cpu, 3),
        "client_worker_cpu_pct": [round(p, 1) for p in worker_pct],
        "client_cpu_us_per_delivery": round(client_cpu / delivered * 1e6, 2) if delivered else None,
        "client_saturated": any(p >= CLIENT_SATURATED_PCT for p in worker_pct),
    }


# --- Output -------------------------------------------------------------------------------------


#: How the printed table groups the report's keys (the JSON keeps them flat).
REPORT_SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("run", ("url", "ws", "sse", "events_requested", "rate_requested", "workers")),
    ("connections", ("connected", "connected_ws", "connected_sse", "connect_failed", "connect_errors",
                     "connect_s", "connect_wall_s")),
    ("publishing", ("events_published", "publish_failed", "publish_failures", "publish_rate_achieved")),
    ("delivery", ("deliveries_expected", "delivered", "lost", "subs_with_loss", "duplicates", "extra",
                  "out_of_order", "closed_early", "unparsable", "unsequenced", "drained", "delivery_window_s",
                  "deliveries_per_s")),
    ("latency (publish -> receipt)", ("latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "latency_max_ms",
                                      "latency_samples", "latency_sampled")),
    ("hub-side fan-out latency (accepted -> written to every socket; /metrics bucket bounds)",
     ("hub_fanout_p50_le_ms", "hub_fanout_p99_le_ms")),
    ("hub", ("window_s", "hub_cpu_s", "hub_cpu_pct", "hub_cpu_us_per_delivery", "hub_rss_before_mib",
             "hub_rss_after_mib", "hub_rss_before_connect_mib", "hub_rss_after_connect_mib",
             "hub_rss_after_run_mib", "hub_rss_run_delta_mib", "hub_rss_per_conn_kib")),
    ("client (this benchmark)", ("client_cpu_s", "client_main_cpu_s", "client_worker_cpu_pct",
                                 "client_cpu_us_per_delivery", "client_saturated")),
    ("machine (all cores; 100% = one core)", ("machine_cores", "machine_busy_pct", "other_processes_cpu_s")),
)


def format_value(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".") if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def format_sections(figures: dict[str, Any], sections: Sequence[tuple[str, Sequence[str]]], *,
                    skip: Collection[str] = (), gap: str = "") -> list[str]:
    """`figures` as a two-column table under section titles (`[title]`), the rest under `[other]`.

    `gap` goes before each title (a newline spaces the sections out).
    """
    width = max(len(k) for k in figures)
    listed = {k for _, keys in sections for k in keys}
    lines: list[str] = []
    for title, keys in [*sections, ("other", [k for k in figures if k not in listed and k not in skip])]:
        present = [k for k in keys if k in figures]
        if present:
            lines.append(f"{gap}[{title}]")
            lines.extend(f"  {k:<{width}}  {format_value(figures[k])}" for k in present)
    return lines


def format_report(report: dict[str, Any]) -> str:
    """A sectioned two-column table, plus warnings when the figures need a second look."""
    lines = [f"callhub fan-out benchmark ({report['mode']})"]
    lines += format_sections(report, REPORT_SECTIONS, skip={"mode"}, gap="\n")
    lines.extend(warnings(report))
    return "\n".join(lines)


def warnings(report: dict[str, Any]) -> list[str]:
    found = []
    if report.get("client_saturated"):
        found.append(
            f"WARNING: a client worker ran at >= {CLIENT_SATURATED_PCT:.0f}% of a core; the client, not the"
            " hub, may have capped throughput and inflated latency (try --workers)."
        )
    if report.get("mode") == "fanout" and not report.get("drained"):
        found.append("WARNING: drain timeout reached before every subscriber had every event.")
    if report.get("connect_failed"):
        found.append(f"WARNING: {report['connect_failed']} connections failed: {report['connect_errors']}")
    if report.get("publish_failed"):
        found.append(f"WARNING: {report['publish_failed']} publishes failed: {report['publish_failures']}")
    return ["", *found] if found else []


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.fanout", description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--url", default="http://127.0.0.1:8080", help="hub base URL (http only)")
    add("--key", required=True, help="API key: Bearer for publishing, ?token= for streams")
    add("--ws", type=int, default=0, help="WebSocket subscribers")
    add("--sse", type=int, default=0, help="SSE subscribers")
    add("--events", type=int, default=2000, help="events to publish")
    add("--rate", type=float, default=500.0, help="publish rate, events/s")
    add("--workers", type=int, default=0, help="subscriber processes (default: 1; 2 above 200 connections)")
    add("--hub-pid", type=int, help="hub PID, for its CPU and RSS figures")
    add("--idle", action="store_true", help="connect, let RSS settle, measure RSS, publish nothing")
    add("--types", default=DEFAULT_TYPES, help="subscription type filter")
    add("--event-type", default=DEFAULT_EVENT_TYPE, help="type of the published events")
    add("--drain-timeout", type=float, default=DEFAULT_DRAIN_TIMEOUT_S, help="seconds to wait at the end")
    add(
        "--spawn-cmd",
        help="start the hub first, e.g. '{python} -m hub serve --config x.toml'; {python}, {port}, {key} are"
        " substituted, and {port} picks a free loopback port and overrides --url",
    )
    add(
        "--spawn-cmd2",
        help="a second hub on the same store (Redis), started like --spawn-cmd: half of the subscribers"
        " connect to it; events are published to the first",
    )
    add("--json", help="also write the report to this file")
    args = parser.parse_args(argv)
    check_bounds(parser, args)
    return args


def check_bounds(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.ws < 0 or args.sse < 0 or not 0 < args.ws + args.sse <= MAX_CONNECTIONS:
        parser.error(f"--ws + --sse must be between 1 and {MAX_CONNECTIONS}")
    if not 0 < args.events <= MAX_EVENTS:
        parser.error(f"--events must be between 1 and {MAX_EVENTS}")
    if not 0 < args.rate <= MAX_RATE:
        parser.error(f"--rate must be between 0 and {MAX_RATE:.0f}")
    if not 0 <= args.workers <= MAX_WORKERS:
        parser.error(f"--workers must be between 1 and {MAX_WORKERS}")
    if not 0 < args.drain_timeout <= CONNECT_PHASE_TIMEOUT_S * 10:
        parser.error("--drain-timeout out of range")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Spawn the hub if asked, run the chosen mode, stop the hub again; return the report."""
    hub = spawn_hub(args.spawn_cmd, args.url, args.key) if args.spawn_cmd else None
    hub2 = spawn_hub(args.spawn_cmd2, args.url, args.key, label="fanout-2") if args.spawn_cmd2 else None
    url = hub.url if hub else args.url.rstrip("/")
    try:
        pid = args.hub_pid or (hub.proc.pid if hub else None)
        probe = HubProbe(pid, *([hub2.proc.pid] if hub2 else [])) if pid else None
        header: dict[str, Any] = {"url": url, "ws": args.ws, "sse": args.sse}
        target = Target.parse(url, args.key, args.types)
        if args.idle:
            result = run_idle(args, target, probe)
        else:
            header.update(events_requested=args.events, rate_requested=args.rate)
            second = Target.parse(hub2.url, args.key, args.types) if hub2 else None
            if second is not None:
                header["second_url"] = hub2.url if hub2 else None
            result = run_fanout(args, target, probe, second)
        return {"mode": result.pop("mode"), **header, **result}
    finally:
        for spawned in (hub, hub2):
            if spawned:
                spawned.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    limit = raise_nofile_limit()
    if args.ws + args.sse + FD_HEADROOM > limit:
        print(f"warning: file descriptor limit {limit} is below the connection count", file=sys.stderr)
    try:
        report = run(args)
    except RuntimeError as exc:  # a failed phase (nothing connected, a worker died, hub not healthy)
        print(f"fanout: {exc}", file=sys.stderr)
        return 1
    emit_report(format_report(report), report, args.json)
    return 0


def emit_report(text: str, report: dict[str, Any], json_path: str | None) -> None:
    """Print the table, and write the flat figures as JSON when asked (both benchmarks)."""
    print(text)
    if json_path:
        os.makedirs(os.path.dirname(json_path) or ".", exist_ok=True)
        with open(json_path, "wb") as out:
            out.write(orjson.dumps(report, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    sys.exit(main())
