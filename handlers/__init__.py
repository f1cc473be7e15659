"""Vendor adapters. `register` is the one entry point the hub calls (see `hub.plugins`)."""

from __future__ import annotations

from hub.plugins import Registry

from handlers import demo


#: Top-level config sections owned by handlers.
SECTIONS = {"demo"}


def register(registry: Registry) -> None:
    demo.register(registry)
