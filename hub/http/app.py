"""The ASGI application: routes, error mapping and the lifespan that owns the hub's parts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from hub.config import Config, ConfigError
from hub.exceptions import HubError
from hub.http import api, console
from hub.http import rules as rules_api
from hub.http.streams import SSEEndpoint, WebSocketEndpoint
from hub.plugin import Registry, load_plugins
from hub.service import Hub
from hub.webhooks.inbound import PREFIX as WEBHOOKS_PREFIX
from hub.webhooks.inbound import Source, WebhookEndpoint, mapped_source

logger = logging.getLogger("callhub")

__all__ = ["create_app", "CallhubApp"]

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}


async def _hub_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HubError)
    return api.error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return api.JSONResponse(
        {"error": {"code": code, "message": str(exc.detail)}}, status_code=exc.status_code, headers=exc.headers
    )


async def _unexpected(request: Request, exc: Exception) -> Response:
    # A bug, not bad input: log it with its traceback, never show one to the client.
    logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return api.JSONResponse(
        {"error": {"code": "internal_error", "message": "internal error; the event (if any) was not acknowledged"}},
        status_code=500,
    )


class CallhubApp:
    """The outermost ASGI callable: streams go straight to their endpoints, the rest to Starlette.

    The stream endpoints get the server's own `send` (Starlette's middleware would wrap it),
    which the fan-out's direct writes need (`hub.sinks.transport_of`); skipping the router's
    and middleware's coroutine frames also keeps each idle connection small.
    """

    def __init__(self, hub: Hub, app: Starlette, webhooks: WebhookEndpoint) -> None:
        self.hub = hub
        self.app = app
        self.sse = SSEEndpoint(hub)
        self.ws = WebSocketEndpoint(hub)
        self.webhooks = webhooks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket" and scope["path"] == "/v1/ws":
            await self.ws(scope, receive, send)
        elif kind == "http" and scope["path"] == "/v1/stream":
            await self.sse(scope, receive, send)
        elif kind == "http" and scope["path"].startswith(WEBHOOKS_PREFIX):
            await self.webhooks(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def create_app(config: Config) -> CallhubApp:
    hub = Hub(config)
    registry = load_plugins(hub)
    hub.use_actions(registry.actions)
    hub.use_listeners(registry.listeners)
    sources = webhook_sources(config, registry)
    hub.reserve_sources([*sources, *registry.claimed_sources])

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await hub.start()
        _watch_sighup(hub)
        for name, service in registry.services:
            hub.spawn(service(hub), name=name)
        try:
            yield
        finally:
            await hub.stop()
            for cleanup in registry.cleanups:
                try:
                    await cleanup()
                except Exception:
                    logger.exception("cleanup failed")

    routes = [
        Route("/v1/events", api.events, methods=["GET", "POST"]),
        Route("/v1/subscribers", api.list_subscribers, methods=["GET"]),
        Route("/v1/whoami", api.whoami, methods=["GET"]),
        Route("/healthz", api.healthz, methods=["GET"]),
        Route("/readyz", api.readyz, methods=["GET"]),
        Route("/metrics", api.metrics, methods=["GET"]),
        *rules_api.routes(),
        *registry.routes,
        *(console.routes() if config.server.console else []),
    ]
    middleware = []
    if config.server.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=config.server.cors_origins,
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
                max_age=600,
            )
        )
    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={HubError: _hub_error, HTTPException: _http_error, Exception: _unexpected},
    )
    app.state.hub = hub
    return CallhubApp(hub, app, WebhookEndpoint(hub, sources))


def _watch_sighup(hub: Hub) -> None:
    """`kill -HUP` reloads the rules (main thread only; a hub run inside a test thread skips it)."""
    try:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, hub.load_rules)
    except (RuntimeError, ValueError, NotImplementedError):
        pass


def webhook_sources(config: Config, registry: Registry) -> dict[str, Source]:
    """Configured `[[sources]]` and the handlers' built-in ones; a name may be used once."""
    sources: dict[str, Source] = {}
    for source in [*(mapped_source(c) for c in config.sources), *registry.sources]:
        if source.name in sources:
            raise ConfigError([("sources", f"webhook source {source.name!r} is defined twice")])
        sources[source.name] = source
    return sources
