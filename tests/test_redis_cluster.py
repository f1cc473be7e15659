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

from handlers.antring.simulator.calls import ScriptedCall, inbound_answered, inbound_missed
from handlers.antring.simulator.http import Device, SimState, build_app
from handlers.antring.simulator.signals import SignalServer
from tests.antring_env import ACCOUNT, ALICE, antring_section
from tests.helpers import (
    ADMIN,
    TICK,
    WAIT,
    AppServer,
    HubProcess,
    SSEEvent,
    SSEReader,
    free_port,
    raw_config,
    wait_until,
    write_config,
)
from tests.redis_server import RedisServer
from tests.test_webhook_post import SECRET, Receiver, missed, rule


def start_hubs(tmp_path: Path, redis_url: str, count: int, prefix: str, *, rules: list[dict[str, Any]] | None = None,
               **sections: dict[str, Any]) -> list[HubProcess]:
    hubs = []
    for i in range(count):
        data = tmp_path / f"hub-{i}"
        raw = raw_config(data, backend={"url": redis_url, "prefix": prefix}, **sections)
        if rules:
            raw["rules"] = rules
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


# -- work done once: the AntRing socket under a lease ----------------------------------------------------------


def leases_of(hub: HubProcess) -> dict[str, int]:
    leases: dict[str, int] = httpx.get(f"{hub.url}/readyz", timeout=WAIT).json()["leases"]
    return leases


def test_one_process_holds_the_antring_socket_and_another_takes_over_after_kill_9(
        tmp_path: Path, redis_server: RedisServer) -> None:
    state = SimState(devices={"hub-device": Device("hub-pass"), "alice-101": Device("alice-pass", username="alice")})
    signals = SignalServer("socketio", token_valid=state.is_token_valid, account_id=ACCOUNT,
                           ping_interval=20 * TICK, ping_timeout=20 * TICK)
    with AppServer(build_app(state)) as api, AppServer(signals.app) as signal_server:
        section = antring_section(state, api, signal_server, "socketio", reconcile_interval=0)
        hubs = start_hubs(tmp_path, redis_server.url, 3, f"a{time.monotonic_ns()}:", antring=section,
                          server={"lease_ttl": 1.0})
        try:
            wait_until(lambda: signals.connections == 1 and len(signals.subscriptions) > 0, what="one socket")
            holders = [h for h in hubs if "service:antring" in leases_of(h)]
            first_token = leases_of(holders[0])["service:antring"] if holders else 0
            time.sleep(1.5)  # over a lease's ttl: the others still do not connect
            connections_while_held = signals.connections

            def play(call: ScriptedCall) -> None:
                for signal in call.signals:
                    signals.emit_threadsafe(signal.name, signal.payload)

            reader = next(h for h in hubs if h not in holders)  # a process that stays up

            def ended(call: ScriptedCall) -> bool:
                return any(e["type"] == "call.ended" and e["data"]["call_id"] == call.call_id
                           for e in reader.history() if e["type"].startswith("call."))

            before = inbound_answered(ALICE, "0912345678", account_id=ACCOUNT, ring_s=0.1, talk_s=0.1)
            play(before)
            wait_until(lambda: ended(before), what="the call before the crash")
            holders[0].kill9()
            survivors = [h for h in hubs if h is not holders[0]]
            wait_until(lambda: signals.connections == 1 and len(signals.subscriptions) > 0
                       and sum("service:antring" in leases_of(h) for h in survivors) == 1,
                       what="another process holding the socket")
            taken = [leases_of(h)["service:antring"] for h in survivors if "service:antring" in leases_of(h)]
            after = inbound_missed(ALICE, "0987654321", account_id=ACCOUNT, ring_s=0.1)
            play(after)
            wait_until(lambda: ended(after), what="the call after the takeover")
            events = [e for e in survivors[0].history() if e["type"].startswith("call.")]
        finally:
            for hub in hubs:
                hub.stop()
    assert len(holders) == 1 and connections_while_held == 1
    assert taken and taken[0] > first_token  # the new holder's fencing token is higher
    calls = [e["data"]["call_id"] for e in events]
    # Each signal once (one call event per signal), none twice around the takeover, none lost.
    assert calls.count(before.call_id) == len(before.signals)
    assert calls.count(after.call_id) == len(after.signals)
    assert set(calls) == {before.call_id, after.call_id}


# -- work done once: rules -------------------------------------------------------------------------------------


def test_a_rule_fires_once_with_three_processes_and_once_after_its_evaluator_is_killed(
        tmp_path: Path, redis_server: RedisServer) -> None:
    state = Receiver()
    with AppServer(state.app()) as server:
        actions = {"allow_private": ["127.0.0.1/32"], "webhook": {"secret": SECRET, "retry_for": "3s"}}
        hubs = start_hubs(tmp_path, redis_server.url, 3, f"r{time.monotonic_ns()}:", actions=actions,
                          server={"lease_ttl": 1.0}, rules=[rule(f"{server.url}/hook", body="missed {data.call_id}")])
        try:
            for i in range(9):
                assert publish_event(hubs[i % 3], missed(f"c-{i}")).status_code == 202
            wait_until(lambda: len(state.received) >= 9, what="one webhook per missed call")
            evaluators = [h for h in hubs if "rules" in leases_of(h)]
            evaluators[0].kill9()
            survivors = [h for h in hubs if h is not evaluators[0]]
            for i in range(9, 15):
                assert publish_event(survivors[i % 2], missed(f"c-{i}")).status_code == 202
            wait_until(lambda: len(state.received) >= 15, what="the webhooks after the takeover")
            time.sleep(1.0)  # time for a (wrong) second firing to arrive
            taken = [h for h in survivors if "rules" in leases_of(h)]
        finally:
            for hub in hubs:
                hub.stop()
    assert len(evaluators) == 1 and len(taken) == 1  # one process evaluates the rules at a time
    bodies = sorted(r["body"] for r in state.received)
    assert bodies == sorted(f"missed c-{i}".encode() for i in range(15))  # each call once, none lost


def publish_event(hub: HubProcess, event: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{hub.url}/v1/events", headers=ADMIN, timeout=WAIT, json=event)
