"""`callhub serve --demo`: a scripted stream of realistic calls, so a newcomer sees events flow.

Until the vendor simulators (AntRing, Vbee, AntCRM) land, the demo publishes the call events
the hub will produce from them, through the same path every publisher uses.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import uuid

from pydantic import BaseModel, ConfigDict

from hub.core import Hub
from hub.plugins import Registry

#: Seconds between the starts of two demo calls.
CALL_INTERVAL = 4.0
AGENTS = ("alice", "bob", "chi")
CUSTOMERS = ("0912345678", "0987654321", "0903123456", "0356789012", "0868111222")


class DemoConfig(BaseModel):
    """`[demo]`: what `callhub serve --demo` turns on."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    enabled: bool = False


def register(registry: Registry) -> None:
    demo = registry.section("demo", DemoConfig)
    if demo is not None and demo.enabled:
        registry.add_service("demo-calls", run_demo)


async def _call(hub: Hub, n: int, rng: random.Random) -> None:
    agent = AGENTS[n % len(AGENTS)]
    inbound = rng.random() < 0.7
    customer = rng.choice(CUSTOMERS)
    call_id = uuid.uuid4().hex[:20]
    ext = {"alice": "101", "bob": "102", "chi": "103"}[agent]
    base = {
        "call_id": call_id,
        "agent": agent,
        "direction": "inbound" if inbound else "outbound",
        "from": {"number": customer if inbound else ext},
        "to": {"number": ext if inbound else customer},
    }

    async def emit(type_: str, **extra: object) -> None:
        await hub.publish(
            {"type": type_, "source": "demo", "id": f"{call_id}:{type_}", "subject": call_id, "data": {**base, **extra}},
            default_source="demo",
        )

    await emit("call.ringing")
    await asyncio.sleep(rng.uniform(1.0, 3.0))
    if rng.random() < 0.25:
        await emit("call.ended", outcome="no_answer", duration_s=0)
        return
    await emit("call.answered")
    talk = rng.uniform(3.0, 12.0)
    await asyncio.sleep(talk)
    await emit("call.ended", outcome="answered", duration_s=round(talk))


async def run_demo(hub: Hub) -> None:
    rng = random.Random()
    calls: set[asyncio.Task[None]] = set()
    try:
        for n in itertools.count():
            task = asyncio.get_running_loop().create_task(_call(hub, n, rng))
            calls.add(task)
            task.add_done_callback(calls.discard)
            await asyncio.sleep(CALL_INTERVAL)
    finally:
        for task in calls:
            task.cancel()
