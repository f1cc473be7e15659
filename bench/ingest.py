"""Webhook ingest benchmark for callhub: N concurrent senders POSTing to `/v1/webhooks/{source}`.

For each concurrency level, N keep-alive HTTP/1.1 connections (raw asyncio Protocols, spread over K
worker processes so the client stays cheap) POST ~300-byte call-result webhooks back to back, each
with a unique `delivery_id` (or, with --duplicates, a byte-identical redelivery of an acknowledged
one). After a warm-up, it counts the 2xx acks (each one means "committed") over the window and
reports webhooks/s, errors by status, ack latency (request written -> reply parsed) p50/p90/p99/max,
the hub's CPU per webhook and the client's own CPU.

    python -m bench.ingest --url http://127.0.0.1:8080 --source bench --token SECRET --senders 1,16,64
    python -m bench.ingest --source bench --token SECRET --duplicates 0.1 \
        --spawn-cmd "{python} -m hub serve --config bench.toml --port {port}"

See bench/README.md ("Webhook ingest benchmark") for how to run and read it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import os
import random
import sys
import time
import uuid
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, cast
from urllib.parse import urlencode

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families

from bench.fanout import (
    CLIENT_SATURATED_PCT,
    METRICS_PATH,
    HubProbe,
    LatencyStore,
    Target,
    WorkerPool,
    emit_report,
    format_sections,
    format_value,
    machine_busy_cpu_s,
    new_event_loop,
    own_cpu_s,
    percentile,
    raise_nofile_limit,
    recv_command,
    spawn_hub,
)

# --- Limits and timings -------------------------------------------------------------------------

DEFAULT_SENDERS = "1,16,64"
DEFAULT_DURATION_S = 10.0
DEFAULT_WARMUP_S = 2.0
#: With --requests and no --duration, a level still ends after this long.
MAX_DURATION_S = 3600.0
MAX_REQUESTS = 100_000_000
MAX_SENDERS = 10_000
MAX_WORKERS = 32
#: Up to this many senders one worker process keeps up; above it, DEFAULT_MULTI_WORKERS.
SINGLE_WORKER_MAX_SENDERS = 8
DEFAULT_MULTI_WORKERS = 2
#: One request (write -> complete reply) may take this long before it counts as a timeout and
#: its connection is dropped and reopened.
DEFAULT_REQUEST_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 10.0
CONNECT_ATTEMPTS = 3
#: Pause before reopening a connection the hub closed or reset (and between connect attempts).
RECONNECT_BACKOFF_S = 0.05
#: How often a worker looks for requests that outlived --timeout.
WATCHDOG_S = 0.25
#: Slack for workers to report after their deadline, and to start up.
WORKER_REPLY_MARGIN_S = 60.0
WORKER_START_TIMEOUT_S = 120.0
#: Pause between levels, so one level's leftovers (WAL checkpoint, closing sockets) stay out of the next.
LEVEL_PAUSE_S = 1.0
#: A reply head or chunked body beyond this is not the hub's.
MAX_REPLY_BYTES = 1 << 20
#: Acknowledged bodies a worker keeps to redeliver (--duplicates): the most recent ones.
REDELIVERY_POOL = 4096
#: Other processes using this share of a core during the window disturbed the run (a warning says so).
OTHER_CPU_WARN_SHARE = 0.25
#: Connection errors quoted in the report (the rest are only counted).
ERROR_SAMPLES = 8
DEFAULT_BODY_BYTES = 300

WEBHOOKS_PATH = "/v1/webhooks/"
RECEIVED_COUNTER = "callhub_webhooks_received"
REJECTED_COUNTER = "callhub_webhooks_rejected"
#: The issue's target, printed next to the figures (not checked: this measures, it does not judge).
TARGET_NOTE = "issue 4 target: >= 3,000 webhooks/s with 64 senders, p99 ack <= 50 ms (2-core machine)"

_perf_ns = time.perf_counter_ns
_loads = orjson.loads
_dumps = orjson.dumps


# --- Webhook bodies -----------------------------------------------------------------------------

_STATUSES = ("ANSWERED", "ANSWERED", "ANSWERED", "NO_ANSWER", "BUSY", "FAILED")
_NAMES = ("Nguyễn Văn An", "Trần Thị Bình", "Lê Hoàng Cường", "Phạm Thu Dung")


def webhook_body(run_id: str, worker: int, n: int, pad: str) -> bytes:
    """A call-result webhook (Vbee-ish fields), unique `delivery_id`; about --body-bytes long."""
    status = _STATUSES[n % len(_STATUSES)]
    return _dumps(
        {
            "delivery_id": f"{run_id}-{worker}-{n}",
            "event": "call.finished",
            "campaign_id": 4821,
            "contact_id": 7_000_000 + n,
            "call_id": f"c{run_id}{worker:02d}{n:09d}",
            "phone_number": f"+8490{n % 10_000_000:07d}",
            "status": status,
            "duration": (n * 37) % 311 if status == "ANSWERED" else 0,
            "ended_at": 1_795_000_000 + n,
            "recording_url": f"https://rec.example.vn/{run_id}/{n}.mp3",
            "tags": {"ho_ten": _NAMES[n % len(_NAMES)]},
            "note": pad,
        }
    )


def body_padding(run_id: str, target_bytes: int) -> str:
    """Padding that brings a typical body to `target_bytes` (the counters add a few digits later on)."""
    base = len(webhook_body(run_id, 0, 100_000, ""))
    return "x" * max(0, target_bytes - base)


# --- Worker side: the senders -------------------------------------------------------------------


@dataclass(frozen=True)
class IngestSpec:
    """What one worker process needs; picklable for the spawn start method."""

    index: int
    host: str
    port: int
    head: bytes  # request line and headers up to "Content-Length: "
    senders: int
    #: This worker's share of --requests (completions counted in the window).
    max_requests: int
    duplicates: float
    run_id: str
    pad: str
    request_timeout_s: float
    command_timeout_s: float


class Sender(asyncio.Protocol):
    """One keep-alive connection sending webhooks back to back, driven from its callbacks.

    The reply parser reads only what it needs (status, Content-Length or chunked, Connection:
    close): h11 costs ~100 µs per exchange, which at thousands per second is CPU taken from the
    hub on a 2-core machine; this costs a few µs.
    """

    def __init__(self, run: WorkerRun) -> None:
        self.run = run
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.sent_ns = 0  # non-zero while a request is in flight
        self.body = b""
        self.redelivery: tuple[bytes, int] | None = None  # (body, original seq) when redelivering
        self.head_len = -1  # bytes of the reply head incl. the blank line, once seen
        self.status = 0
        self.length = -1  # Content-Length, or -1 for a chunked body
        self.close_after = False
        self.connected: asyncio.Future[None] | None = None

    # -- connection ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports don't subclass it
        self.buf.clear()
        self.head_len = -1
        if self.connected is not None and not self.connected.done():
            self.connected.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        run = self.run
        if self.sent_ns:
            self.sent_ns = 0
            run.error("connection closed mid-request" if exc is None else f"connection lost: {type(exc).__name__}")
        if run.stopping:
            run.check_finished()
        elif run.going:
            run.loop.create_task(self.reconnect())

    async def connect(self) -> str | None:
        """Open the connection (retrying); None on success, else the last error."""
        run = self.run
        last = "no attempt"
        for attempt in range(CONNECT_ATTEMPTS):
            self.connected = run.loop.create_future()
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    await run.loop.create_connection(lambda: self, run.spec.host, run.spec.port)
                    await self.connected
                return None
            except (OSError, TimeoutError) as exc:
                last = f"{type(exc).__name__}: {exc}"
                await asyncio.sleep(RECONNECT_BACKOFF_S * (attempt + 1))
        return last

    async def reconnect(self) -> None:
        run = self.run
        await asyncio.sleep(RECONNECT_BACKOFF_S)
        while not run.stopping:
            error = await self.connect()
            if error is None:
                self.send_next()
                return
            run.error(f"reconnect failed: {error}")
        run.check_finished()

    # -- requests ------------------------------------------------------------------------------

    def send_next(self) -> None:
        run = self.run
        transport = self.transport
        if run.stopping or transport is None:
            run.check_finished()
            return
        self.redelivery = redelivery = run.pick_redelivery()
        body = self.body = redelivery[0] if redelivery else run.new_body()
        self.sent_ns = _perf_ns()
        transport.write(b"%s%d\r\n\r\n%s" % (run.spec.head, len(body), body))

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if self.head_len < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_REPLY_BYTES:
                    self.protocol_error("reply head too long")
                return
            if not self.parse_head(bytes(buf[:end]).lower()):
                return
            self.head_len = end + 4
        reply: bytes | None
        if self.length >= 0:
            complete = self.head_len + self.length
            if len(buf) < complete:
                return
            if len(buf) > complete:
                self.protocol_error("bytes after the reply")
                return
            reply = bytes(buf[self.head_len :])
        else:
            reply = self.dechunk()
            if reply is None:
                return
        buf.clear()
        self.head_len = -1
        self.on_reply(self.status, reply)

    def parse_head(self, head: bytes) -> bool:
        if not head.startswith(b"http/1.1 ") or len(head) < 12 or not head[9:12].isdigit():
            self.protocol_error("not an HTTP/1.1 reply")
            return False
        self.status = int(head[9:12])
        self.close_after = b"\r\nconnection: close" in head
        at = head.find(b"\r\ncontent-length:")
        if at >= 0:
            start = at + len(b"\r\ncontent-length:")
            end = head.find(b"\r\n", start)
            try:
                self.length = int(head[start : end if end >= 0 else len(head)])
            except ValueError:
                self.protocol_error("bad Content-Length")
                return False
        elif b"\r\ntransfer-encoding: chunked" in head:
            self.length = -1
        else:
            self.protocol_error("reply without Content-Length or chunked body")
            return False
        return True

    def dechunk(self) -> bytes | None:
        """The decoded chunked body once its last chunk has arrived, else None."""
        buf = self.buf
        if not buf.endswith(b"0\r\n\r\n"):  # no trailers from the hub
            if len(buf) > MAX_REPLY_BYTES:
                self.protocol_error("chunked reply too long")
            return None
        pos, body = self.head_len, bytearray()
        while True:
            eol = buf.find(b"\r\n", pos)
            try:
                size = int(bytes(buf[pos:eol]).partition(b";")[0], 16)
            except ValueError:
                self.protocol_error("bad chunk size")
                return None
            if size == 0:
                return bytes(body)
            body += buf[eol + 2 : eol + 2 + size]
            pos = eol + 4 + size

    def on_reply(self, status: int, reply: bytes) -> None:
        now = _perf_ns()
        latency = now - self.sent_ns
        self.sent_ns = 0
        self.run.record(status, reply, latency, self.redelivery, self.body)
        if self.close_after and self.transport is not None:
            self.transport.close()  # connection_lost reconnects
        else:
            self.send_next()

    def protocol_error(self, what: str) -> None:
        self.sent_ns = 0
        self.run.error(f"protocol: {what}")
        if self.transport is not None:
            self.transport.abort()

    def check_timeout(self, now_ns: int, limit_ns: int) -> None:
        if self.sent_ns and now_ns - self.sent_ns > limit_ns and self.transport is not None:
            self.sent_ns = 0
            self.run.error("timeout")
            self.transport.abort()


class WorkerRun:
    """One worker's senders and tallies for one level."""

    def __init__(self, spec: IngestSpec, pipe: Connection, loop: asyncio.AbstractEventLoop) -> None:
        self.spec = spec
        self.pipe = pipe
        self.loop = loop
        self.senders = [Sender(self) for _ in range(spec.senders)]
        self.going = False  # "go" received: send, and reconnect what drops
        self.measuring = False
        self.stopping = False
        self.finished: asyncio.Future[None] = loop.create_future()
        self.counter = itertools.count()
        self.rng = random.Random(0x1D5 + spec.index)  # fixed seed: repeatable runs redeliver alike
        self.pool: list[tuple[bytes, int]] = []  # acknowledged (body, seq) to redeliver
        self.pool_next = 0
        # The measured window.
        self.latency = LatencyStore()  # every accepted request's ack latency, ns
        self.dup_latency = LatencyStore()  # redeliveries only
        self.seqs = array("q")  # seqs of newly stored events
        self.tally: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        # The whole run (warm-up, window, drain), to compare with the hub's own counters.
        self.total: Counter[str] = Counter()
        self.cpu0 = 0.0
        self.cpu_s = 0.0
        self.t0 = 0.0
        self.t_end = 0.0

    # -- tallies (hot path) --------------------------------------------------------------------

    def new_body(self) -> bytes:
        return webhook_body(self.spec.run_id, self.spec.index, next(self.counter), self.spec.pad)

    def pick_redelivery(self) -> tuple[bytes, int] | None:
        if self.spec.duplicates and self.pool and self.rng.random() < self.spec.duplicates:
            return self.pool[self.rng.randrange(len(self.pool))]
        return None

    def record(self, status: int, reply: bytes, latency: int, redelivery: tuple[bytes, int] | None, body: bytes) -> None:
        if not 200 <= status < 300:
            self.error(f"HTTP {status}")
            return
        try:
            obj = _loads(reply)
            seq, duplicate = obj["seq"], obj["duplicate"]
        except (orjson.JSONDecodeError, TypeError, KeyError):
            self.error("2xx with a malformed reply")
            return
        total = self.total
        total["duplicate" if duplicate else "stored"] += 1
        if redelivery is None:
            if duplicate:
                total["unexpected_duplicates"] += 1  # a fresh delivery_id the hub claims to know
            elif len(self.pool) < REDELIVERY_POOL:
                self.pool.append((body, seq))
            else:
                self.pool[self.pool_next] = (body, seq)
                self.pool_next = (self.pool_next + 1) % REDELIVERY_POOL
        elif not duplicate:
            total["missed_duplicates"] += 1  # a redelivery stored again
        elif seq != redelivery[1]:
            total["duplicate_seq_mismatch"] += 1  # the original seq must come back
        if not self.measuring:
            return
        tally = self.tally
        tally["accepted"] += 1
        self.latency.add(latency)
        if duplicate:
            tally["accepted_duplicate"] += 1
            self.dup_latency.add(latency)
        else:
            tally["accepted_new"] += 1
            self.seqs.append(seq)
        if self.spec.max_requests and tally["accepted"] + tally["errors"] >= self.spec.max_requests:
            self.stop()

    def error(self, what: str) -> None:
        self.total["errors"] += 1
        if self.measuring:
            self.tally["errors"] += 1
            self.errors[what] += 1
            if self.spec.max_requests and self.tally["accepted"] + self.tally["errors"] >= self.spec.max_requests:
                self.stop()

    # -- phases --------------------------------------------------------------------------------

    def start_window(self) -> None:
        self.cpu0 = own_cpu_s()
        self.t0 = time.monotonic()
        self.measuring = True

    def stop(self) -> None:
        if self.stopping:
            return
        self.cpu_s = own_cpu_s() - self.cpu0
        self.t_end = time.monotonic()
        self.measuring = False
        self.stopping = True
        self.pipe.send(("done", {"worker": self.spec.index, "end": self.t_end}))  # tiny: a blocking send is fine
        self.check_finished()

    def check_finished(self) -> None:
        if self.stopping and not self.finished.done() and not any(s.sent_ns for s in self.senders):
            self.finished.set_result(None)

    def watchdog(self) -> None:
        if self.finished.done():
            return
        now, limit = _perf_ns(), int(self.spec.request_timeout_s * 1e9)
        for sender in self.senders:
            sender.check_timeout(now, limit)
        self.check_finished()
        self.loop.call_later(WATCHDOG_S, self.watchdog)

    async def main(self) -> None:
        started = time.monotonic()
        errors = await asyncio.gather(*(s.connect() for s in self.senders))
        failed = Counter(e for e in errors if e is not None)
        live = [s for s, e in zip(self.senders, errors, strict=True) if e is None]
        for sender, error in zip(self.senders, errors, strict=True):
            if error is not None and sender.transport is not None:
                sender.transport.close()
        self.senders = live
        gc.freeze()  # the senders live all run; keep GC passes from re-scanning them
        self.pipe.send(("ready", {
            "worker": self.spec.index, "connected": len(live), "failed": sum(failed.values()),
            "errors": dict(failed.most_common(ERROR_SAMPLES)), "connect_s": time.monotonic() - started,
        }))
        command = await recv_command(self.pipe, self.spec.command_timeout_s)
        if command[0] != "go":
            self.close()
            return
        _, t0, t_end = command
        self.going = True
        self.loop.call_later(max(0.0, t0 - time.monotonic()), self.start_window)
        self.loop.call_later(max(0.0, t_end - time.monotonic()), self.stop)
        self.watchdog()
        for sender in self.senders:
            sender.send_next()
        if not self.senders:
            self.stop()
        await self.finished
        self.close()
        self.pipe.send(("result", self.result()))
        await recv_command(self.pipe, WORKER_REPLY_MARGIN_S)  # "close"

    def close(self) -> None:
        self.stopping = True
        for sender in self.senders:
            if sender.transport is not None:
                sender.transport.close()

    def result(self) -> dict[str, Any]:
        return {
            "worker": self.spec.index,
            "tally": dict(self.tally),
            "errors": dict(self.errors),
            "total": dict(self.total),
            "t0": self.t0,
            "t_end": self.t_end,
            "cpu_s": self.cpu_s,
            "latency_seen": self.latency.seen,
            "latency_ns": self.latency.samples.tobytes(),
            "dup_latency_ns": self.dup_latency.samples.tobytes(),
            "seqs": self.seqs.tobytes(),
        }


def ingest_worker_main(spec: IngestSpec, pipe: Connection) -> None:
    """Entry point of a sender worker process."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled by the main process
    raise_nofile_limit()
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        run = WorkerRun(spec, pipe, runner.get_loop())
        runner.run(run.main())


# --- Main process -------------------------------------------------------------------------------


def request_head(target: Target, source: str, token: str | None, auth: str) -> bytes:
    """Request line and headers of every POST, up to the Content-Length value."""
    path = f"{target.prefix}{WEBHOOKS_PATH}{source}"
    lines = []
    if token and auth == "query":
        path += "?" + urlencode({"token": token})
    lines.append(f"POST {path} HTTP/1.1")
    lines.append(f"Host: {target.host_header}")
    if token and auth == "bearer":
        lines.append(f"Authorization: Bearer {token}")
    lines += ["Content-Type: application/json", "Content-Length: "]
    return "\r\n".join(lines).encode()


def worker_count(args: argparse.Namespace, senders: int) -> int:
    workers = args.workers or (1 if senders <= SINGLE_WORKER_MAX_SENDERS else DEFAULT_MULTI_WORKERS)
    return max(1, min(workers, senders))


def ingest_specs(args: argparse.Namespace, target: Target, head: bytes, senders: int,
                 second: Target | None = None) -> list[IngestSpec]:
    """Senders spread evenly over the workers (with a `second` hub: every other worker sends there)."""
    workers = worker_count(args, senders)
    if second is not None:
        workers = max(2, min(workers + workers % 2, senders))
    run_id = uuid.uuid4().hex[:10]
    pad = body_padding(run_id, args.body_bytes)
    cap = args.requests or 0
    return [
        IngestSpec(
            index=i,
            host=(target if second is None or i % 2 == 0 else second).host,
            port=(target if second is None or i % 2 == 0 else second).port,
            head=head,
            senders=senders // workers + (i < senders % workers),
            max_requests=(cap // workers + (i < cap % workers)) if cap else 0,
            duplicates=args.duplicates,
            run_id=run_id,
            pad=pad,
            request_timeout_s=args.timeout,
            command_timeout_s=WORKER_START_TIMEOUT_S + args.warmup + WORKER_REPLY_MARGIN_S,
        )
        for i in range(workers)
    ]


def webhook_counters(target: Target, source: str) -> dict[str, float] | None:
    """The hub's received/rejected webhook counters for `source` from /metrics (None if unavailable)."""
    try:
        text = httpx.get(f"http://{target.host_header}{target.prefix}{METRICS_PATH}", timeout=10.0).text
    except httpx.HTTPError:
        return None
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in (RECEIVED_COUNTER, REJECTED_COUNTER):
            continue
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels.get("source") == source:
                key = sample.labels.get("outcome") or "rejected"
                found[key] = found.get(key, 0.0) + sample.value
        found.setdefault("stored", 0.0)
    return found or None


def run_level(
    args: argparse.Namespace, target: Target, head: bytes, senders: int, probe: HubProbe | None,
    second: Target | None = None,
) -> dict[str, Any]:
    specs = ingest_specs(args, target, head, senders, second)
    pool = WorkerPool(specs, entry=ingest_worker_main, name="ingest")
    try:
        ready = pool.gather("ready", WORKER_START_TIMEOUT_S)
        connected = sum(r["connected"] for r in ready)
        connect_errors: Counter[str] = Counter()
        for r in ready:
            connect_errors.update(r["errors"])
        if connected == 0:
            raise RuntimeError(f"no sender connected: {dict(connect_errors)}")
        # With two hubs, each counts its own share: the hub-agreement check is left out (seqs are still checked).
        counters0 = webhook_counters(target, args.source) if second is None else None
        duration = args.duration if args.duration else MAX_DURATION_S
        t0 = time.monotonic() + args.warmup
        t_end = t0 + duration
        pool.broadcast(("go", t0, t_end))
        time.sleep(max(0.0, t0 - time.monotonic()))
        hub_cpu0 = probe.cpu_s() if probe else None
        machine0, main_cpu0 = machine_busy_cpu_s(), own_cpu_s()
        done = pool.gather("done", duration + WORKER_REPLY_MARGIN_S)
        hub_cpu1 = probe.cpu_s() if probe else None
        hub_exited = probe is not None and not probe.root.is_running()
        if hub_exited:
            hub_cpu1 = None  # a dead process reports no CPU: the difference would be meaningless
        machine1, main_cpu = machine_busy_cpu_s(), own_cpu_s() - main_cpu0
        window_s = max(d["end"] for d in done) - t0
        results = pool.gather("result", args.timeout + WORKER_REPLY_MARGIN_S)
        counters1 = webhook_counters(target, args.source) if second is None else None
        rss = probe.rss_bytes() if probe else None
    finally:
        pool.close()
    hub_cpu = None if hub_cpu0 is None or hub_cpu1 is None else hub_cpu1 - hub_cpu0
    machine = None if machine0 is None or machine1 is None else machine1 - machine0
    report: dict[str, Any] = {
        "senders": senders,
        "connected": connected,
        "connect_failed": sum(r["failed"] for r in ready),
        "connect_errors": dict(connect_errors.most_common(ERROR_SAMPLES)),
        "workers": len(specs),
    }
    report.update(throughput_figures(results, window_s))
    report.update(latency_figures(results))
    report.update(check_figures(results, counters0, counters1))
    report.update(cpu_figures(hub_cpu, main_cpu, results, window_s, machine))
    report["hub_rss_mib"] = None if rss is None or hub_exited else round(rss / (1 << 20), 1)
    if hub_exited:
        report["hub_exited"] = True
    return report


def throughput_figures(results: list[dict[str, Any]], window_s: float) -> dict[str, Any]:
    tally: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for r in results:
        tally.update(r["tally"])
        errors.update(r["errors"])
    accepted = tally["accepted"]
    return {
        "window_s": round(window_s, 3),
        "requests": accepted + tally["errors"],
        "accepted": accepted,
        "accepted_new": tally["accepted_new"],
        "accepted_duplicate": tally["accepted_duplicate"],
        "webhooks_per_s": round(accepted / window_s, 1) if window_s > 0 else 0.0,
        "new_per_s": round(tally["accepted_new"] / window_s, 1) if window_s > 0 else 0.0,
        "errors": tally["errors"],
        "errors_by_status": dict(errors.most_common(ERROR_SAMPLES)),
    }


def latency_figures(results: list[dict[str, Any]]) -> dict[str, Any]:
    # Workers carry similar load, so when reservoirs kick in pooling their samples stays close to unbiased.
    def pooled(key: str) -> list[int]:
        return sorted(itertools.chain.from_iterable(array("q", r[key]) for r in results))

    ms = 1e6
    acks, dups = pooled("latency_ns"), pooled("dup_latency_ns")
    figures: dict[str, Any] = {
        "ack_p50_ms": round(percentile(acks, 50) / ms, 3),
        "ack_p90_ms": round(percentile(acks, 90) / ms, 3),
        "ack_p99_ms": round(percentile(acks, 99) / ms, 3),
        "ack_max_ms": round((acks[-1] if acks else 0) / ms, 3),
        "ack_samples": len(acks),
        "ack_sampled": any(r["latency_seen"] > len(array("q", r["latency_ns"])) for r in results),
    }
    if dups:
        figures.update(
            dup_ack_p50_ms=round(percentile(dups, 50) / ms, 3),
            dup_ack_p99_ms=round(percentile(dups, 99) / ms, 3),
        )
    return figures


def check_figures(
    results: list[dict[str, Any]], before: dict[str, float] | None, after: dict[str, float] | None
) -> dict[str, Any]:
    """Consistency: every new delivery got its own seq; redeliveries got the original; hub agrees."""
    total: Counter[str] = Counter()
    for r in results:
        total.update(r["total"])
    seqs = list(itertools.chain.from_iterable(array("q", r["seqs"]) for r in results))
    figures: dict[str, Any] = {
        "seq_collisions": len(seqs) - len(set(seqs)),
        "unexpected_duplicates": total["unexpected_duplicates"],
        "missed_duplicates": total["missed_duplicates"],
        "duplicate_seq_mismatch": total["duplicate_seq_mismatch"],
        "client_acked_stored": total["stored"],
        "client_acked_duplicate": total["duplicate"],
    }
    if before is not None and after is not None:
        figures["hub_counted_stored"] = int(after.get("stored", 0) - before.get("stored", 0))
        figures["hub_counted_duplicate"] = int(after.get("duplicate", 0) - before.get("duplicate", 0))
        figures["hub_counted_rejected"] = int(after.get("rejected", 0) - before.get("rejected", 0))
    return figures


def cpu_figures(
    hub_cpu: float | None,
    main_cpu: float,
    results: list[dict[str, Any]],
    window_s: float,
    machine_cpu: float | None,
) -> dict[str, Any]:
    accepted = sum(r["tally"].get("accepted", 0) for r in results)
    client_cpu = main_cpu + sum(r["cpu_s"] for r in results)
    worker_pct = [
        100.0 * r["cpu_s"] / (r["t_end"] - r["t0"]) for r in results if r["t_end"] > r["t0"] > 0
    ]
    other = None
    if machine_cpu is not None and hub_cpu is not None and window_s > 0:
        other = machine_cpu - hub_cpu - client_cpu
    return {
        "hub_cpu_s": None if hub_cpu is None else round(hub_cpu, 3),
        "hub_cpu_pct": None if hub_cpu is None or window_s <= 0 else round(100.0 * hub_cpu / window_s, 1),
        "hub_cpu_us_per_webhook": None if hub_cpu is None or not accepted else round(hub_cpu / accepted * 1e6, 1),
        "client_cpu_s": round(client_cpu, 3),
        "client_cpu_pct": round(100.0 * client_cpu / window_s, 1) if window_s > 0 else None,
        "client_worker_cpu_pct": [round(p, 1) for p in worker_pct],
        "client_cpu_us_per_webhook": round(client_cpu / accepted * 1e6, 1) if accepted else None,
        "client_saturated": any(p >= CLIENT_SATURATED_PCT for p in worker_pct),
        "machine_cores": os.cpu_count(),
        "machine_busy_pct": round(100.0 * machine_cpu / window_s, 1) if machine_cpu is not None and window_s > 0 else None,
        "other_processes_cpu_s": None if other is None else round(max(0.0, other), 3),
        "other_pct": None if other is None or window_s <= 0 else round(100.0 * max(0.0, other) / window_s, 1),
    }


# --- Output -------------------------------------------------------------------------------------

REPORT_SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("run", ("senders", "workers", "connected", "connect_failed", "connect_errors")),
    ("throughput (2xx = committed; measured window after the warm-up)",
     ("window_s", "requests", "accepted", "accepted_new", "accepted_duplicate", "webhooks_per_s", "new_per_s",
      "errors", "errors_by_status")),
    ("ack latency (request written -> reply read; accepted requests)",
     ("ack_p50_ms", "ack_p90_ms", "ack_p99_ms", "ack_max_ms", "dup_ack_p50_ms", "dup_ack_p99_ms",
      "ack_samples", "ack_sampled")),
    ("checks (whole run incl. warm-up; hub_counted_* from its /metrics)",
     ("seq_collisions", "unexpected_duplicates", "missed_duplicates", "duplicate_seq_mismatch",
      "client_acked_stored", "client_acked_duplicate", "hub_counted_stored", "hub_counted_duplicate",
      "hub_counted_rejected")),
    ("hub", ("hub_cpu_s", "hub_cpu_pct", "hub_cpu_us_per_webhook", "hub_rss_mib")),
    ("client (this benchmark)", ("client_cpu_s", "client_cpu_pct", "client_worker_cpu_pct", "client_cpu_us_per_webhook",
                                 "client_saturated")),
    ("machine (all cores; 100% = one core)", ("machine_cores", "machine_busy_pct", "other_processes_cpu_s",
                                              "other_pct")),
)

SUMMARY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("senders", "senders"), ("webhooks/s", "webhooks_per_s"), ("errors", "errors"), ("p50 ms", "ack_p50_ms"),
    ("p90 ms", "ack_p90_ms"), ("p99 ms", "ack_p99_ms"), ("max ms", "ack_max_ms"),
    ("hub CPU %", "hub_cpu_pct"), ("hub µs/wh", "hub_cpu_us_per_webhook"),
    ("client CPU %", "client_cpu_pct"), ("busy %", "machine_busy_pct"), ("other %", "other_pct"),
)


def format_level(level: dict[str, Any]) -> str:
    lines = [f"== {level['senders']} sender(s) ==", *format_sections(level, REPORT_SECTIONS)]
    lines.extend(level_warnings(level))
    return "\n".join(lines)


def format_report(report: dict[str, Any]) -> str:
    head = {k: v for k, v in report.items() if k != "levels"}
    lines = ["callhub webhook ingest benchmark", "  " + ", ".join(f"{k}={v if k == 'hub_pid' else format_value(v)}" for k, v in head.items())]
    for level in report["levels"]:
        lines += ["", format_level(level)]
    rows = [[title for title, _ in SUMMARY_COLUMNS]]
    for level in report["levels"]:
        rows.append([
            format_value(max(level[key]) if isinstance(level[key], list) and level[key] else level[key])
            for _, key in SUMMARY_COLUMNS
        ])
    widths = [max(len(row[i]) for row in rows) for i in range(len(SUMMARY_COLUMNS))]
    lines += ["", "summary (CPU %: 100 = one core; other %: processes besides the hub and this client)"]
    lines += ["  " + "  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.append(f"  ({TARGET_NOTE})")
    return "\n".join(lines)


def level_warnings(level: dict[str, Any]) -> list[str]:
    found = []
    if level.get("client_saturated"):
        found.append(
            f"WARNING: a sender worker ran at >= {CLIENT_SATURATED_PCT:.0f}% of a core; the client may have capped"
            " the rate (try --workers)."
        )
    if level.get("hub_exited"):
        found.append("WARNING: the hub process exited during this level.")
    if level.get("errors"):
        found.append(f"WARNING: {level['errors']} errors (failed requests or reconnects): {level['errors_by_status']}")
    if level.get("connect_failed"):
        found.append(f"WARNING: {level['connect_failed']} senders could not connect: {level['connect_errors']}")
    other = level.get("other_pct")
    if other is not None and other >= 100 * OTHER_CPU_WARN_SHARE:
        found.append(
            f"WARNING: other processes used {other:.0f}% of a core during the window; the run was disturbed"
            " (run it again on a quiet machine)."
        )
    for key in ("seq_collisions", "unexpected_duplicates", "missed_duplicates", "duplicate_seq_mismatch"):
        if level.get(key):
            found.append(f"WARNING: {key} = {level[key]} (should be 0)")
    for side in ("stored", "duplicate"):
        hub, client = level.get(f"hub_counted_{side}"), level.get(f"client_acked_{side}")
        if hub is not None and hub != client:
            found.append(
                f"NOTE: the hub counted {hub} {side} webhooks, the client saw {client} such acks"
                " (a request that timed out or lost its connection may still have been committed)."
            )
    return found


# --- Command line -------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=(__doc__ or "").split("\n\n")[0])
    add = parser.add_argument
    add("--url", default="http://127.0.0.1:8080", help="hub base URL (http only)")
    add("--source", default="bench", help="webhook source name: POST /v1/webhooks/{source}")
    add("--token", help="the source's shared secret (verify = \"token\")")
    add("--auth", choices=("bearer", "query"), default="bearer",
        help="send the token as Authorization: Bearer (default) or ?token=")
    add("--senders", default=DEFAULT_SENDERS, help=f"comma-separated concurrency levels (default {DEFAULT_SENDERS})")
    add("--duration", type=float, help=f"measured seconds per level (default {DEFAULT_DURATION_S:g} unless --requests)")
    add("--requests", type=int, help="end a level after this many measured requests (with --duration: first wins)")
    add("--warmup", type=float, default=DEFAULT_WARMUP_S, help="seconds of sending before measuring")
    add("--duplicates", type=float, default=0.0, help="fraction of requests that redeliver an acked webhook")
    add("--body-bytes", type=int, default=DEFAULT_BODY_BYTES, help="approximate body size")
    add("--workers", type=int, default=0,
        help=f"sender processes (default: 1 up to {SINGLE_WORKER_MAX_SENDERS} senders, else {DEFAULT_MULTI_WORKERS})")
    add("--timeout", type=float, default=DEFAULT_REQUEST_TIMEOUT_S, help="per-request timeout, seconds")
    add("--hub-pid", type=int, help="hub PID, for its CPU figures")
    add(
        "--spawn-cmd",
        help="start the hub first (once, for all levels), e.g. '{python} -m hub serve --config x.toml --port"
        " {port}'; {python}, {port} and {key} (the token) are substituted, {port} overrides --url",
    )
    add("--spawn-cmd2", help="a second hub on the same store (Redis), started like --spawn-cmd: every other"
        " sender process sends to it")
    add("--json", help="also write the report to this file")
    args = parser.parse_args(argv)
    try:
        args.levels = [int(x) for x in args.senders.split(",") if x.strip()]
    except ValueError:
        parser.error("--senders must be comma-separated integers")
    if not args.levels or not all(0 < n <= MAX_SENDERS for n in args.levels):
        parser.error(f"--senders: each level between 1 and {MAX_SENDERS}")
    if args.duration is None and args.requests is None:
        args.duration = DEFAULT_DURATION_S
    if args.duration is not None and not 0 < args.duration <= MAX_DURATION_S:
        parser.error(f"--duration must be between 0 and {MAX_DURATION_S:.0f}")
    if args.requests is not None and not 0 < args.requests <= MAX_REQUESTS:
        parser.error(f"--requests must be between 1 and {MAX_REQUESTS}")
    if not 0 <= args.warmup <= 600 or not 0 < args.timeout <= 600:
        parser.error("--warmup / --timeout out of range")
    if not 0 <= args.duplicates < 1:
        parser.error("--duplicates must be in [0, 1)")
    if not 0 <= args.workers <= MAX_WORKERS:
        parser.error(f"--workers must be between 0 and {MAX_WORKERS}")
    if not 64 <= args.body_bytes <= 1 << 20:
        parser.error("--body-bytes out of range")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    hub = spawn_hub(args.spawn_cmd, args.url, args.token or "", label="ingest") if args.spawn_cmd else None
    hub2 = spawn_hub(args.spawn_cmd2, args.url, args.token or "", label="ingest-2") if args.spawn_cmd2 else None
    url = hub.url if hub else args.url.rstrip("/")
    try:
        pid = args.hub_pid or (hub.proc.pid if hub else None)
        probe = HubProbe(pid, *([hub2.proc.pid] if hub2 else [])) if pid else None
        target = Target.parse(url, "", "")
        second = Target.parse(hub2.url, "", "") if hub2 else None
        head = request_head(target, args.source, args.token, args.auth)
        levels = []
        for i, senders in enumerate(args.levels):
            if i:
                time.sleep(LEVEL_PAUSE_S)
            levels.append(run_level(args, target, head, senders, probe, second))
            print(f"ingest: {senders} sender(s): {levels[-1]['webhooks_per_s']:,.0f} webhooks/s,"
                  f" p99 {levels[-1]['ack_p99_ms']} ms", file=sys.stderr, flush=True)
        return {
            "mode": "ingest",
            "url": url,
            "source": args.source,
            "duration_s": args.duration,
            "max_requests": args.requests,
            "warmup_s": args.warmup,
            "duplicates_fraction": args.duplicates,
            "body_bytes": len(webhook_body("0" * 10, 0, 100_000, body_padding("0" * 10, args.body_bytes))),
            "hub_pid": pid,
            "levels": levels,
        }
    finally:
        for spawned in (hub, hub2):
            if spawned:
                spawned.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    raise_nofile_limit()
    try:
        report = run(args)
    except RuntimeError as exc:  # a failed phase (nothing connected, a worker died, hub not healthy)
        print(f"ingest: {exc}", file=sys.stderr)
        return 1
    emit_report(format_report(report), report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
