"""Screen-pop: a ringing call from a known customer is enriched from AntCRM within the deadline, or not at all."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from websockets.sync.client import connect

from handlers.antcrm.simulator.app import DEFAULT_API_KEY, SimState, build_app
from handlers.antring.simulator.calls import inbound_answered
from tests.antring_env import ACCOUNT, ALICE, AntRingWorld, antring_world
from tests.helpers import ADMIN_KEY, TICK, WAIT, AppServer, wait_until


@pytest.fixture
def crm_server() -> Iterator[tuple[SimState, AppServer]]:
    state = SimState()
    state.add_contact("Nguyen Van A", phones=["0912345678"], contact_type="customer")
    with AppServer(build_app(state)) as server:
        yield state, server


@pytest.fixture
def crm(crm_server: tuple[SimState, AppServer]) -> SimState:
    return crm_server[0]


@pytest.fixture
def world(data_dir: Path, crm_server: tuple[SimState, AppServer]) -> Iterator[AntRingWorld]:
    extra = {"antcrm": {"base_url": crm_server[1].url, "api_key": DEFAULT_API_KEY}}
    with antring_world(data_dir, "blackhole", extra_config=extra) as w:
        w.wait_connected()
        yield w


def enriched(world: AntRingWorld, call_id: str) -> list[dict[str, object]]:
    return [e for e in world.history("call.enriched") if e["data"]["call_id"] == call_id]  # type: ignore[index]


def test_known_caller_is_enriched_while_it_rings(world: AntRingWorld) -> None:
    """A customer's call: call.enriched for the same call_id, with name, type and ids, soon after call.ringing."""
    call = inbound_answered(ALICE, "0912345678", account_id=ACCOUNT)
    with connect(f"{world.hub.ws_url}/v1/ws?token={ADMIN_KEY}&types=call.ringing,call.enriched") as ws:
        world.hub.wait_subscribers(1)
        world.play_partly(call, upto=1)
        ringing = orjson.loads(ws.recv(timeout=WAIT))
        started = time.monotonic()
        pop = orjson.loads(ws.recv(timeout=WAIT))
        elapsed = time.monotonic() - started
    assert ringing["type"] == "call.ringing" and pop["type"] == "call.enriched"
    assert pop["data"]["call_id"] == ringing["data"]["call_id"] == call.call_id
    assert pop["data"]["customer"]["name"] == "Nguyen Van A" and pop["data"]["customer"]["contactType"] == "customer"
    assert elapsed < 0.5
    assert world.hub.metric("callhub_vendor_requests_total", vendor="antcrm", endpoint="/contacts", status="200") >= 1


def test_unknown_caller_and_slow_crm_publish_nothing_and_never_delay_the_ring(world: AntRingWorld, crm: SimState) -> None:
    """An unknown number: no call.enriched. AntCRM slower than the deadline: none either, and the ring is on time."""
    unknown = inbound_answered(ALICE, "0987000111", account_id=ACCOUNT)
    world.play_partly(unknown, upto=1)
    crm.delay = 40 * TICK
    slow = inbound_answered(ALICE, "0912345670", account_id=ACCOUNT)
    crm.add_contact("Tran Thi B", phones=["0912345670"])
    started = time.monotonic()
    world.play_partly(slow, upto=1)
    wait_until(lambda: any(e["data"]["call_id"] == slow.call_id for e in world.history("call.ringing")),
               what="the ring")
    assert time.monotonic() - started < 20 * TICK
    time.sleep(50 * TICK)  # past the CRM's delay: a late answer must still not be published
    assert enriched(world, unknown.call_id) == [] and enriched(world, slow.call_id) == []


def test_a_contact_saved_in_another_form_pops_for_a_pre_2018_caller_id(world: AntRingWorld, crm: SimState) -> None:
    """Saved as +84393608879, called from 01693608879: AntCRM matches exactly, the hub asks each form, it pops."""
    crm.add_contact("Phạm Dũng", phones=["+84393608879"], contact_type="customer", scoreRank=5, rankName="VIP")
    call = inbound_answered(ALICE, "01693608879", account_id=ACCOUNT)
    world.play_partly(call, upto=1)
    wait_until(lambda: enriched(world, call.call_id), what="the screen-pop")
    (pop,) = enriched(world, call.call_id)
    assert pop["data"]["number"] == "0393608879"
    customer = pop["data"]["customer"]
    assert (customer["name"], customer["scoreRank"], customer["rankName"]) == ("Phạm Dũng", 5, "VIP")
    asked = [r["query"].get("phone") for r in crm.requests if r["path"] == "/contacts"]
    assert asked[-3:] == ["0393608879", "84393608879", "+84393608879"]


def test_a_client_made_call_gets_no_screen_pop(world: AntRingWorld, crm: SimState) -> None:
    """A publisher posting a `call.ringing` of its own cannot make the hub look a number up in AntCRM
    and publish the customer as AntCRM: screen-pops are for calls a vendor or webhook source reported."""
    before = len(crm.requests)
    world.hub.publish({"type": "call.ringing", "id": "fake-1",
                       "data": {"direction": "inbound", "call_id": "fake-1", "from": {"number": "0912345678"}}})
    call = inbound_answered(ALICE, "0912345678", account_id=ACCOUNT)  # a real one afterwards: popped
    world.play_partly(call, upto=1)
    wait_until(lambda: bool(enriched(world, call.call_id)), what="the real call's screen-pop")
    assert enriched(world, "fake-1") == []
    assert len(crm.requests) - before <= 1  # the real call's look-up only
