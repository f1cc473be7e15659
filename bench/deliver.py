"""Outbound webhook delivery benchmark for callhub: subscriptions to N endpoints on loopback.

It starts N webhook endpoints (one receiver process, raw asyncio + h11, each endpoint on its own
port so each is its own host to the hub's connection pool), creates one subscription per
endpoint through `POST /v1/subscriptions`, publishes E events at R/s through `POST /v1/events`
and waits until every endpoint has every event. It reports deliveries/s (delivered ÷ time from
the first publish to the last receipt), lost and duplicate deliveries, latency from publish to
receipt (the event's `data.t_ns`, taken just before its POST, so it covers the POST and the
commit too: an upper bound on commit -> receipt), the hub's CPU per delivery and the
receiver's own CPU.

    python -m bench.deliver --key KEY --endpoints 50 --events 1000 --rate 50 \
        --spawn-cmd "{python} -m hub serve --config bench.toml --port {port}"

The hub must allow deliveries to 127.0.0.1 (`[webhooks] allow_hosts = ["127.0.0.1"]`);
`bench.run_all` writes such a config. See bench/README.md ("Outbound delivery benchmark").
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import time
from array import array
from multiprocessing.connection import Connection
from typing import Any

import h11
import httpx
import orjson

from bench.fanout import (
    HubProbe,
    Target,
    emit_report,
    format_sections,
    machine_busy_cpu_s,
    new_event_loop,
    own_cpu_s,
    percentile,
    publish,
    raise_nofile_limit,
    spawn_hub,
)

DEFAULT_ENDPOINTS = 50
DEFAULT_EVENTS = 1000
DEFAULT_RATE = 50.0
DEFAULT_DRAIN_TIMEOUT_S = 60.0
MAX_ENDPOINTS = 1000
EVENT_TYPE = "bench.delivery"
DRAIN_POLL_S = 0.1
RECEIVER_READY_TIMEOUT_S = 30.0
#: Bytes one request may carry (the bench's events are ~300).
MAX_REQUEST_BYTES = 1 << 20

SECTIONS = (
    ("run", ("endpoints", "events_requested", "rate_requested", "events_published", "publish_failed",
             "publish_rate_achieved")),
    ("delivery", ("deliveries_expected", "delivered", "lost", "duplicates", "not_ok", "drained",
                  "delivery_window_s", "deliveries_per_s")),
    ("latency (publish -> receipt)", ("latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "latency_max_ms")),
    ("hub", ("hub_cpu_s", "hub_cpu_pct", "hub_cpu_us_per_delivery")),
    ("client", ("receiver_cpu_pct", "client_main_cpu_s")),
    ("machine (all cores; 100% = one core)", ("machine_busy_pct", "other_processes_cpu_s", "window_s")),
)


# --- The receiver process ---------------------------------------------------------------------------


class Endpoint(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection to an endpoint: records each delivery, answers 204."""

    def __init__(self, state: ReceiverState, index: int) -> None:
        self.state, self.index = state, index
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
        self.body = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.conn.receive_data(data)
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError:
                self.transport.close()
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return  # PAUSED: a pipelined request waits for this cycle's answer, sent below
            if isinstance(event, h11.Data):
                self.body += event.data
            elif isinstance(event, h11.EndOfMessage):
                self.state.record(self.index, bytes(self.body), time.time_ns())
                self.body.clear()
                out = self.conn.send(h11.Response(status_code=204, headers=[]))
                out += self.conn.send(h11.EndOfMessage())  # type: ignore[operator]
                self.transport.write(out)
                if self.conn.our_state is h11.MUST_CLOSE:
                    self.transport.close()
                    return
                self.conn.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed):
                self.transport.close()
                return


class ReceiverState:
    def __init__(self, endpoints: int) -> None:
        self.seen: list[set[int]] = [set() for _ in range(endpoints)]
        self.duplicates = 0
        self.latencies = array("q")
        self.first_ns = 0
        self.last_ns = 0

    def record(self, index: int, body: bytes, now_ns: int) -> None:
        event = orjson.loads(body)
        n = event["data"]["n"]
        seen = self.seen[index]
        if n in seen:
            self.duplicates += 1
            return
        seen.add(n)
        self.latencies.append(now_ns - event["data"]["t_ns"])
        self.first_ns = self.first_ns or now_ns
        self.last_ns = now_ns

    @property
    def delivered(self) -> int:
        return sum(len(s) for s in self.seen)


def receiver_main(endpoints: int, pipe: Connection) -> None:
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    state = ReceiverState(endpoints)

    async def serve() -> None:
        servers = [await loop.create_server(lambda i=i: Endpoint(state, i), "127.0.0.1", 0, backlog=1024)  # type: ignore[misc]
                   for i in range(endpoints)]
        pipe.send([s.sockets[0].getsockname()[1] for s in servers])
        started_cpu, started = own_cpu_s(), time.monotonic()
        while True:
            if pipe.poll():
                command = pipe.recv()
                if command == "count":
                    pipe.send(state.delivered)
                elif command == "report":
                    wall = time.monotonic() - started
                    pipe.send({"delivered": state.delivered, "duplicates": state.duplicates,
                               "latencies": sorted(state.latencies), "first_ns": state.first_ns,
                               "last_ns": state.last_ns, "cpu_pct": 100.0 * (own_cpu_s() - started_cpu) / wall})
                    return
            await asyncio.sleep(DRAIN_POLL_S / 2)

    loop.run_until_complete(serve())


# --- Orchestration -------------------------------------------------------------------------------------


def subscribe(url: str, key: str, ports: list[int]) -> None:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        for port in ports:
            r = client.post("/v1/subscriptions", json={"url": f"http://127.0.0.1:{port}/hook",
                                                       "types": ["bench.*"], "description": "bench"})
            if r.status_code != 201:
                raise SystemExit(f"creating a subscription failed: {r.status_code} {r.text[:300]}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    raise_nofile_limit()
    hub = spawn_hub(args.spawn_cmd, args.url, args.key, label="deliver") if args.spawn_cmd else None
    url = hub.url if hub else args.url
    pid = hub.proc.pid if hub else args.hub_pid
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    receiver = ctx.Process(target=receiver_main, args=(args.endpoints, child), daemon=True)
    receiver.start()
    try:
        if not parent.poll(RECEIVER_READY_TIMEOUT_S):
            raise SystemExit("the receiver process did not start")
        ports: list[int] = parent.recv()
        subscribe(url, args.key, ports)
        probe = HubProbe(pid) if pid else None
        time.sleep(1.0)  # the workers are up and listening
        target = Target.parse(url, args.key, "bench.*")
        hub_cpu0 = probe.cpu_s() if probe else None
        machine0, main0, wall0 = machine_busy_cpu_s(), own_cpu_s(), time.monotonic()
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            published = runner.run(publish(target, args.key, args.events, args.rate, EVENT_TYPE))
        expected = len(published.seqs) * args.endpoints
        deadline = time.monotonic() + args.drain_timeout
        delivered = 0
        while time.monotonic() < deadline:
            parent.send("count")
            delivered = parent.recv()
            if delivered >= expected:
                break
            time.sleep(DRAIN_POLL_S)
        window = time.monotonic() - wall0
        hub_cpu = probe.cpu_s() - hub_cpu0 if probe and hub_cpu0 is not None else None
        machine = machine_busy_cpu_s()
        main_cpu = own_cpu_s() - main0
        parent.send("report")
        report = parent.recv()
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
    finally:
        receiver.join(10)
        if receiver.is_alive():
            receiver.kill()
        if hub:
            hub.stop()
    lat = report["latencies"]
    delivery_window = (report["last_ns"] - published.first_ns) / 1e9 if report["last_ns"] else 0.0
    receiver_cpu = report["cpu_pct"] * window / 100
    other = None
    if machine is not None and machine0 is not None and hub_cpu is not None:
        other = round(max(0.0, machine - machine0 - hub_cpu - main_cpu - receiver_cpu), 3)
    delivered = report["delivered"]
    return {
        "endpoints": args.endpoints, "events_requested": args.events, "rate_requested": args.rate,
        "events_published": len(published.seqs), "publish_failed": sum(published.failures.values()),
        "publish_rate_achieved": round(len(published.seqs) / published.duration_s, 1) if published.duration_s else None,
        "deliveries_expected": expected, "delivered": delivered, "lost": expected - delivered,
        "duplicates": report["duplicates"], "not_ok": _failed_attempts(metrics), "drained": delivered >= expected,
        "delivery_window_s": round(delivery_window, 3),
        "deliveries_per_s": round(delivered / delivery_window, 1) if delivery_window > 0 else None,
        "latency_p50_ms": round(percentile(lat, 50) / 1e6, 3), "latency_p90_ms": round(percentile(lat, 90) / 1e6, 3),
        "latency_p99_ms": round(percentile(lat, 99) / 1e6, 3), "latency_max_ms": round((lat[-1] if lat else 0) / 1e6, 3),
        "hub_cpu_s": None if hub_cpu is None else round(hub_cpu, 3),
        "hub_cpu_pct": None if hub_cpu is None else round(100 * hub_cpu / window, 1),
        "hub_cpu_us_per_delivery": round(hub_cpu / delivered * 1e6, 2) if hub_cpu and delivered else None,
        "receiver_cpu_pct": round(report["cpu_pct"], 1), "client_main_cpu_s": round(main_cpu, 3),
        "machine_busy_pct": None if machine is None or machine0 is None else round(100 * (machine - machine0) / window, 1),
        "other_processes_cpu_s": other, "window_s": round(window, 3),
    }


def _failed_attempts(metrics: str) -> int:
    """Attempts the hub counted as not delivered (retries and failures) over the run."""
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith("callhub_webhook_delivery_attempts_total{") and 'result="delivered"' not in line:
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="the hub (ignored with {port} in --spawn-cmd)")
    parser.add_argument("--key", required=True, help="an admin key (it creates subscriptions and publishes)")
    parser.add_argument("--hub-pid", type=int, help="the hub's PID, for its CPU figures")
    parser.add_argument("--spawn-cmd", help="start the hub with this command ({python}, {port}, {key})")
    parser.add_argument("--endpoints", type=int, default=DEFAULT_ENDPOINTS)
    parser.add_argument("--events", type=int, default=DEFAULT_EVENTS)
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE, help="events published per second")
    parser.add_argument("--drain-timeout", type=float, default=DEFAULT_DRAIN_TIMEOUT_S)
    parser.add_argument("--json", help="write the figures here as JSON")
    args = parser.parse_args(argv)
    if not 1 <= args.endpoints <= MAX_ENDPOINTS:
        parser.error(f"--endpoints must be 1..{MAX_ENDPOINTS}")
    if args.events < 1 or args.rate <= 0:
        parser.error("--events and --rate must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    emit_report("\n".join(format_sections(report, SECTIONS)), report, args.json)
    return 0 if report["drained"] else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main())
