"""The plugin API: everything a vendor adapter (`handlers/`) may use of the hub, and nothing more.

A handler package exposes `register(registry)`, `SECTIONS` (its config sections and their
models) and `demo_overrides(port)`. The hub calls `register` once, while it is being built, and
the handler adds what it brings through the `Registry`:

    registry.section("antring", AntRingConfig)   its config section, validated (None if absent)
    registry.add_route(route, post=operation(...)) HTTP routes (Starlette `Route`), each with its OpenAPI
                                                  operations (or `described(route, ...)`); `hidden=True`
                                                  for one outside the API (the demo's simulators)
    registry.add_check(name, check)               `callhub check --online`: does the vendor answer?
    registry.add_service(name, service, lease=…)  background tasks, started after the store, cancelled on stop;
                                                  with processes sharing a store (Redis), each lease's services
                                                  run in one process at a time (default lease: the name)
    registry.add_cleanup(aclose)                  run when the hub stops (close HTTP clients here)
    registry.add_action(ActionSpec(...))          action types rules (and routes) may run
    registry.add_source(Source(...))              a built-in webhook source
    registry.claim_source("antring")              an event source only it publishes under
    registry.add_listener(types, listener)        called for committed events of those types
    registry.provide(name, thing) / .provided     what one handler builds for another

and uses what the hub offers through `registry.context` (a `PluginContext`): publish events,
spawn tasks, authenticate a request, look up stored events by indexed field, report on an
upstream connection, run an action the way rules do. Handlers import nothing else from `hub`:
an import-linter contract keeps it so. This module also re-exports the hub's types and helpers a
handler needs (errors, phone numbers, HTTP helpers, the retry policy, vendor client base).
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Collection, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel
from starlette.requests import HTTPConnection
from starlette.routing import BaseRoute

from hub.apidoc import ANY_ROLE, Operation, described, json_body, ok, operation, query, ref
from hub.apidoc import hidden as hide_route
from hub.auth import Principal
from hub.config import HttpUrl, SectionT, SocketUrl, TimeZoneName, validate_section
from hub.events import EVENT_LIMITS, Event, Publish, Published, event_time, hub_event, now_rfc3339
from hub.exceptions import (
    BadRequest,
    Forbidden,
    HubError,
    InvalidEvent,
    NotFound,
    TooManyRequests,
    Unauthorized,
    Unavailable,
)
from hub.matcher import TypeFilter, lookup
from hub.ops.upstreams import Upstream
from hub.outbound.retry import (
    NO_RETRY,
    RetryPolicy,
    maybe_sent,
    retry_until,
    send_unsent_retry,
    send_with_retry,
    stable_key,
)
from hub.outbound.vendor import (
    MAX_VENDOR_MESSAGE,
    VendorCalls,
    VendorClient,
    VendorError,
    json_or_none,
    vendor_text,
)
from hub.phone import (
    EXTENSION_MIN_DIGITS,
    InvalidPhoneNumber,
    Phone,
    PhoneForm,
    call_party,
    normal_number,
    number_key,
    parse_extension,
    parse_phone,
)
from hub.requests import JSONResponse, parse_json, read_body, require_json
from hub.rules.actions import ActionContext, ActionSpec, Executor, Outcome, public_params
from hub.rules.reactions import EventListener
from hub.store.base import IndexedField
from hub.tasks import Spawn
from hub.units import parse_duration, whole_seconds
from hub.webhooks.inbound import Delivery, Source, token_verifier

__all__ = [
    # the registry and what it offers
    "Registry", "PluginContext", "Service", "EventListener", "Authenticate", "RunAction", "EventStore",
    "PluginState",
    "load_plugins", "handler_sections", "demo_overrides", "OnlineCheck",
    # describing routes (OpenAPI)
    "Operation", "described", "operation", "ok", "json_body", "query", "ref", "ANY_ROLE",
    # types and helpers handlers use
    "ActionContext", "ActionSpec", "Executor", "Outcome", "public_params",
    "Source", "Delivery", "token_verifier",
    "Principal", "Publish", "Published", "Spawn", "Upstream", "Event", "IndexedField",
    "HubError", "BadRequest", "Unauthorized", "Forbidden", "NotFound", "InvalidEvent", "TooManyRequests",
    "Unavailable",
    "Phone", "PhoneForm", "InvalidPhoneNumber", "parse_phone", "normal_number", "number_key", "parse_extension",
    "call_party", "EXTENSION_MIN_DIGITS",
    "JSONResponse", "read_body", "parse_json", "require_json",
    "RetryPolicy", "NO_RETRY", "retry_until", "send_with_retry", "send_unsent_retry", "maybe_sent", "stable_key",
    "VendorCalls",
    "VendorClient", "VendorError", "json_or_none", "vendor_text", "MAX_VENDOR_MESSAGE",
    "HttpUrl", "SocketUrl", "parse_duration", "whole_seconds", "TimeZoneName", "EVENT_LIMITS", "event_time", "hub_event", "now_rfc3339",
    "lookup", "TypeFilter",
]

#: A background service: started with the hub (after the store is open), cancelled on stop.
Service = Callable[[], Coroutine[Any, Any, None]]
#: `callhub check --online`: ask the vendor something with the configured credentials; what it found.
OnlineCheck = Callable[[], Coroutine[Any, Any, str]]


class Authenticate(Protocol):
    """Who a request is (raises `Unauthorized`); `allow_query` takes `?token=` too (browsers' links)."""

    def __call__(self, conn: HTTPConnection, *, allow_query: bool = False) -> Principal: ...


class RunAction(Protocol):
    """Run an action now for a route, journaled and reported like a rule's (`ActionRunner.run`)."""

    async def __call__(self, type_: str, params: dict[str, Any], *, requested_by: str,
                       agent: str | None = None) -> Outcome: ...


class EventStore(Protocol):
    """What handlers may ask the store: look-ups by indexed field, and what was stored in a window."""

    async def find(self, field: IndexedField, value: str, *, agent: str | None, source: str | None,
                   limit: int) -> list[Event]: ...

    async def stored_between(self, *, since: float, until: float, types: Collection[str], source: str | None,
                             after: int, limit: int) -> list[Event]: ...


class PluginState(Protocol):
    """A handler's small durable key/value state (JSON values), in the hub's store (`Journal.state_*`).

    Each handler keeps to its own `namespace` (its name). Writes apply in the order they were made.
    """

    async def state_get(self, namespace: str, key: str) -> Any: ...

    def state_put(self, namespace: str, key: str, value: Any) -> Awaitable[None]: ...


@dataclass(frozen=True)
class PluginContext:
    """What the hub offers a handler. Valid from `register` on; usable once the hub has started."""

    publish: Publish
    spawn: Spawn
    authenticate: Authenticate
    store: EventStore
    run_action: RunAction
    #: Report on an upstream connection the handler owns (`/readyz`, metrics, `hub.upstream.*`).
    upstream: Callable[..., Upstream]
    #: Durable key/value state (usable once the hub has started: services run after the store opens).
    state: PluginState
    #: Where vendor clients report their calls and token refreshes: `client.report_to(context.vendor_calls)`.
    vendor_calls: VendorCalls


@dataclass
class Registry:
    """What the handlers bring, collected while the hub is built (see the module docstring)."""

    sections: Mapping[str, Any]
    context: PluginContext
    add_action: Callable[[ActionSpec], None]
    routes: list[BaseRoute] = field(default_factory=list)
    services: list[tuple[str, Service]] = field(default_factory=list)
    cleanups: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    sources: list[Source] = field(default_factory=list)
    #: Event sources the handlers publish under (`claim_source`).
    claimed_sources: list[str] = field(default_factory=list)
    #: (type patterns, callback) run for every committed event of those types, after the fan-out.
    listeners: list[tuple[tuple[str, ...], EventListener]] = field(default_factory=list)
    #: What one handler builds for others to use (a client, a lookup), by name.
    provided: dict[str, object] = field(default_factory=dict)
    #: (name, check) for `callhub check --online`.
    checks: list[tuple[str, OnlineCheck]] = field(default_factory=list)

    def section(self, name: str, model: type[SectionT]) -> SectionT | None:
        """The vendor section `[name]` as its model, or None when the file has none."""
        value = self.sections.get(name)
        return None if value is None else validate_section(name, value, model)

    def add_route(self, route: BaseRoute, *, hidden: bool = False, **operations: Operation) -> None:
        """Serve `route`; `operations` (by method: `post=operation(...)`) describe it in `/openapi.json`
        unless it already carries them (`described`). A route left undescribed fails the API tests."""
        if hidden:
            route = hide_route(route)
        elif operations:
            route = described(route, **operations)
        self.routes.append(route)

    def add_check(self, name: str, check: OnlineCheck) -> None:
        """A check `callhub check --online` runs: `check()` returns what it found (e.g. "token ok") or
        raises `HubError` saying why the vendor does not answer with the configured credentials."""
        self.checks.append((name, check))

    def add_service(self, name: str, service: Service, *, lease: str | None = None) -> None:
        """Run `service` in the background while the hub runs. Among several processes sharing one
        store (Redis), services under one `lease` (default: their own name) run together, in the
        one process that holds it; another takes over within `[server] lease_ttl` if it dies."""
        self.services.append((lease or name, service))

    def add_listener(self, types: tuple[str, ...], listener: EventListener) -> None:
        """Call `listener(event)` for every committed event whose type matches `types` (e.g. screen-pop)
        and whose source is the hub's own, a webhook source's or a vendor's (never a client's).

        It runs after the fan-out, must not block: start a task (`context.spawn`) for slow work.
        """
        self.listeners.append((types, listener))

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
    """Config sections the vendor handlers own, with their models (validated with the config)."""
    sections: dict[str, type[BaseModel]] = importlib.import_module(module).SECTIONS
    return dict(sections)


def demo_overrides(port: int, module: str = "handlers") -> dict[str, Any]:
    """Config overrides for `serve --demo` (simulated upstreams on the hub's own port)."""
    overrides: dict[str, Any] = importlib.import_module(module).demo_overrides(port)
    return overrides


def load_plugins(registry: Registry, module: str = "handlers") -> None:
    """Let the handlers register (the hub never imports them by name: they are found by module name)."""
    importlib.import_module(module).register(registry)
