"""Screen-pop: who is calling, from AntCRM, while the phone still rings.

On each `call.ringing` (`[antcrm] screen_pop_types`), the caller's number (the callee's, for an
outbound call) is looked up through the cached `CustomerLookup`, and if AntCRM knows them
within `SCREEN_POP_DEADLINE`, a `call.enriched` event is published for the same `call_id`
with `data.customer`. Too late or unknown: nothing is published. It runs after the fan-out
has written `call.ringing`, in its own task, so AntCRM being slow or down never delays the
ring itself.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from handlers.antcrm.lookup import CustomerLookup
from hub.plugin import EventListener, HubError, Publish, Spawn, stable_key

logger = logging.getLogger("callhub.antcrm")

__all__ = ["screen_pop", "SCREEN_POP_DEADLINE"]

#: After this long the agent has seen the ring without CRM data; a late answer is dropped.
SCREEN_POP_DEADLINE = 0.5


def _party_number(data: dict[str, Any]) -> str | None:
    direction = data.get("direction")
    side = data.get("to") if direction == "outbound" else data.get("from")
    if direction == "internal" or not isinstance(side, dict):
        return None
    number = side.get("number")
    return number if isinstance(number, str) and number else None


def screen_pop(publish: Publish, spawn: Spawn, lookup: CustomerLookup, *,
               deadline: float = SCREEN_POP_DEADLINE) -> EventListener:
    async def enrich(event: dict[str, Any], data: dict[str, Any], number: str) -> None:
        try:
            customer = await asyncio.wait_for(lookup.lookup(number), deadline)
        except TimeoutError:
            return
        if customer is None:
            return
        enriched = {
            "type": "call.enriched",
            "source": "antcrm",
            "id": "enriched:" + stable_key(str(event.get("source")), str(event.get("id")), prefix="call"),
            "subject": data.get("call_id"),
            "data": {
                "call_id": data.get("call_id"),
                "leg_id": data.get("leg_id"),
                "agent": data.get("agent"),
                "number": number,
                "event_id": event.get("id"),
                "customer": customer,
            },
        }
        try:
            await publish(enriched, default_source="antcrm")
        except HubError as exc:
            logger.warning("screen-pop not published: %s", exc.message)

    def on_ringing(event: dict[str, Any]) -> None:
        data = event.get("data")
        if not isinstance(data, dict):
            return
        number = _party_number(data)
        if number is not None:
            spawn(enrich(event, data, number), name="screen-pop")

    return on_ringing
