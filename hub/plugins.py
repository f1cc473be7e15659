"""The one place where `hub/` meets `handlers/`: vendors plug in here.

`handlers.register(registry)` adds routes and background services; the hub knows nothing
of any vendor beyond what it registers.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.routing import BaseRoute

if TYPE_CHECKING:
    from hub.core import Hub

__all__ = ["Registry", "Service", "load_plugins"]

#: A background service: started with the hub (after the store is open), cancelled on stop.
Service = Callable[["Hub"], Awaitable[None]]


@dataclass
class Registry:
    hub: Hub
    routes: list[BaseRoute] = field(default_factory=list)
    services: list[tuple[str, Service]] = field(default_factory=list)

    @property
    def settings(self) -> dict[str, Any]:
        """The vendor sections of the config file (`[antring]`, `[vbee]`, …)."""
        return self.hub.config.handlers

    def add_route(self, route: BaseRoute) -> None:
        self.routes.append(route)

    def add_service(self, name: str, service: Service) -> None:
        self.services.append((name, service))


def handler_sections(module: str = "handlers") -> set[str]:
    """Config sections the vendor handlers own (so `callhub check` can flag unknown ones)."""
    sections: set[str] = importlib.import_module(module).SECTIONS
    return set(sections)


def load_plugins(hub: Hub, module: str = "handlers") -> Registry:
    registry = Registry(hub)
    importlib.import_module(module).register(registry)
    return registry
