"""AntRing end to end: simulated calls reach subscribers as call events; the socket comes back after drops."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from websockets.sync.client import connect

from handlers.antring.simulator.calls import inbound_answered, inbound_missed, outbound_busy, transferred
from tests.antring_env import ACCOUNT, ALICE, BOB, AntRingWorld, antring_world
from tests.helpers import ADMIN, ADMIN_KEY, WAIT, SSEReader, wait_until

PROTOCOLS = ["socketio", "socketio-eio3", "socketio-0.9", "blackhole"]


@pytest.fixture(params=PROTOCOLS)
def world(request: pytest.FixtureRequest, data_dir: Path) -> Iterator[AntRingWorld]:
    with antring_world(data_dir, request.param) as w:
        w.wait_connected()
        yield w


def call_events(events: list[dict[str, object]], call_id: str) -> list[str]:
    return [str(e["type"]) for e in events if isinstance(e.get("data"), dict) and e["data"].get("call_id") == call_id]  # type: ignore[union-attr]


def test_simulated_call_reaches_sse_and_ws_subscribers_in_order(world: AntRingWorld) -> None:
    """An inbound answered call arrives as call.ringing, call.answered, call.ended on SSE and WS alike."""
    hub = world.hub
    call = inbound_answered(ALICE, "0912345678", account_id=ACCOUNT)
    with connect(f"{hub.ws_url}/v1/ws?token={ADMIN_KEY}&types=call.*") as ws, \
            httpx.Client(timeout=WAIT) as client, \
            client.stream("GET", f"{hub.url}/v1/stream?token={ADMIN_KEY}&types=call.*") as stream:
        hub.wait_subscribers(2)
        world.play(call)
        n = len(call.signals)
        ws_events = [orjson.loads(ws.recv(timeout=WAIT)) for _ in range(n)]
        sse_events = [e.json for e in SSEReader(stream).take(n)]
    for events in (ws_events, sse_events):
        types = call_events(events, call.call_id)
        assert len(types) == n, "every signal of the call arrives, all with one call_id"
        assert types.index("call.ringing") < types.index("call.answered") < types.index("call.ended")
        assert types[-1] == "call.ended"
        assert events[-1]["data"]["outcome"] == "answered" and events[-1]["data"]["agent"] == "alice"
        assert events[-1]["data"]["direction"] == "inbound" and events[-1]["source"] == "antring"
        assert events[-1]["data"]["raw"]["Call-ID"] == call.call_id
    assert [e["seq"] for e in ws_events] == [e["seq"] for e in sse_events]


def test_same_signal_twice_is_one_event(world: AntRingWorld) -> None:
    """A signal delivered twice (a replay after resubscribe) is stored and fanned out once."""
    call = inbound_missed(BOB, "0987654321", account_id=ACCOUNT)
    world.play(call)
    world.play(call)
    wait_until(lambda: len(call_events(world.history("call.*"), call.call_id)) == len(call.signals),
               what="the call's events")
    events = [e for e in world.history("call.*") if e["data"]["call_id"] == call.call_id]
    assert len(events) == len(call.signals)
    assert events[-1]["data"]["outcome"] == "cancelled" and events[-1]["data"]["agent"] == "bob"


def test_socket_drop_reconnects_resubscribes_and_reports_it(world: AntRingWorld) -> None:
    """After the socket drops, the hub says so, reconnects, resubscribes every binding and keeps consuming."""
    bindings = len(world.signals.subscriptions)
    world.signals.drop_all_threadsafe()
    world.wait_connected(connects=2)
    assert len(world.signals.subscriptions) == bindings
    types = [e["type"] for e in world.history("hub.upstream.*")]
    assert types[:3] == ["hub.upstream.connected", "hub.upstream.disconnected", "hub.upstream.connected"]
    call = outbound_busy(ALICE, "0903123456", account_id=ACCOUNT)
    world.play(call)
    wait_until(lambda: "call.ended" in call_events(world.history("call.*"), call.call_id), what="call after reconnect")
    ended = [e for e in world.history("call.ended") if e["data"]["call_id"] == call.call_id][-1]
    assert ended["data"]["outcome"] == "busy" and ended["data"]["direction"] == "outbound"
    metrics = httpx.get(f"{world.hub.url}/metrics", timeout=WAIT).text
    assert 'callhub_upstream_connected{upstream="antring"} 1.0' in metrics
    assert 'callhub_token_refreshes_total{outcome="ok",vendor="antring"}' in metrics
    assert 'callhub_vendor_requests_total{endpoint="/oapi/v1/voice/auth_token",status="200",vendor="antring"}' in metrics


def test_transfer_legs_share_one_call_id(world: AntRingWorld) -> None:
    """A transferred call's three legs (customer, first agent, second agent) carry one call_id."""
    call = transferred(ALICE, BOB, "0912000111", account_id=ACCOUNT)
    world.play(call)
    wait_until(lambda: len(call_events(world.history("call.*"), call.call_id)) == len(call.signals), what="all legs")
    events = [e for e in world.history("call.*") if e["data"]["call_id"] == call.call_id]
    assert {e["data"]["leg_id"] for e in events} == set(call.legs)
    assert {e["data"]["agent"] for e in events} >= {"alice", "bob"}


def test_refused_token_is_replaced_and_the_socket_comes_back(data_dir: Path) -> None:
    """When the socket refuses the voice token (expired early), the hub fetches a new one and reconnects."""
    with antring_world(data_dir, "blackhole") as world:
        world.wait_connected()
        issued = len(world.state.tokens)
        world.state.expire_tokens()
        world.signals.drop_all_threadsafe()
        world.wait_connected(connects=2)
        assert len(world.state.tokens) > issued, "a new token was fetched"
        assert world.signals.refused, "the old token was tried and refused first"


def test_readyz_reports_the_upstream_but_stays_ready_while_it_is_down(data_dir: Path) -> None:
    """With the signal socket unreachable, /readyz still answers 200 and shows antring disconnected."""
    with antring_world(data_dir, "blackhole") as world:
        world.wait_connected()
        world.signal_server.stop()
        wait_until(lambda: not world.upstream()["connected"], what="upstream down")
        r = httpx.get(f"{world.hub.url}/readyz", headers=ADMIN, timeout=WAIT)
        assert r.status_code == 200 and r.json()["upstreams"]["antring"]["connected"] is False


def test_a_bound_signal_callhub_does_not_map_arrives_as_call_signal(data_dir: Path) -> None:
    """An operator binds PARK_PARKED: the parked call's signal is stored as call.signal, nothing is dropped."""
    bindings = ["call.CHANNEL_CREATE.*", "call.PARK_PARKED.*"]
    with antring_world(data_dir, "blackhole", bindings=bindings) as world:
        world.wait_connected()
        call = inbound_answered(ALICE, "0912345678", account_id=ACCOUNT)
        world.play_partly(call, upto=1)
        park = {**call.signals[0].payload, "Msg-ID": "park-1", "Parking-Slot": "701"}
        world.signals.emit_threadsafe("PARK_PARKED", park)
        wait_until(lambda: world.history("call.signal"), what="the park signal")
        (event,) = world.history("call.signal")
        assert event["data"]["signal"] == "PARK_PARKED" and event["data"]["call_id"] == call.call_id
        assert event["data"]["raw"]["Parking-Slot"] == "701" and event["subject"] == call.call_id
