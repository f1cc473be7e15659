"""The hub as a real process: graceful shutdown on SIGTERM, durability across kill -9, resume on restart."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.helpers import (
    ADMIN_KEY,
    PUBLISHER,
    TICK,
    WAIT,
    HubProcess,
    SSEReader,
    event,
    free_port,
    raw_config,
    wait_until,
    write_config,
)

#: How long a SIGTERM'd hub may take to close its subscribers, flush and exit.
EXIT_WITHIN = 100 * TICK


class Hubs:
    """Starts hub processes on one config file (same data dir); kills leftovers at teardown.

    The first start listens on the file's `server.port`; a restart gets a fresh free port through
    `--port`, so that nothing else on the machine can take the old one in between.
    """

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.port = free_port()
        self.data_dir = tmp_path / "data"
        raw = raw_config(self.data_dir, server={"port": self.port})
        self.config = write_config(tmp_path / "hub.toml", raw)
        self.started: list[HubProcess] = []

    def start(self) -> HubProcess:
        log = self.tmp_path / f"hub-{len(self.started)}.log"
        if self.started:
            hub = HubProcess(["--config", str(self.config), "--port", str(port := free_port())], port, log)
        else:
            hub = HubProcess(["--config", str(self.config)], self.port, log)
        self.started.append(hub)
        return hub.wait_healthy()

    def cleanup(self) -> None:
        for hub in self.started:
            if hub.proc.poll() is None:
                hub.proc.kill()
            hub.proc.wait()


@pytest.fixture
def hubs(tmp_path: Path) -> Iterator[Hubs]:
    h = Hubs(tmp_path)
    try:
        yield h
    finally:
        h.cleanup()


def ws_connect(hub: HubProcess, **params: Any) -> ClientConnection:
    query = "&".join(f"{k}={v}" for k, v in {"token": ADMIN_KEY, **params}.items())
    # No client-side queue limit: the test reads frames after the fact and must not push back on the hub.
    return connect(f"{hub.ws_url}/v1/ws?{query}", open_timeout=WAIT, max_queue=None)


def recv_json(ws: ClientConnection, timeout: float = WAIT) -> dict[str, Any]:
    parsed: dict[str, Any] = orjson.loads(ws.recv(timeout=timeout))
    return parsed


def drain_until_closed(ws: ClientConnection) -> tuple[list[dict[str, Any]], ConnectionClosed]:
    """Every frame still to come on `ws`, and how the connection ended."""
    frames: list[dict[str, Any]] = []
    while True:
        try:
            frames.append(recv_json(ws))
        except ConnectionClosed as exc:
            return frames, exc


def is_strictly_increasing(seqs: list[int]) -> bool:
    return all(a < b for a, b in zip(seqs, seqs[1:], strict=False))


# -- (a) graceful shutdown ---------------------------------------------------------------------------


def test_sigterm_closes_ws_with_1012_ends_sse_and_exits_0(hubs: Hubs) -> None:
    """On SIGTERM, WS subscribers get close 1012, SSE streams end cleanly, and the hub exits 0 promptly."""
    hub = hubs.start()
    acked = hub.publish(*(event("call.ringing", agent="alice", n=i) for i in range(5)))

    with ws_connect(hub, after=0) as ws, httpx.Client(base_url=hub.url, timeout=WAIT) as client:
        with client.stream("GET", "/v1/stream", params={"token": ADMIN_KEY, "after": 0}) as response:
            assert response.status_code == 200
            sse = SSEReader(response)
            assert [int(e.id or 0) for e in sse.take(5)] == acked
            assert [recv_json(ws)["seq"] for _ in acked] == acked
            wait_until(lambda: hub.subscriber_count() == 2, what="two subscribers")

            (live,) = hub.publish(event("call.answered", agent="alice"))
            acked.append(live)
            assert sse.next().json["seq"] == live
            assert recv_json(ws)["seq"] == live

            started = time.monotonic()
            hub.sigterm()

            frames, closed = drain_until_closed(ws)
            assert frames == []
            assert closed.rcvd is not None, "the hub dropped the WebSocket without a close frame"
            assert closed.rcvd.code == 1012
            assert closed.rcvd.reason == "service restart"

            # The SSE response ends (a clean end of stream, not a protocol error).
            with pytest.raises(EOFError):
                sse.next()

    hub.proc.wait(WAIT)
    elapsed = time.monotonic() - started
    assert elapsed < EXIT_WITHIN, f"hub took {elapsed:.1f}s to exit"
    assert hub.proc.returncode == 0, f"exit status {hub.proc.returncode}:\n{hub.log.read_text()}"


def test_events_acknowledged_before_sigterm_are_there_after_restart(hubs: Hubs) -> None:
    """Everything acknowledged before a graceful shutdown is there after restart; new seqs go higher."""
    hub = hubs.start()
    acked = hub.publish(*(event("call.ringing", agent="alice", n=i) for i in range(20)))
    hub.sigterm()
    hub.proc.wait(WAIT)

    hub = hubs.start()
    history = hub.history()
    assert [e["seq"] for e in history] == acked
    assert [e["data"]["n"] for e in history] == list(range(20))
    (new,) = hub.publish(event("call.ended", agent="alice"))
    assert new > max(acked)


# -- (b) kill -9 durability ------------------------------------------------------------------------------


class Publishers:
    """Several threads publishing distinct events concurrently, recording every acknowledgement."""

    def __init__(self, hub: HubProcess, *, threads: int, per_thread: int, signal_after: int) -> None:
        self.hub = hub
        self.per_thread = per_thread
        self.signal_after = signal_after
        self.acked: dict[str, int] = {}
        self.failed = 0
        self.reached = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(t,), name=f"pub-{t}") for t in range(threads)
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def join(self) -> None:
        for t in self._threads:
            t.join(WAIT)
            assert not t.is_alive()

    def _run(self, t: int) -> None:
        with httpx.Client(base_url=self.hub.url, headers=PUBLISHER, timeout=WAIT) as client:
            for i in range(self.per_thread):
                ev = {
                    "id": f"kill-{t}-{i}",
                    "source": "durability-test",
                    **event("call.ringing", agent="alice", t=t, i=i),
                }
                try:
                    r = client.post("/v1/events", json=ev)
                except httpx.TransportError:
                    with self._lock:
                        self.failed += self.per_thread - i
                    return
                if r.status_code in (200, 202):
                    with self._lock:
                        self.acked[ev["id"]] = r.json()["seq"]
                        if len(self.acked) >= self.signal_after:
                            self.reached.set()


def test_kill9_keeps_every_acknowledged_event_and_ws_resumes_without_gap(hubs: Hubs) -> None:
    """After kill -9 mid-publish every acked event is stored; a WS resume has no gap and no duplicate."""
    hub = hubs.start()
    with ws_connect(hub) as live_ws:
        wait_until(lambda: hub.subscriber_count() == 1, what="live subscriber")
        publishers = Publishers(hub, threads=6, per_thread=60, signal_after=120)
        publishers.start()
        try:
            assert publishers.reached.wait(WAIT), "publishers never reached the kill point"
            hub.kill9()
        finally:
            publishers.join()
        seen, closed = drain_until_closed(live_ws)
    assert closed.rcvd is None  # killed: no close frame
    assert publishers.failed > 0, "the kill came after every publish had finished"
    acked = publishers.acked
    assert len(acked) >= 120

    seen_seqs = [e["seq"] for e in seen]
    assert is_strictly_increasing(seen_seqs)
    last_seen = seen_seqs[-1] if seen_seqs else 0

    hub = hubs.start()
    history = hub.history()
    stored = {e["id"]: e["seq"] for e in history}
    history_seqs = [e["seq"] for e in history]
    assert is_strictly_increasing(history_seqs)
    assert len(stored) == len(history), "an event id is stored twice"
    missing = {i: s for i, s in acked.items() if stored.get(i) != s}
    assert missing == {}, f"{len(missing)} acknowledged events lost or renumbered"
    assert set(seen_seqs) <= set(history_seqs), "a delivered event is not in the store"

    with ws_connect(hub, after=last_seen) as ws:
        expected = [s for s in history_seqs if s > last_seen]
        resumed = [recv_json(ws) for _ in expected]
        assert [e["seq"] for e in resumed] == expected
        assert [e["id"] for e in resumed] == [e["id"] for e in history if e["seq"] > last_seen]
        wait_until(lambda: hub.subscriber_count() == 1, what="resumed subscriber")

        fresh = hub.publish(*(event("call.ended", agent="alice", n=i) for i in range(3)))
        assert min(fresh) > max(history_seqs)
        assert [recv_json(ws)["seq"] for _ in fresh] == fresh
        with pytest.raises(TimeoutError):
            ws.recv(timeout=4 * TICK)


# -- (c) seqs never go back ----------------------------------------------------------------------------


def test_seqs_after_restart_are_above_every_earlier_one(hubs: Hubs) -> None:
    """Across a kill -9 and a graceful restart, each new event's seq is above every seq stored before."""
    hub = hubs.start()
    first = hub.publish(*(event("call.ringing", n=i) for i in range(3)))
    hub.kill9()

    hub = hubs.start()
    second = hub.publish(*(event("call.ringing", n=i) for i in range(3)))
    assert min(second) > max(first)
    hub.sigterm()
    hub.proc.wait(WAIT)

    hub = hubs.start()
    third = hub.publish(event("call.ringing", n=99))
    assert min(third) > max(second)
    seqs = [e["seq"] for e in hub.history()]
    assert seqs == first + second + third
    # A duplicate publish after restart gets its original seq back, not a new one.
    with httpx.Client(base_url=hub.url, headers=PUBLISHER, timeout=WAIT) as client:
        ev = {"id": "once", "source": "restart-test", **event("call.ringing")}
        r = client.post("/v1/events", json=ev)
        assert r.status_code == 202
        original = r.json()["seq"]
    hub.kill9()
    hub = hubs.start()
    with httpx.Client(base_url=hub.url, headers=PUBLISHER, timeout=WAIT) as client:
        r = client.post("/v1/events", json=ev)
        assert r.status_code == 200
        assert r.json()["seq"] == original
