"""One number, every vendor: a caller id in a trunk's form flows through rules into AntCRM, AntRing and Vbee.

The caller id arrives on AntRing's socket as `84…` (E.164 without its plus); the event carries the
normal form, and a rule's plain `{data.from.number}` reaches each vendor the way it wants it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from handlers.antcrm.simulator.app import DEFAULT_API_KEY
from handlers.antcrm.simulator.app import SimState as CrmState
from handlers.antcrm.simulator.app import build_app as build_crm_app
from handlers.antring.simulator.calls import inbound_missed, internal_call
from handlers.vbee.simulator.app import build_app as build_vbee_app
from tests.antring_env import ACCOUNT, ALICE, BOB, AntRingWorld, antring_world
from tests.helpers import AppServer, wait_until
from tests.vbee_env import sim_state as vbee_sim_state
from tests.vbee_env import vbee_section

RULE: dict[str, Any] = {
    "name": "missed-call",
    "on": ["call.ended"],
    # The customer's leg ends `cancelled` (the agent's `no_answer`): one firing per call.
    "when": {"data.direction": "inbound", "data.outcome": "cancelled"},
    "actions": [
        {"type": "antcrm.create_ticket", "title": "Cuộc gọi nhỡ từ {data.from.number}", "SLA": "SLA-4H",
         "contact": {"name": "Khách {data.from.number}", "phones": [{"type": "Work", "value": "{data.from.number}"}]}},
        {"type": "antring.click_to_call", "agent": "alice", "number": "{data.from.number}"},
        {"type": "vbee.add_contacts", "campaign_id": "camp-callback", "phone_number": "{data.from.number}"},
    ],
}


@pytest.fixture
def setup(data_dir: Path) -> Iterator[tuple[AntRingWorld, CrmState, Any]]:
    crm, vbee = CrmState(), vbee_sim_state()
    with AppServer(build_crm_app(crm)) as crm_api, AppServer(build_vbee_app(vbee)) as vbee_api:
        extra = {"antcrm": {"base_url": crm_api.url, "api_key": DEFAULT_API_KEY},
                 "vbee": vbee_section(vbee_api.url), "rules": [RULE]}
        with antring_world(data_dir, "blackhole", extra_config=extra) as world:
            world.wait_connected()
            yield world, crm, vbee


def test_a_caller_id_in_any_form_reaches_every_vendor_as_it_wants_it(setup: tuple[AntRingWorld, CrmState, Any]) -> None:
    """Caller id 84903555777: the event says 0903555777 (as sent kept); AntCRM gets 0903555777, the
    click-to-call rings 0903555777, Vbee gets +84903555777."""
    world, crm, vbee = setup
    call = inbound_missed(BOB, "84903555777", account_id=ACCOUNT)
    world.play(call)
    wait_until(lambda: len(world.history("action.succeeded")) == 3, what="the three actions")
    ended = [e for e in world.history("call.ended") if e["data"]["leg_id"] == call.call_id][0]
    assert ended["data"]["from"]["number"] == "0903555777" and ended["data"]["from"]["as_sent"] == "84903555777"
    (ticket,) = crm.tickets
    assert ticket["title"] == "Cuộc gọi nhỡ từ 0903555777"
    assert ticket["contact"]["phones"] == [{"type": "Work", "value": "0903555777"}]
    assert [c["number"] for c in world.state.clicks] == ["0903555777"]
    assert [c["phone_number"] for c in vbee.contacts] == ["+84903555777"]


def test_an_internal_callers_extension_is_called_back_as_an_extension(data_dir: Path) -> None:
    """A rule's click-to-call to `{data.from.number}` of an internal call rings the colleague's extension."""
    rule = {"name": "call-colleague-back", "on": ["call.ended"], "when": {"data.direction": "internal"},
            "cooldown": {"key": "{data.call_id}", "for": "10m"},  # both legs end: one call-back
            "actions": [{"type": "antring.click_to_call", "agent": "alice", "number": "{data.from.number}"}]}
    with antring_world(data_dir, "blackhole", extra_config={"rules": [rule]}) as world:
        world.wait_connected()
        world.play(internal_call(BOB, ALICE, account_id=ACCOUNT))
        wait_until(lambda: world.history("action.succeeded"), what="the call-back")
        assert [c["number"] for c in world.state.clicks] == ["102"]
