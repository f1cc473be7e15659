"""Several real hub processes on one real Redis (`[backend] url = "redis://…"`): one event log,
fan-out and resume across processes, deduplication across processes, and what an acknowledged
publish survives (a Redis killed and restarted)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

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
from tests.test_subscriptions import Delivery, Endpoint
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


# -- work done once: outbound webhook deliveries ---------------------------------------------------------------


@dataclass
class Recording(Endpoint):
    """An endpoint that also keeps the status it answered each delivery with."""

    outcomes: list[tuple[Delivery, int]] = field(default_factory=list)

    def status_for(self, delivery: Delivery) -> int:
        status = super().status_for(delivery)
        with self.lock:
            self.outcomes.append((delivery, status))
        return status

    def delivered(self, start: int = 0) -> list[dict[str, Any]]:
        """The events answered 2xx, in the order they arrived (from the `start`th request on), each
        verified with `standardwebhooks`."""
        assert self.secret is not None
        hook = Webhook(self.secret)
        with self.lock:
            outcomes = self.outcomes[start:]
        return [hook.verify(d.body, d.headers) for d, status in outcomes if 200 <= status < 300]


def hook_section(**extra: Any) -> dict[str, Any]:
    return {"allow_hosts": ["127.0.0.1"], "retry_schedule": [0, 4 * TICK, 4 * TICK, 4 * TICK], **extra}


def create_subscription(hub: HubProcess, url: str, **spec: Any) -> dict[str, Any]:
    r = httpx.post(f"{hub.url}/v1/subscriptions", headers=ADMIN, timeout=WAIT, json={"url": url, **spec})
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


def deliverers(hubs: list[HubProcess]) -> list[HubProcess]:
    return [h for h in hubs if "deliveries" in leases_of(h)]


def test_a_subscription_made_on_one_process_is_delivered_once_by_one_of_three(
        tmp_path: Path, redis_server: RedisServer) -> None:
    state = Recording()
    with AppServer(state.app()) as server:
        hubs = start_hubs(tmp_path, redis_server.url, 3, f"w{time.monotonic_ns()}:", webhooks=hook_section(),
                          server={"lease_ttl": 1.0})
        try:
            wait_until(lambda: len(deliverers(hubs)) == 1, what="one process delivering")
            holder = deliverers(hubs)[0]
            others = [h for h in hubs if h is not holder]
            created = create_subscription(others[0], f"{server.url}/hook", types=["call.*"])
            state.secret = created["secret"]
            for i in range(30):
                assert publish(hubs[i % 3], f"d-{i}").status_code == 202
            wait_until(lambda: len(state.received) >= 30, what="every event delivered")
            time.sleep(20 * TICK)  # time for a (wrong) second delivery to arrive
            shown = [httpx.get(f"{h.url}/v1/subscriptions/{created['id']}", headers=ADMIN, timeout=WAIT).json()
                     for h in hubs]
            holders = deliverers(hubs)
        finally:
            for hub in hubs:
                hub.stop()
    delivered = state.delivered()
    assert sorted(e["data"]["call_id"] for e in delivered) == sorted(f"d-{i}" for i in range(30))
    assert len(state.received) == 30  # exactly once each: no other process delivered them too
    assert len(holders) == 1 and holders[0] is holder
    assert all(s["id"] == created["id"] and s["types"] == ["call.*"] and s["state"] == "active" for s in shown)


def test_after_kill_9_of_the_delivering_process_another_delivers_everything_in_call_order(
        tmp_path: Path, redis_server: RedisServer) -> None:
    state = Recording(always=503, hang=2 * TICK)  # failing, slowly, until the takeover
    calls = [f"call-{i}" for i in range(8)]
    with AppServer(state.app()) as server:
        hubs = start_hubs(tmp_path, redis_server.url, 3, f"k{time.monotonic_ns()}:",
                          webhooks=hook_section(retry_schedule=[0] + [6 * TICK] * 30), server={"lease_ttl": 1.0})
        try:
            wait_until(lambda: len(deliverers(hubs)) == 1, what="one process delivering")
            holder = deliverers(hubs)[0]
            first_token = leases_of(holder)["deliveries"]
            survivors = [h for h in hubs if h is not holder]
            created = create_subscription(survivors[0], f"{server.url}/hook", types=["call.*"], ordering="per_call")
            state.secret = created["secret"]
            published: list[str] = []

            def send(hub: HubProcess, call_id: str, type_: str) -> None:
                event_id = f"{call_id}-{type_}"
                r = publish_event(hub, {"type": type_, "source": "pbx-1", "id": event_id, "data": {"call_id": call_id}})
                assert r.status_code == 202, r.text
                published.append(event_id)

            for n, type_ in enumerate(("call.ringing", "call.answered")):
                for i, call_id in enumerate(calls):
                    send(hubs[(i + n) % 3], call_id, type_)
            wait_until(lambda: len(state.received) >= 20, what="attempts failing before the crash")
            holder.kill9()
            for i, call_id in enumerate(calls):  # while the new holder takes over
                send(survivors[i % 2], call_id, "call.ended")
            wait_until(lambda: len(deliverers(survivors)) == 1, what="another process delivering")
            taken = deliverers(survivors)
            token = leases_of(taken[0])["deliveries"]
            state.always = None  # the endpoint recovers
            wanted = set(published)
            wait_until(lambda: wanted <= {e["id"] for e in state.delivered()}, timeout=2 * WAIT,
                       what="every event delivered after the takeover")
        finally:
            for hub in hubs:
                hub.stop()
    assert len(taken) == 1 and token > first_token
    delivered = state.delivered()
    assert {e["id"] for e in delivered} == set(published)  # none lost (some may have come twice: at least once)
    order = {"call.ringing": 0, "call.answered": 1, "call.ended": 2}
    for call_id in calls:
        first_seen: list[str] = []
        for event in delivered:
            if event["data"]["call_id"] == call_id and event["type"] not in first_seen:
                first_seen.append(event["type"])
        assert first_seen == sorted(first_seen, key=order.__getitem__), (call_id, first_seen)


def test_changes_made_on_a_process_that_does_not_deliver_take_effect_where_deliveries_are_made(
        tmp_path: Path, redis_server: RedisServer) -> None:
    state = Recording()
    with AppServer(state.app()) as server:
        hubs = start_hubs(tmp_path, redis_server.url, 2, f"p{time.monotonic_ns()}:", webhooks=hook_section(),
                          server={"lease_ttl": 1.0})
        try:
            wait_until(lambda: len(deliverers(hubs)) == 1, what="one process delivering")
            holder = deliverers(hubs)[0]
            other = next(h for h in hubs if h is not holder)
            created = create_subscription(holder, f"{server.url}/hook", types=["call.ringing"])
            path = f"{other.url}/v1/subscriptions/{created['id']}"
            state.secret = created["secret"]
            assert publish(other, "before").status_code == 202
            wait_until(lambda: len(state.received) == 1, what="the first delivery")
            r = httpx.patch(path, headers=ADMIN, timeout=WAIT, json={"types": ["call.ended"]})
            assert r.status_code == 200 and r.json()["types"] == ["call.ended"], r.text
            rotated = httpx.post(f"{path}/rotate-secret", headers=ADMIN, timeout=WAIT)
            assert rotated.status_code == 200, rotated.text
            for hub in (holder, other):  # a ringing no longer wanted, then an ended that is
                assert publish(hub, f"ringing-{hub.port}").status_code == 202
                assert publish_event(hub, {"type": "call.ended", "source": "pbx-1", "id": f"ended-{hub.port}",
                                           "data": {"call_id": f"ended-{hub.port}"}}).status_code == 202
            wait_until(lambda: len(state.received) == 3, what="the ended events")
            state.secret = rotated.json()["secret"]  # signed with the new secret (and the old one, overlapping)
            after_rotation = state.delivered(start=1)
            shown = httpx.get(f"{holder.url}/v1/subscriptions/{created['id']}", headers=ADMIN, timeout=WAIT).json()
            assert httpx.delete(path, headers=ADMIN, timeout=WAIT).status_code == 204
            for i in range(4):
                publish_event(hubs[i % 2], {"type": "call.ended", "source": "pbx-1", "id": f"gone-{i}",
                                            "data": {"call_id": f"gone-{i}"}})
            time.sleep(20 * TICK)  # time for a (wrong) delivery to a deleted subscription
            gone = httpx.get(f"{holder.url}/v1/subscriptions/{created['id']}", headers=ADMIN, timeout=WAIT)
        finally:
            for hub in hubs:
                hub.stop()
    assert [e["id"] for e in after_rotation] and {e["type"] for e in after_rotation} == {"call.ended"}
    assert sorted(e["id"] for e in after_rotation) == sorted(f"ended-{h.port}" for h in hubs)
    assert shown["types"] == ["call.ended"]
    assert len(state.received) == 3  # nothing after the delete
    assert gone.status_code == 404


def test_replay_and_retry_asked_of_a_process_that_does_not_deliver_are_done_by_the_one_that_does(
        tmp_path: Path, redis_server: RedisServer) -> None:
    state = Recording()
    with AppServer(state.app()) as server:
        hubs = start_hubs(tmp_path, redis_server.url, 2, f"q{time.monotonic_ns()}:", webhooks=hook_section(),
                          server={"lease_ttl": 1.0})
        try:
            wait_until(lambda: len(deliverers(hubs)) == 1, what="one process delivering")
            other = next(h for h in hubs if h not in deliverers(hubs))
            created = create_subscription(other, f"{server.url}/hook", types=["call.*"])
            sub, state.secret = created["id"], created["secret"]
            seqs = [publish(hubs[i % 2], f"r-{i}").json()["seq"] for i in range(3)]
            wait_until(lambda: len(state.received) == 3, what="the first deliveries")
            r = httpx.post(f"{other.url}/v1/subscriptions/{sub}/replay", headers=ADMIN, timeout=WAIT,
                           json={"after_seq": seqs[0] - 1})
            assert r.status_code == 202, r.text
            wait_until(lambda: len(state.received) == 6, what="the replay")
            state.answers = [400]  # final: failed, no retry
            rejected = publish(other, "rejected").json()["seq"]
            wait_until(lambda: len(state.received) == 7, what="the rejected delivery")
            wait_until(lambda: any(row["outcome"] == "failed" for row in httpx.get(
                f"{other.url}/v1/subscriptions/{sub}/deliveries", headers=ADMIN, timeout=WAIT).json()["deliveries"]),
                what="the failure in the delivery log, read on the process that does not deliver")
            retry = httpx.post(f"{other.url}/v1/deliveries/{sub}.{rejected}/retry", headers=ADMIN, timeout=WAIT)
            wait_until(lambda: len(state.received) == 8, what="the retry")
            time.sleep(10 * TICK)
            shown = httpx.get(f"{other.url}/v1/subscriptions/{sub}", headers=ADMIN, timeout=WAIT).json()
        finally:
            for hub in hubs:
                hub.stop()
    ids = [e["data"]["call_id"] for e in state.delivered()]
    assert sorted(ids[:3]) == sorted(ids[3:6]) == ["r-0", "r-1", "r-2"] and ids[6:] == ["rejected"], ids
    webhook_ids: dict[str, set[str]] = {}
    for d in state.received:
        webhook_ids.setdefault(d.event["data"]["call_id"], set()).add(d.headers["webhook-id"])
    assert all(len(v) == 1 for v in webhook_ids.values()) and len(webhook_ids) == 4  # the same id every time
    assert retry.status_code == 202 and retry.json() == {"delivery": f"{sub}.{rejected}", "state": "queued"}
    assert len(state.received) == 8
    assert shown["cursor"] >= rejected and shown["last_success"] is None  # as a non-holder shows it


def test_a_holder_that_cannot_renew_its_lease_stops_delivering_at_once(
        tmp_path: Path, redis_server: RedisServer) -> None:
    import redis

    state = Recording()
    prefix = f"l{time.monotonic_ns()}:"
    with AppServer(state.app()) as server:
        hubs = start_hubs(tmp_path, redis_server.url, 2, prefix, webhooks=hook_section(), server={"lease_ttl": 1.0})
        client = redis.Redis.from_url(redis_server.url)
        try:
            wait_until(lambda: len(deliverers(hubs)) == 1, what="one process delivering")
            created = create_subscription(hubs[0], f"{server.url}/hook", types=["call.*"])
            state.secret = created["secret"]
            assert publish(hubs[1], "before").status_code == 202
            wait_until(lambda: len(state.received) == 1, what="the first delivery")
            # Another holder (one that is not a hub) has the lease for 3 s: the holder's renewal fails.
            client.set(f"{prefix}lease:deliveries", "elsewhere:999", px=3000)
            wait_until(lambda: not deliverers(hubs), what="the holder stopping")
            for i in range(3):
                assert publish(hubs[i % 2], f"meanwhile-{i}").status_code == 202
            time.sleep(1.0)
            while_stolen = len(state.received)
            wait_until(lambda: len(state.received) == 4, what="the deliveries once a hub holds the lease again")
            holders = deliverers(hubs)
        finally:
            client.close()
            for hub in hubs:
                hub.stop()
    assert while_stolen == 1  # nobody delivered while neither hub held the lease
    assert len(holders) == 1
    ids = [e["data"]["call_id"] for e in state.delivered()]
    assert ids[0] == "before" and sorted(ids[1:]) == ["meanwhile-0", "meanwhile-1", "meanwhile-2"], ids
