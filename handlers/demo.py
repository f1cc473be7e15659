"""`callhub serve --demo`: the whole product working on one machine, with simulated upstreams.

The demo mounts the AntRing simulators (HTTP API and call-signal socket, Blackhole flavour) on
the hub's own port under `/_sim/`, points `[antring]` at them (see `demo_overrides`), and plays a
scripted stream of realistic calls: inbound answered and missed, outbound busy, internal, and
transfers, for the agents alice, bob and chi. Everything then flows as it would from AntBuddy:
socket signals, normalised call events, history for reconciliation, recordings, click-to-call.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from typing import Any

from pydantic import BaseModel, ConfigDict
from starlette.routing import Mount

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
from hub.core import Hub
from hub.plugins import Registry

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
AGENTS = (Party("alice", "101", "u-alice"), Party("bob", "102", "u-bob"), Party("chi", "103", "u-chi"))
CUSTOMERS = ("0912345678", "0987654321", "0903123456", "02873019555", "0868111222", "0356789012")


class DemoConfig(BaseModel):
    """`[demo]`: what `callhub serve --demo` turns on."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    enabled: bool = False
    #: Scales every delay of the scripted calls (0.1 = ten times faster).
    speed: float = 1.0


def demo_overrides(port: int) -> dict[str, Any]:
    """Config for `serve --demo`: the demo on, and `[antring]` pointed at the mounted simulators."""
    base = f"http://127.0.0.1:{port}"
    return {
        "demo": {"enabled": True},
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
    registry.add_route(Mount(API_MOUNT, app=build_app(state)))
    registry.add_route(Mount(SIGNALS_MOUNT, app=signals.app))

    async def play(hub: Hub) -> None:
        await run_demo(state, signals, speed=demo.speed)

    registry.add_service("demo-calls", play)


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
    state.history.append(call.record)


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
