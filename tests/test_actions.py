"""Rule actions end to end: a missed call opens one AntCRM ticket and rings one agent, seen live as events."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from handlers.antcrm.simulator.app import DEFAULT_API_KEY, SimState, build_app
from handlers.antring.simulator.calls import inbound_missed
from handlers.antring.simulator.http import Device
from handlers.antring.simulator.http import SimState as RingState
from handlers.antring.simulator.http import build_app as build_ring_app
from handlers.antring.simulator.signals import SignalServer
from handlers.vbee.simulator.app import build_app as build_vbee_app
from hub.config import config_from_dict
from hub.plugin import handler_sections
from tests.antring_env import ACCOUNT, BOB, AntRingWorld, antring_section, antring_world
from tests.helpers import (
    ADMIN,
    ADMIN_KEY,
    TICK,
    WAIT,
    AppServer,
    HubProcess,
    ServerThread,
    SSEReader,
    free_port,
    raw_config,
    wait_until,
    write_config,
)
from tests.vbee_env import sim_state as vbee_sim_state
from tests.vbee_env import vbee_section

RULE: dict[str, Any] = {
    "name": "missed-inbound-callback",
    "on": ["call.ended"],
    "when": {"data.direction": "inbound", "data.outcome": ["no_answer", "cancelled"], "data.leg_id": {"exists": True},
             "data.agent": "bob"},
    "cooldown": {"key": "{data.from.number}", "for": "10m"},
    "actions": [
        {"type": "antcrm.create_ticket", "title": "Missed call from {data.from.number}", "SLA": "SLA-4H",
         "contact": {"name": "Caller {data.from.number}", "phones": [{"type": "Work", "value": "{data.from.number}"}]}},
        {"type": "antring.click_to_call", "agent": "alice", "number": "{data.from.number}"},
    ],
}


@pytest.fixture
def crm() -> Iterator[tuple[SimState, AppServer]]:
    state = SimState()
    with AppServer(build_app(state)) as server:
        yield state, server


@pytest.fixture
def world(data_dir: Path, crm: tuple[SimState, AppServer]) -> Iterator[AntRingWorld]:
    extra = {"antcrm": {"base_url": crm[1].url, "api_key": DEFAULT_API_KEY}, "rules": [RULE]}
    with antring_world(data_dir, "blackhole", extra_config=extra) as w:
        w.wait_connected()
        yield w


def test_missed_call_opens_one_ticket_rings_once_and_reports_both_live(
    world: AntRingWorld, crm: tuple[SimState, AppServer]
) -> None:
    """A missed inbound call: one ticket in the CRM, one click-to-call, two action.succeeded events on SSE."""
    crm_state, _ = crm
    call = inbound_missed(BOB, "0903555777", account_id=ACCOUNT)
    with httpx.Client(timeout=WAIT) as client, client.stream(
        "GET", f"{world.hub.url}/v1/stream?token={ADMIN_KEY}&types=action.*"
    ) as stream:
        world.hub.wait_subscribers(1)
        clicks_before = len(world.state.clicks)
        world.play(call)
        reports = SSEReader(stream).take(2)
    by_action = {r.json["data"]["action"]: r.json for r in reports}
    assert {r.event for r in reports} == {"action.succeeded"}
    ticket = by_action["antcrm.create_ticket"]["data"]
    assert ticket["rule"] == "missed-inbound-callback" and ticket["result"]["TicketId"]
    ring = by_action["antring.click_to_call"]["data"]
    assert ring["result"]["number"] == "0903555777" and ring["event_source"] == "antring"
    assert len(crm_state.tickets) == 1 and crm_state.tickets[0]["title"] == "Missed call from 0903555777"
    assert len(world.state.clicks) == clicks_before + 1
    rules = httpx.get(f"{world.hub.url}/v1/rules", headers=ADMIN, timeout=WAIT).json()["rules"]
    assert rules[0]["matched"] == 1 and rules[0]["actions_ok"] == 2


def test_failed_action_is_reported_and_the_others_still_run(world: AntRingWorld, crm: tuple[SimState, AppServer]) -> None:
    """With AntCRM refusing every request, the ticket action is action.failed; the ring still succeeds."""
    crm_state, _ = crm
    crm_state.api_keys.clear()  # every apikey is now wrong
    world.play(inbound_missed(BOB, "0903555888", account_id=ACCOUNT))

    def outcomes() -> dict[str, str]:
        return {e["data"]["action"]: e["type"] for e in world.history("action.*")}

    wait_until(lambda: len(outcomes()) == 2, what="both outcomes")
    assert outcomes() == {"antcrm.create_ticket": "action.failed", "antring.click_to_call": "action.succeeded"}
    failed = [e for e in world.history("action.failed")][0]["data"]
    assert failed["status"] == "failed" and failed["error"]




def test_kill_9_mid_action_gives_one_ticket_and_at_most_one_ring(tmp_path: Path, crm: tuple[SimState, AppServer]) -> None:
    """Hub killed while both actions are in flight: after restart, still exactly one ticket, and the ring
    is reported `unknown`, not repeated."""
    crm_state, crm_server = crm
    ring_state = RingState(devices={"hub-device": Device("hub-pass"),
                                    "alice-101": Device("alice-pass", username="alice"),
                                    "bob-102": Device("bob-pass", username="bob")})
    signals = SignalServer("blackhole", token_valid=ring_state.is_token_valid, account_id=ACCOUNT)
    with AppServer(build_ring_app(ring_state)) as ring_api, AppServer(signals.app) as signal_server:
        port = free_port()
        raw = raw_config(tmp_path / "data", server={"port": port})
        raw["antring"] = antring_section(ring_state, ring_api, signal_server, "blackhole")
        raw["antcrm"] = {"base_url": crm_server.url, "api_key": DEFAULT_API_KEY}
        raw["rules"] = [RULE]
        config = write_config(tmp_path / "hub.toml", raw)
        hub = HubProcess(["--config", str(config)], port, tmp_path / "hub.log").wait_healthy()
        try:
            wait_until(lambda: bool(signals.subscriptions), what="hub subscribed")
            crm_state.delay = ring_state.delay = 60 * TICK  # both vendors slow: the actions are in flight
            for signal in inbound_missed(BOB, "0903999111", account_id=ACCOUNT).signals:
                signals.emit_threadsafe(signal.name, signal.payload)
            wait_until(lambda: any(r["path"] == "/tickets" for r in crm_state.requests)
                       and any("click-to-call" in r["path"] for r in ring_state.requests), what="both in flight")
            hub.kill9()
            crm_state.delay = ring_state.delay = 0
            again = HubProcess(["--config", str(config)], port, tmp_path / "hub2.log").wait_healthy()
            try:
                def outcomes() -> dict[str, dict[str, Any]]:
                    return {e["data"]["action"]: e for e in again.history() if e["type"].startswith("action.")}

                wait_until(lambda: len(outcomes()) == 2, what="outcomes after restart")
                result = outcomes()
            finally:
                again.stop()
        finally:
            hub.stop()
    assert result["antcrm.create_ticket"]["type"] == "action.succeeded" and result["antcrm.create_ticket"]["data"]["resumed"]
    assert result["antring.click_to_call"]["type"] == "action.failed"
    assert result["antring.click_to_call"]["data"]["status"] == "unknown"
    assert len(ring_state.clicks) <= 1  # the first hub's request may or may not have rung: at most once
    assert len(crm_state.tickets) == 1, "the retried ticket was deduplicated by ticketIdApiRing"
    assert len([r for r in ring_state.requests if "click-to-call" in r["path"]]) == 1, "never rung twice"


def test_vbee_add_contacts_action_pushes_the_caller_into_a_campaign(tmp_path: Path) -> None:
    """A rule's `vbee.add_contacts` adds the caller (E.164) with templated tags; the outcome is an event."""
    state = vbee_sim_state()
    with AppServer(build_vbee_app(state)) as api:
        raw = raw_config(tmp_path / "data")
        raw["vbee"] = vbee_section(api.url)
        raw["rules"] = [{
            "name": "callback-campaign", "on": ["call.ended"], "when": {"data.outcome": "no_answer"},
            "actions": [{"type": "vbee.add_contacts", "campaign_id": "camp-callback",
                         "phone_number": "{data.from.number}", "ho_ten": "Khách {data.from.number}"}],
        }]
        config = config_from_dict(raw, env={}, handler_sections=handler_sections())
        with ServerThread(config) as hub:
            hub.publish({"type": "call.ended", "id": "v-1", "source": "pbx",
                         "data": {"outcome": "no_answer", "from": {"number": "0912345678"}}})

            def outcome() -> list[dict[str, Any]]:
                r = httpx.get(f"{hub.url}/v1/events?types=action.*", headers=ADMIN, timeout=WAIT)
                events: list[dict[str, Any]] = r.json()["events"]
                return events

            wait_until(lambda: bool(outcome()), what="the action's outcome")
            (report,) = outcome()
    assert report["type"] == "action.succeeded", report
    assert report["data"]["result"]["contacts"][0]["contact_id"]
    (added,) = [c for c in state.contacts if c["campaign_id"] == "camp-callback"]
    assert added["phone_number"] == "+84912345678" and added["tags"]["ho_ten"] == "Khách 0912345678"


def test_click_to_call_to_an_offline_device_is_action_failed_with_the_vendors_reason(
    world: AntRingWorld, crm: tuple[SimState, AppServer]
) -> None:
    world.state.devices["alice-101"].online = False
    world.play(inbound_missed(BOB, "0903555999", account_id=ACCOUNT))
    wait_until(lambda: len(world.history("action.*")) == 2, what="both outcomes")
    (ring,) = [e for e in world.history("action.*") if e["data"]["action"] == "antring.click_to_call"]
    assert ring["type"] == "action.failed"
    assert ring["data"]["result"]["code"] == "device_offline" and "offline" in ring["data"]["error"].lower()
    assert world.state.clicks == []


def crm_hub(data_dir: Path, crm_url: str, actions: list[dict[str, Any]], **antcrm: Any) -> ServerThread:
    raw = raw_config(data_dir)
    raw["antcrm"] = {"base_url": crm_url, "api_key": DEFAULT_API_KEY, "screen_pop_types": [], **antcrm}
    raw["rules"] = [{"name": "crm", "on": ["call.ended"], "when": {"data.outcome": "no_answer"}, "actions": actions}]
    return ServerThread(config_from_dict(raw, env={}, handler_sections=handler_sections()))


def action_reports(hub: ServerThread) -> list[dict[str, Any]]:
    r = httpx.get(f"{hub.url}/v1/events?types=action.*", headers=ADMIN, timeout=WAIT)
    events: list[dict[str, Any]] = r.json()["events"]
    return events


MISSED_CALL = {"type": "call.ended", "id": "m-1", "source": "pbx",
               "data": {"outcome": "no_answer", "from": {"number": "0912000111"}}}
UPSERT = {"type": "antcrm.upsert_contact", "phone": "{data.from.number}", "name": "Caller {data.from.number}"}


def test_upsert_contact_creates_one_lead_for_an_unknown_caller(tmp_path: Path, crm: tuple[SimState, AppServer]) -> None:
    crm_state, crm_server = crm
    with crm_hub(tmp_path / "data", crm_server.url, [UPSERT]) as hub:
        hub.publish(MISSED_CALL, {**MISSED_CALL, "id": "m-2"})  # the same caller twice
        wait_until(lambda: len(action_reports(hub)) == 2, what="both outcomes")
        reports = action_reports(hub)
    assert {r["type"] for r in reports} == {"action.succeeded"}
    assert len(crm_state.contacts) == 1, "deduplicated by customerIdApiRing, derived from the number"
    assert crm_state.contacts[0]["name"] == "Caller 0912000111"


def test_upsert_contact_failure_is_action_failed(tmp_path: Path, crm: tuple[SimState, AppServer]) -> None:
    crm_state, crm_server = crm
    crm_state.fail_next, crm_state.fail_status = 1000, 500
    with crm_hub(tmp_path / "data", crm_server.url, [UPSERT], retry_for=4 * TICK) as hub:
        hub.publish(MISSED_CALL)
        wait_until(lambda: bool(action_reports(hub)), what="the outcome")
        (report,) = action_reports(hub)
    assert report["type"] == "action.failed" and report["data"]["error"]
    assert crm_state.contacts == []


def test_ticket_retried_after_a_lost_answer_is_still_one_ticket(tmp_path: Path, crm: tuple[SimState, AppServer]) -> None:
    """AntCRM creates the ticket but answers 500: the retry carries the same ticketIdApiRing, one ticket."""
    crm_state, crm_server = crm
    crm_state.fail_after_create = 1
    ticket = {"type": "antcrm.create_ticket", "title": "Missed call from {data.from.number}", "SLA": "SLA-4H",
              "contact": {"name": "Caller", "phones": [{"type": "Work", "value": "{data.from.number}"}]}}
    with crm_hub(tmp_path / "data", crm_server.url, [ticket]) as hub:
        hub.publish(MISSED_CALL)
        wait_until(lambda: bool(action_reports(hub)), what="the outcome")
        (report,) = action_reports(hub)
    assert report["type"] == "action.succeeded", report
    assert len(crm_state.tickets) == 1 and crm_state.deduplicated == 1
    assert report["data"]["result"]["TicketId"]


def test_vbee_add_contacts_refused_by_vbee_is_action_failed(tmp_path: Path) -> None:
    state = vbee_sim_state(campaigns_known={"camp-other"})  # camp-callback does not exist: Vbee answers 1402
    with AppServer(build_vbee_app(state)) as api:
        raw = raw_config(tmp_path / "data")
        raw["vbee"] = vbee_section(api.url)
        raw["rules"] = [{"name": "callback-campaign", "on": ["call.ended"], "actions": [
            {"type": "vbee.add_contacts", "campaign_id": "camp-callback", "phone_number": "{data.from.number}"}]}]
        with ServerThread(config_from_dict(raw, env={}, handler_sections=handler_sections())) as hub:
            hub.publish(MISSED_CALL)
            wait_until(lambda: bool(action_reports(hub)), what="the outcome")
            (report,) = action_reports(hub)
    assert report["type"] == "action.failed"
    assert report["data"]["result"]["vendor_code"] == 1402 and "import" in report["data"]["error"]
    assert state.contacts == []


def test_a_template_field_missing_from_the_event_fails_only_that_action(
    tmp_path: Path, crm: tuple[SimState, AppServer]
) -> None:
    crm_state, crm_server = crm
    needs_agent = {"type": "antcrm.upsert_contact", "phone": "{data.from.number}", "name": "{data.agent}"}
    with crm_hub(tmp_path / "data", crm_server.url, [needs_agent, UPSERT]) as hub:
        hub.publish(MISSED_CALL)  # has no data.agent
        wait_until(lambda: len(action_reports(hub)) == 2, what="both outcomes")
        reports = {r["type"]: r["data"] for r in action_reports(hub)}
    assert "data.agent" in reports["action.failed"]["error"]
    assert reports["action.succeeded"]["action"] == "antcrm.upsert_contact"
    assert len(crm_state.contacts) == 1
