"""`callhub serve --demo`: the whole product working on one machine, with simulated upstreams.

The demo mounts the vendors' simulators on the hub's own port under `/_sim/` and points the
vendor sections at them (see `demo_overrides`):

- AntRing (HTTP API and call-signal socket, Blackhole flavour): a scripted stream of realistic
  calls (inbound answered and missed, outbound busy, internal, transfers) for the agents alice,
  bob and chi. chi's phone is offline, so click-to-call failures show too.
- AntCRM: a few known customers, so ringing calls from them get a screen-pop (`call.enriched`);
  tickets and leads the rules create land here.
- Vbee AICall: the call-back campaign. Missed callers are pushed into it by a rule, and the
  simulated campaign calls them and reports the results to the hub's Vbee webhook.
- AntBot (Alice): a reminder call is set for every missed caller; the simulated dialer rings it
  (ahead of its time, so the demo shows it) and the hub's poller reads the call from AntBot's
  CDR report as `call.ended` (source `antbot`).

And rules: a missed inbound call opens an AntCRM ticket, rings the agent who missed it to call
back, puts the caller into the Vbee call-back campaign and sets an AntBot reminder call (once per
caller per minute).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict
from starlette.routing import Mount

from handlers.antbot.simulator import SimState as AntBotState
from handlers.antbot.simulator import build_app as build_antbot_app
from handlers.antcrm.simulator.app import SimState as CRMState
from handlers.antcrm.simulator.app import build_app as build_crm_app
from handlers.antring.simulator.calls import (
    GREGORIAN_OFFSET,
    Party,
    ScriptedCall,
    inbound_answered,
    inbound_missed,
    internal_call,
    outbound_busy,
    transferred,
)
from handlers.antring.simulator.http import Device, SimState, build_app
from handlers.antring.simulator.signals import SignalServer
from handlers.vbee.simulator.app import API_PREFIX as VBEE_API_PREFIX
from handlers.vbee.simulator.app import CampaignRunner, RunnerConfig
from handlers.vbee.simulator.app import SimState as VbeeState
from handlers.vbee.simulator.app import build_app as build_vbee_app
from hub.plugin import Registry

logger = logging.getLogger("callhub.demo")

__all__ = ["DemoConfig", "register", "demo_overrides"]

#: Seconds between the starts of two demo calls (calls overlap).
CALL_INTERVAL = 4.0
#: How long the demo waits for the hub's consumer to subscribe before it starts calling anyway.
SUBSCRIBE_WAIT = 10.0
ACCOUNT = "demo-account"
APP_ID = "demo-app"
APP_SECRET = "demo-secret-not-for-production"
API_MOUNT = "/_sim/antring"
SIGNALS_MOUNT = "/_sim/antring-signals"
CRM_MOUNT = "/_sim/antcrm"
CRM_API_KEY = "demo-antcrm-apikey"
VBEE_MOUNT = "/_sim/vbee"
VBEE_API_KEY = "demo-vbee-app"
VBEE_API_SECRET = "demo-vbee-secret-not-for-production-0123"
VBEE_WEBHOOK_TOKEN = "demo-vbee-webhook-token"
CALLBACK_CAMPAIGN = "demo-callback"
ANTBOT_MOUNT = "/_sim/antbot"
ANTBOT_USER = "demo-antbot"
ANTBOT_PASSWORD = "demo-antbot-password-not-for-production"
#: How far ahead reminders are set, and how far ahead the simulated AntBot dialer rings them.
REMINDER_DELAY = 60.0
#: Seconds between two runs of the simulated Vbee call-back campaign.
CAMPAIGN_INTERVAL = 6.0
AGENTS = (Party("alice", "101", "u-alice"), Party("bob", "102", "u-bob"), Party("chi", "103", "u-chi"))
#: Caller ids as Vietnamese trunks send them: national, E.164 without its plus, and a pre-2018
#: 11-digit mobile number (the hub normalises them all, docs/EVENTS.md).
CUSTOMERS = ("0912345678", "84987654321", "0903123456", "02873019555", "0868111222", "01693608879")
#: The customers AntCRM knows (the others ring without a screen-pop): number as saved, name, type,
#: tags, stage, owner. One is saved in E.164, which the screen-pop finds by trying each form.
KNOWN_CUSTOMERS: tuple[tuple[str, str, str, tuple[str, ...], str, str], ...] = (
    ("0912345678", "Nguyễn Văn An", "customer", ("VIP",), "Khách hàng", "alice"),
    ("+84987654321", "Trần Thị Bình", "lead", ("Quan tâm",), "Tiềm năng", "bob"),
    ("02873019555", "Công ty Minh Phát", "customer", ("Doanh nghiệp",), "Hợp đồng", "chi"),
    ("0393608879", "Phạm Văn Dũng", "customer", ("Khách quen",), "Khách hàng", "alice"),
)
#: The demo's rules (docs/RULES.md): what a contact centre would write for its missed calls.
DEMO_RULES: list[dict[str, Any]] = [
    {
        "name": "missed-call-follow-up",
        "on": ["call.ended"],
        "when": {"data.direction": "inbound", "data.outcome": ["no_answer", "cancelled"]},
        "cooldown": {"key": "{data.from.number}", "for": "1m"},
        "actions": [
            {"type": "antcrm.create_ticket", "title": "Cuộc gọi nhỡ từ {data.from.number}", "SLA": "SLA-4H",
             "summary": "Missed by {data.agent}",
             "contact": {"name": "Khách {data.from.number}", "phones": [{"type": "Work", "value": "{data.from.number}"}]}},
            {"type": "antring.click_to_call", "agent": "{data.agent}", "number": "{data.from.number}"},
            {"type": "vbee.add_contacts", "campaign_id": CALLBACK_CAMPAIGN, "phone_number": "{data.from.number}",
             "ho_ten": "Khách {data.from.number}"},
            {"type": "antbot.reminder_call", "phone_number": "{data.from.number}", "delay": f"{int(REMINDER_DELAY)}s",
             "title": "Gọi nhắc lại {data.from.number}"},
        ],
    },
]


class DemoConfig(BaseModel):
    """`[demo]`: what `callhub serve --demo` turns on."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    enabled: bool = False
    #: Scales every delay of the scripted calls (0.1 = ten times faster).
    speed: float = 1.0
    #: Where the simulated vendors reach the hub (the Vbee campaign posts its results there).
    hub_url: str = "http://127.0.0.1:8080"


def demo_overrides(port: int) -> dict[str, Any]:
    """Config for `serve --demo`: the demo on, the vendor sections pointed at the mounted simulators, rules."""
    base = f"http://127.0.0.1:{port}"
    return {
        "demo": {"enabled": True, "hub_url": base},
        "rules": DEMO_RULES,
        "antcrm": {"base_url": base + CRM_MOUNT, "api_key": CRM_API_KEY, "lookup_timeout": 0.4},
        "vbee": {"base_url": base + VBEE_MOUNT + VBEE_API_PREFIX, "api_key": VBEE_API_KEY,
                 "api_secret": VBEE_API_SECRET, "webhook_token": VBEE_WEBHOOK_TOKEN},
        "antbot": {"base_url": base + ANTBOT_MOUNT, "username": ANTBOT_USER, "password": ANTBOT_PASSWORD,
                   "poll_interval": 2.0, "reminders": {"calendar": 1, "creator": 1}},
        "antring": {
            "base_url": base + API_MOUNT,
            "app_id": APP_ID,
            "app_secret": APP_SECRET,
            "account_id": ACCOUNT,
            "ws_url": f"ws://127.0.0.1:{port}{SIGNALS_MOUNT}/",
            "ws_protocol": "blackhole",
            "sip_user": "hub-device",
            "sip_password": "hub-pass",
            "reconnect_initial_delay": 0.2,
            "reconnect_max_delay": 2.0,
            "agents": {
                p.username: {"sip_user": f"{p.username}-{p.extension}", "sip_password": f"{p.username}-pass",
                             "extension": p.extension, "owner_id": p.owner_id}
                for p in AGENTS
            },
        },
    }


def register(registry: Registry) -> None:
    demo = registry.section("demo", DemoConfig)
    if demo is None or not demo.enabled:
        return
    devices = {"hub-device": Device("hub-pass")}
    for party in AGENTS:
        # chi's phone is offline, so click-to-call shows its failure too.
        devices[f"{party.username}-{party.extension}"] = Device(
            f"{party.username}-pass", online=party.username != "chi", username=party.username
        )
    state = SimState(app_id=APP_ID, app_secret=APP_SECRET, devices=devices)
    signals = SignalServer("blackhole", token_valid=state.is_token_valid, account_id=ACCOUNT)
    registry.add_route(Mount(API_MOUNT, app=build_app(state)), hidden=True)
    registry.add_route(Mount(SIGNALS_MOUNT, app=signals.app), hidden=True)

    crm = CRMState(api_keys={CRM_API_KEY})
    for number, name, contact_type, tags, stage, owner in KNOWN_CUSTOMERS:
        crm.add_contact(name, phones=[number], contact_type=contact_type, tags=list(tags), stage=stage,
                        responsibleStaff=owner)
    registry.add_route(Mount(CRM_MOUNT, app=build_crm_app(crm)), hidden=True)

    vbee = VbeeState(apps={VBEE_API_KEY: VBEE_API_SECRET}, campaigns_known={CALLBACK_CAMPAIGN})
    registry.add_route(Mount(VBEE_MOUNT, app=build_vbee_app(vbee)), hidden=True)
    runner = CampaignRunner(vbee, RunnerConfig(
        webhook_url=f"{demo.hub_url}/v1/webhooks/vbee?token={VBEE_WEBHOOK_TOKEN}"))

    async def play() -> None:
        await run_demo(state, signals, speed=demo.speed)

    async def call_back() -> None:
        while True:  # the campaign calls whoever the rules added since its last run
            await asyncio.sleep(CAMPAIGN_INTERVAL * demo.speed)
            try:
                await runner.run(CALLBACK_CAMPAIGN)
            except Exception as exc:  # the hub restarting under it, say: try again next round
                logger.warning("demo Vbee campaign run failed: %s", exc)

    antbot = AntBotState(users={ANTBOT_USER: ANTBOT_PASSWORD})
    registry.add_route(Mount(ANTBOT_MOUNT, app=build_antbot_app(antbot)), hidden=True)

    async def antbot_dialer() -> None:
        while True:  # AntBot rings the reminders the rules set; its CDR report then holds the calls
            await asyncio.sleep(CAMPAIGN_INTERVAL * demo.speed)
            antbot.dial_due(datetime.now(UTC), answer=random.random() < 0.7, ahead=REMINDER_DELAY)

    registry.add_service("demo-calls", play)
    registry.add_service("demo-vbee-campaign", call_back)
    registry.add_service("demo-antbot-dialer", antbot_dialer)


def _script(n: int, rng: random.Random) -> ScriptedCall:
    agent = AGENTS[n % len(AGENTS)]
    other = AGENTS[(n + 1) % len(AGENTS)]
    customer = rng.choice(CUSTOMERS)
    kind = rng.choices(["answered", "missed", "busy", "internal", "transfer"], weights=[5, 2, 1, 1, 1])[0]
    if kind == "answered":
        return inbound_answered(agent, customer, account_id=ACCOUNT, ring_s=rng.uniform(1, 4), talk_s=rng.uniform(4, 15))
    if kind == "missed":
        return inbound_missed(agent, customer, account_id=ACCOUNT, ring_s=rng.uniform(3, 8))
    if kind == "busy":
        return outbound_busy(agent, customer, account_id=ACCOUNT, ring_s=rng.uniform(1, 3))
    if kind == "internal":
        return internal_call(agent, other, account_id=ACCOUNT, talk_s=rng.uniform(2, 6))
    return transferred(agent, other, customer, account_id=ACCOUNT, talk_s=rng.uniform(3, 8))


async def _play(state: SimState, signals: SignalServer, call: ScriptedCall, speed: float) -> None:
    for signal in call.signals:
        if signal.delay:
            await asyncio.sleep(signal.delay * speed)
        # Stamp each signal when it is sent, as the switch would.
        await signals.emit(signal.name, {**signal.payload, "Timestamp": int(time.time()) + GREGORIAN_OFFSET})
    if call.record.get("recording"):
        state.recordings.add(call.record["recording"])
    state.add_history(call.record, call_id=call.call_id)


async def run_demo(state: SimState, signals: SignalServer, *, speed: float = 1.0) -> None:
    rng = random.Random()
    calls: set[asyncio.Task[None]] = set()
    # Start once the hub's consumer has subscribed, so the first call is seen from its first ring.
    for _ in range(int(SUBSCRIBE_WAIT / 0.1)):
        if signals.subscriptions:
            break
        await asyncio.sleep(0.1)
    try:
        for n in itertools.count():
            task = asyncio.get_running_loop().create_task(_play(state, signals, _script(n, rng), speed))
            calls.add(task)
            task.add_done_callback(calls.discard)
            await asyncio.sleep(CALL_INTERVAL * speed)
    finally:
        for task in calls:
            task.cancel()
