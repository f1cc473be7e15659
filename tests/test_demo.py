"""`callhub serve --demo`: a newcomer sees calls flowing from the simulated AntRing."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
from websockets.sync.client import connect

from handlers.demo import KNOWN_CUSTOMERS
from hub.config import config_from_dict
from hub.plugin import demo_overrides, handler_sections
from tests.helpers import ADMIN_KEY, WAIT, ServerThread, free_port, raw_config


def test_demo_streams_antring_calls_through_the_whole_pipeline(tmp_path: Path) -> None:
    """With --demo, the AntRing simulators are mounted, the hub connects to them, and call events flow."""
    port = free_port()
    raw = raw_config(tmp_path / "data")
    raw.update(demo_overrides(port))
    raw["demo"]["speed"] = 0.05
    config = config_from_dict(raw, env={}, handler_sections=handler_sections())
    with ServerThread(config, port=port) as server, \
            connect(f"{server.ws_url}/v1/ws?token={ADMIN_KEY}&after=0&types=call.*") as ws:
        first = orjson.loads(ws.recv(timeout=WAIT))
        while first["type"] != "call.ringing":  # skip calls already under way when the socket came up
            first = orjson.loads(ws.recv(timeout=WAIT))
        assert first["source"] == "antring" and first["data"]["agent"] in ("alice", "bob", "chi")
        call_id = first["data"]["call_id"]
        types = [first["type"]]
        while "call.ended" not in types:
            event = orjson.loads(ws.recv(timeout=WAIT))
            if event["data"]["call_id"] == call_id:
                types.append(event["type"])
        assert types[0] == "call.ringing" and types[-1] == "call.ended"


def test_demo_shows_screen_pops_rule_actions_and_vbee_campaign_results(tmp_path: Path) -> None:
    """The whole product in one stream: AntCRM screen-pops, missed calls firing the rules (ticket,
    call-back ring, Vbee campaign, AntBot reminder), and the Vbee and AntBot calls coming back as events."""
    port = free_port()
    raw = raw_config(tmp_path / "data")
    raw.update(demo_overrides(port))
    raw["demo"]["speed"] = 0.05
    config = config_from_dict(raw, env={}, handler_sections=handler_sections())
    seen: dict[str, dict[str, Any]] = {}

    def wanted(event: dict[str, Any]) -> str | None:
        data = event["data"]
        if event["type"] == "call.enriched" and data.get("customer"):
            return "screen-pop"
        if event["type"] in ("action.succeeded", "action.failed"):
            return f"{event['type']}:{data['action']}"
        if event["source"] == "vbee" and event["type"] == "call.ended":
            return "vbee-result"
        if event["source"] == "antbot" and event["type"] == "call.ended":
            return "antbot-result"
        return None

    needed = {"screen-pop", "action.succeeded:antcrm.create_ticket", "action.succeeded:vbee.add_contacts",
              "vbee-result", "action.succeeded:antbot.reminder_call", "antbot-result"}
    with ServerThread(config, port=port) as server, \
            connect(f"{server.ws_url}/v1/ws?token={ADMIN_KEY}&after=0") as ws:
        deadline = time.monotonic() + 6 * WAIT
        while not needed <= set(seen) and time.monotonic() < deadline:
            event = orjson.loads(ws.recv(timeout=WAIT))
            kind = wanted(event)
            if kind is not None:
                seen.setdefault(kind, event)
    assert needed <= set(seen), f"missing: {needed - set(seen)}"
    assert seen["screen-pop"]["data"]["customer"]["name"] in {c[1] for c in KNOWN_CUSTOMERS}
    ring = seen.get("action.succeeded:antring.click_to_call") or seen.get("action.failed:antring.click_to_call")
    assert ring is not None, "the call-back ring was tried"
