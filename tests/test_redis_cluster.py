"""Several real hub processes on one real Redis (`[backend] url = "redis://…"`): one event log,
fan-out and resume across processes, deduplication across processes, and what an acknowledged
publish survives (a Redis killed and restarted)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import (
    ADMIN,
    WAIT,
    HubProcess,
    SSEEvent,
    SSEReader,
    free_port,
    raw_config,
    wait_until,
    write_config,
)
from tests.redis_server import RedisServer


def start_hubs(tmp_path: Path, redis_url: str, count: int, prefix: str) -> list[HubProcess]:
    hubs = []
    for i in range(count):
        data = tmp_path / f"hub-{i}"
        raw = raw_config(data, backend={"url": redis_url, "prefix": prefix})
        config = write_config(tmp_path / f"hub-{i}.toml", raw)
        port = free_port()
        hubs.append(HubProcess(["--config", str(config), "--port", str(port)], port, tmp_path / f"hub-{i}.log"))
    for hub in hubs:
        hub.wait_healthy()
    return hubs


@pytest.fixture
def two_hubs(tmp_path: Path, redis_server: RedisServer) -> Iterator[list[HubProcess]]:
    hubs = start_hubs(tmp_path, redis_server.url, 2, f"c{time.monotonic_ns()}:")
    try:
        yield hubs
    finally:
        for hub in hubs:
            hub.stop()


@contextmanager
def sse(hub: HubProcess, path: str, headers: dict[str, str] | None = None) -> Iterator[SSEReader]:
    with httpx.stream("GET", f"{hub.url}{path}", headers={**ADMIN, **(headers or {})},
                      timeout=httpx.Timeout(WAIT, read=WAIT)) as response:
        assert response.status_code == 200
        wait_until(lambda: hub.subscriber_count() >= 1, what="the subscriber connected")
        yield SSEReader(response)


def data_events(reader: SSEReader, n: int) -> list[SSEEvent]:
    events: list[SSEEvent] = []
    while len(events) < n:
        event = reader.next()
        if event.id is not None and event.event is not None and event.event.startswith("call."):
            events.append(event)
    return events


def publish(hub: HubProcess, id_: str, **data: Any) -> httpx.Response:
    return httpx.post(f"{hub.url}/v1/events", headers=ADMIN, timeout=WAIT,
                      json={"type": "call.ringing", "source": "pbx-1", "id": id_, "data": {"call_id": id_, **data}})


def test_an_event_published_on_one_process_reaches_a_subscriber_on_another_in_seq_order(
        two_hubs: list[HubProcess]) -> None:
    a, b = two_hubs
    with sse(b, "/v1/stream?types=call.*") as reader:
        for i in range(30):
            assert publish(a if i % 2 else b, f"c-{i}").status_code == 202
        events = data_events(reader, 30)
    seqs = [int(e.id) for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == 30
    assert seqs == list(range(seqs[0], seqs[0] + 30))  # one sequence, no gap, whichever process stored it
    assert sorted(e.json["data"]["call_id"] for e in events) == sorted(f"c-{i}" for i in range(30))


def test_resume_works_on_any_process_and_duplicates_are_caught_across_processes(two_hubs: list[HubProcess]) -> None:
    a, b = two_hubs
    first = publish(a, "dup-1")
    again = publish(b, "dup-1")
    assert first.status_code == 202 and again.status_code == 200
    assert again.json()["seq"] == first.json()["seq"]
    seqs = [publish(a, f"r-{i}").json()["seq"] for i in range(5)]
    # A subscriber that saw up to seqs[1] on A comes back on B and gets the rest, in order.
    with sse(b, "/v1/stream?types=call.*", {"Last-Event-ID": str(seqs[1])}) as reader:
        events = data_events(reader, 3)
    assert [int(e.id) for e in events] == seqs[2:]
    assert [e["id"] for e in b.history()] == [e["id"] for e in a.history()]


def test_nothing_acknowledged_is_lost_when_redis_is_killed_and_restarted(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis").start()
    hubs = start_hubs(tmp_path, redis.url, 2, "k:")
    acked: list[str] = []
    refused: list[int] = []
    stop = threading.Event()

    def publisher() -> None:
        i = 0
        while not stop.is_set():
            try:
                r = publish(hubs[i % 2], f"k-{i}")
            except httpx.TransportError:
                r = None
            if r is not None and r.status_code in (200, 202):
                acked.append(f"k-{i}")
            elif r is not None:
                refused.append(r.status_code)
            i += 1

    thread = threading.Thread(target=publisher)
    thread.start()
    try:
        wait_until(lambda: len(acked) >= 20, what="publishes before the crash")
        redis.kill()
        time.sleep(1.0)
        down = httpx.get(f"{hubs[0].url}/readyz", timeout=WAIT).status_code
        redis = RedisServer(tmp_path / "redis", port=redis.port).start()
        count = len(acked)
        wait_until(lambda: len(acked) >= count + 20, what="publishes after the restart")
        stop.set()
        thread.join(WAIT)
        stored = {e["id"] for e in hubs[1].history()}
    finally:
        stop.set()
        for hub in hubs:
            hub.stop()
        redis.stop()
    assert down == 503
    assert refused and set(refused) == {503}  # while Redis was down: refused, never acknowledged
    assert not set(acked) - stored  # every acknowledged event is in the log
