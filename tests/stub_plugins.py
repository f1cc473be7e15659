"""A handler package for tests about rules, not vendors: the vendors' action types, recorded, not sent.

Built with `hub.service.build(config, plugins="tests.stub_plugins")`, through the same plugin
surface the real handlers use.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from hub.plugin import ActionContext, ActionSpec, Registry

SECTIONS: dict[str, type[BaseModel]] = {}
#: The action types the stand-ins provide, with their required parameters.
STUB_ACTIONS: dict[str, tuple[str, ...]] = {
    "antcrm.create_ticket": ("title", "SLA", "contact"),
    "antring.click_to_call": ("agent", "number"),
}
#: What the stand-ins were asked to do: (type, params).
recorded: list[tuple[str, dict[str, Any]]] = []


def demo_overrides(port: int) -> dict[str, Any]:
    return {}


def register(registry: Registry) -> None:
    for type_, required in STUB_ACTIONS.items():

        async def record(params: dict[str, Any], context: ActionContext, type_: str = type_) -> dict[str, Any]:
            recorded.append((type_, params))
            return {"recorded": params}

        registry.add_action(ActionSpec(type_, record, idempotent=True, group="test", required=required))
