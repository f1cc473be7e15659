"""The one place where `hub/` meets `handlers/`: vendors plug in here.

`handlers.register(registry)` adds routes and background services; the hub knows nothing
of any vendor beyond what it registers.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from starlette.routing import BaseRoute

from hub.config import SectionT, validate_section

if TYPE_CHECKING:
    from hub.rules.actions import ActionSpec
    from hub.service import Hub
    from hub.webhooks.inbound import Source

__all__ = ["Registry", "Service", "load_plugins"]

#: Called with a committed event (its CloudEvent dict).
EventListener = Callable[[dict[str, Any]], None]
#: A background service: started with the hub (after the store is open), cancelled on stop.
Service = Callable[["Hub"], Awaitable[None]]


@dataclass
class Registry:
    hub: Hub
    routes: list[BaseRoute] = field(default_factory=list)
    services: list[tuple[str, Service]] = field(default_factory=list)
    cleanups: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    sources: list[Source] = field(default_factory=list)
    #: Event sources the handlers publish under (`claim_source`).
    claimed_sources: list[str] = field(default_factory=list)
    #: Rule action executors, by action type.
    actions: dict[str, ActionSpec] = field(default_factory=dict)
    #: (type patterns, callback) run for every committed event of those types, after the fan-out.
    listeners: list[tuple[tuple[str, ...], EventListener]] = field(default_factory=list)
    #: What one handler builds for others to use (a client, a lookup), by name.
    provided: dict[str, object] = field(default_factory=dict)

    def section(self, name: str, model: type[SectionT]) -> SectionT | None:
        """The vendor section `[name]` as its model, or None when the file has none."""
        value = self.hub.config.handlers.get(name)
        return None if value is None else validate_section(name, value, model)

    def add_route(self, route: BaseRoute) -> None:
        self.routes.append(route)

    def add_service(self, name: str, service: Service) -> None:
        self.services.append((name, service))

    def add_listener(self, types: tuple[str, ...], listener: EventListener) -> None:
        """Call `listener(event)` for every committed event whose type matches `types` (e.g. screen-pop)
        and whose source is the hub's own, a webhook source's or a vendor's (never a client's).

        It runs after the fan-out, must not block: start a task (`hub.spawn`) for slow work.
        """
        self.listeners.append((types, listener))

    def add_action(self, spec: ActionSpec) -> None:
        """An action type rules may use (`[[rules.actions]] type = spec.type`)."""
        self.actions[spec.type] = spec

    def provide(self, name: str, thing: object) -> None:
        """Offer something a handler built (e.g. AntCRM's client) to the handlers registered after it."""
        self.provided[name] = thing

    def add_source(self, source: Source) -> None:
        """A built-in webhook source (`POST /v1/webhooks/{source.name}`); clients may not publish under its name."""
        self.sources.append(source)

    def claim_source(self, name: str) -> None:
        """An event source the handler publishes under (its vendor's name): clients may not use it,
        so nobody can forge the vendor's events or pre-empt their ids."""
        self.claimed_sources.append(name)

    def add_cleanup(self, cleanup: Callable[[], Awaitable[None]]) -> None:
        """Run when the hub stops, after its services were cancelled (close HTTP clients here)."""
        self.cleanups.append(cleanup)


def handler_sections(module: str = "handlers") -> dict[str, type[BaseModel]]:
    """Config sections the vendor handlers own, with their models (validated by `callhub check`)."""
    sections: dict[str, type[BaseModel]] = importlib.import_module(module).SECTIONS
    return dict(sections)


def action_types(module: str = "handlers") -> dict[str, tuple[str, ...]]:
    """Action types rules may use, the core's and the vendors', with their required parameters."""
    from hub.webhooks.post import CORE_ACTIONS

    vendor: dict[str, tuple[str, ...]] = importlib.import_module(module).ACTION_TYPES
    return {**CORE_ACTIONS, **vendor}


def demo_overrides(port: int, module: str = "handlers") -> dict[str, Any]:
    """Config overrides for `serve --demo` (simulated upstreams on the hub's own port)."""
    overrides: dict[str, Any] = importlib.import_module(module).demo_overrides(port)
    return overrides


def load_plugins(hub: Hub, module: str = "handlers") -> Registry:
    registry = Registry(hub)
    importlib.import_module(module).register(registry)
    return registry
