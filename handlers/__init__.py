"""Vendor adapters. `register` is the one entry point the hub calls; they use the hub only through `hub.plugin`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from handlers import antbot, antcrm, antring, demo, vbee
from hub.plugin import Registry

#: Top-level config sections owned by handlers, with the models that validate them.
SECTIONS: dict[str, type[BaseModel]] = {
    "demo": demo.DemoConfig,
    "antring": antring.AntRingConfig,
    "vbee": vbee.VbeeConfig,
    "antcrm": antcrm.AntCRMConfig,
    "antbot": antbot.AntBotConfig,
}


def demo_overrides(port: int) -> dict[str, Any]:
    return demo.demo_overrides(port)


def register(registry: Registry) -> None:
    demo.register(registry)
    antring.register(registry)
    vbee.register(registry)
    antcrm.register(registry)
    antbot.register(registry)
