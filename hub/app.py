"""The ASGI application: routes, error mapping and the lifespan that owns the hub's parts."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import Receive, Scope, Send

from hub import api
from hub.config import Config
from hub.core import Hub
from hub.exceptions import HubError
from hub.plugins import load_plugins
from hub.streams import RAW_SEND, SSEEndpoint, ws_endpoint

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
    """The outermost ASGI callable: keeps the server's raw `send` in the scope for the streams.

    Starlette's middleware wraps `send`; the fan-out's fast path needs the server's own
    (see `hub.sinks.transport_of`).
    """

    def __init__(self, hub: Hub, app: Starlette) -> None:
        self.hub = hub
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            scope[RAW_SEND] = send
        await self.app(scope, receive, send)


def create_app(config: Config) -> CallhubApp:
    hub = Hub(config)
    registry = load_plugins(hub)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await hub.start()
        for name, service in registry.services:
            hub.spawn(service(hub), name=name)
        try:
            yield
        finally:
            await hub.stop()

    routes = [
        Route("/v1/events", api.publish_event, methods=["POST"]),
        Route("/v1/events", api.list_events, methods=["GET"]),
        Route("/v1/stream", SSEEndpoint(hub), methods=["GET"]),
        WebSocketRoute("/v1/ws", ws_endpoint),
        Route("/v1/subscribers", api.list_subscribers, methods=["GET"]),
        Route("/healthz", api.healthz, methods=["GET"]),
        Route("/readyz", api.readyz, methods=["GET"]),
        Route("/metrics", api.metrics, methods=["GET"]),
        *registry.routes,
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HubError: _hub_error, HTTPException: _http_error, Exception: _unexpected},
    )
    app.state.hub = hub
    return CallhubApp(hub, app)
