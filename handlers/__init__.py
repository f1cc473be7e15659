"""Vendor adapters. `register` is the one entry point the hub calls (see `hub.plugins`)."""

from __future__ import annotations

from handlers import demo
from hub.plugins import Registry

#: Top-level config sections owned by handlers.
SECTIONS = {"demo"}


def register(registry: Registry) -> None:
    demo.register(registry)
