"""The ASGI application around a built hub: routes, error mapping, and the lifespan that runs it.

`create_app(config)` builds the hub (`hub.service.build`) and wraps it; `app_for(hub)` wraps a hub
already built. The app starts the hub on startup and stops it on shutdown.
"""

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
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import Receive, Scope, Send

from hub.apidoc import described
from hub.config import Config
from hub.exceptions import HubError, UpgradeRequired
from hub.http import api, console, openapi
from hub.http import rules as rules_api
from hub.http import subscriptions as subscriptions_api
from hub.http.streams import STREAM, WEBSOCKET, SSEEndpoint, WebSocketEndpoint
from hub.http.webhooks import PREFIX as WEBHOOKS_PREFIX
from hub.http.webhooks import WEBHOOK, WebhookEndpoint
from hub.requests import JSONResponse, error_response, scope_request_id, with_request_id
from hub.service import Hub, build
from hub.tracing import request_id

logger = logging.getLogger("callhub")

__all__ = ["create_app", "app_for", "CallhubApp"]

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}


async def _hub_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HubError)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return JSONResponse(
        {"error": {"code": code, "message": str(exc.detail)}}, status_code=exc.status_code, headers=exc.headers
    )


async def _unexpected(request: Request, exc: Exception) -> Response:
    # A bug, not bad input: log it with its traceback, never show one to the client.
    logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(
        {"error": {"code": "internal_error", "message": "internal error; the event (if any) was not acknowledged"}},
        status_code=500,
    )


class CallhubApp:
    """The outermost ASGI callable: streams go straight to their endpoints, the rest to Starlette.

    The stream endpoints get the server's own `send` (Starlette's middleware would wrap it),
    which the fan-out's direct writes need (`hub.live.sinks.transport_of`); skipping the router's
    and middleware's coroutine frames also keeps each idle connection small.
    """

    def __init__(self, hub: Hub, app: Starlette, webhooks: WebhookEndpoint) -> None:
        self.hub = hub
        self.app = app
        self.sse = SSEEndpoint(hub)
        self.ws = WebSocketEndpoint(hub)
        self.webhooks = webhooks
        #: The endpoints dispatched here rather than by Starlette, as routes carrying their description.
        self.own_routes: list[BaseRoute] = [
            described(Route("/v1/stream", self.sse, methods=["GET"]), get=STREAM),
            described(WebSocketRoute("/v1/ws", self.ws), get=WEBSOCKET),
            described(Route(WEBHOOKS_PREFIX + "{source}", self.webhooks, methods=["POST"]), post=WEBHOOK),
        ]

    @property
    def routes(self) -> list[BaseRoute]:
        """Every endpoint the app serves: Starlette's routes and the ones dispatched here."""
        return [*self.own_routes, *self.app.routes]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self.app(scope, receive, send)
            return
        # Every log line of this request, and every vendor call made for it, carries this id.
        rid = scope_request_id(scope)
        if kind == "http" and scope["path"].startswith(WEBHOOKS_PREFIX):
            # The ingest path: the id goes back on the answer; nothing here logs per request or calls a vendor.
            await self.webhooks(scope, receive, send, rid)
            return
        token = request_id.set(rid)
        try:
            if kind == "websocket":
                await (self.ws if scope["path"] == "/v1/ws" else self.app)(scope, receive, send)
            elif scope["path"] == "/v1/stream":
                await self.sse(scope, receive, send)  # the server's own send: it tags its answer itself
            elif scope["path"] == "/v1/ws":
                # A plain HTTP request (no Upgrade) to the WebSocket endpoint: say what it needs.
                await error_response(UpgradeRequired("/v1/ws is a WebSocket: send the Upgrade handshake"))(
                    scope, receive, with_request_id(send, rid))
            else:
                await self.app(scope, receive, with_request_id(send, rid))
        finally:
            request_id.reset(token)


def create_app(config: Config) -> CallhubApp:
    """Build the hub from `config` (raises `ConfigError` on anything that cannot be built) and wrap it."""
    return app_for(build(config))


def app_for(hub: Hub) -> CallhubApp:
    config = hub.config

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await hub.start()
        _watch_sighup(hub)
        try:
            yield
        finally:
            await hub.stop()

    routes = [
        *openapi.routes(lambda: outer.routes),
        *api.routes(hub),
        *rules_api.routes(hub),
        *subscriptions_api.routes(hub),
        *hub.routes,
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
    webhooks = WebhookEndpoint(hub.sources, publish=hub.publisher.publish, metrics=hub.metrics,
                               max_body=config.server.max_body)
    outer = CallhubApp(hub, app, webhooks)
    return outer


def _watch_sighup(hub: Hub) -> None:
    """`kill -HUP` reloads the rules (main thread only; a hub run inside a test thread skips it)."""
    try:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, hub.rules.load)
    except (RuntimeError, ValueError, NotImplementedError):
        pass
