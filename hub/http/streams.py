"""The live endpoints: `GET /v1/stream` (Server-Sent Events) and `GET /v1/ws` (WebSocket).

Both authenticate (header or `?token=`), take `types` and `after` (SSE also honours
`Last-Event-ID`), register a `Subscriber` with the fan-out and then only wait for the
connection to end: events reach the socket from the fan-out, not from this coroutine.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from starlette.requests import HTTPConnection
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from hub.apidoc import ANY_ROLE, ok, operation, query
from hub.auth import Principal
from hub.exceptions import BadRequest, HubError, MethodNotAllowed, Unavailable
from hub.live.fanout import Subscriber
from hub.live.sinks import heartbeat_event, make_sink
from hub.matcher import TypeFilter, parse_patterns
from hub.requests import MAX_SEQ, error_response, with_request_id
from hub.service import Hub
from hub.tracing import request_id

logger = logging.getLogger("callhub.streams")

__all__ = ["SSEEndpoint", "WebSocketEndpoint", "STREAM", "WEBSOCKET"]

_STREAM_PARAMETERS = [
    query("types", {"type": "string"}, "Comma-separated type patterns, e.g. `call.*,campaign.*`"),
    query("after", {"type": "integer", "minimum": 0, "maximum": MAX_SEQ},
          "Resume after this seq (SSE: `Last-Event-ID` wins); without it, live from now"),
]
STREAM = operation(
    "Stream events (Server-Sent Events)", tag="streams", roles=ANY_ROLE, jwt=True, query_token=True,
    description="One SSE record per event (`id:` the seq, `event:` the type, `data:` the CloudEvent), a "
                "keepalive every `streams.sse_heartbeat`. The response never completes while the subscriber "
                "is live: it ends on overflow, token expiry or shutdown; reconnect with Last-Event-ID.",
    parameters=[*_STREAM_PARAMETERS,
                query("heartbeat", {"enum": ["comment", "event"]}, "Keepalive as a comment (default) or an event"),
                {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string"},
                 "description": "The last seq received (a reconnecting EventSource sends it)"}],
    responses={200: ok({"type": "string"}, "The event stream", media_type="text/event-stream")},
    errors=[400, 405, 429, 503],
)
WEBSOCKET = operation(
    "Stream events (WebSocket)", tag="streams", roles=ANY_ROLE, jwt=True, query_token=True,
    description="A WebSocket handshake (GET with `Upgrade: websocket`). One text frame per event; the client "
                "sends `{\"op\": \"subscribe\", \"types\": [...], \"after\": N}` or `{\"op\": \"ping\"}`. "
                "Close codes: 1008 token expired or too many bad messages, 1012 restart, 1013 too slow, 1011 "
                "internal. A refused handshake answers with the status and the JSON error; a plain HTTP "
                "request (no upgrade) 426.",
    parameters=_STREAM_PARAMETERS,
    responses={101: ok(None, "Switching protocols: the WebSocket is open")},
    errors=[400, 426, 429, 503],
)


def _parse_after(value: Any, name: str) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise BadRequest(f"'{name}' must be a non-negative integer seq", code="invalid_parameter")
    try:
        after = int(value)
    except (TypeError, ValueError):
        raise BadRequest(f"'{name}' must be a non-negative integer seq", code="invalid_parameter") from None
    if after < 0 or after > MAX_SEQ:
        raise BadRequest(f"'{name}' must be a non-negative integer seq", code="invalid_parameter")
    return after


def _open(hub: Hub, conn: HTTPConnection) -> tuple[Principal, TypeFilter]:
    if hub.fanout.closing:
        raise Unavailable("the hub is shutting down; reconnect in a moment")
    principal = hub.authenticate(conn, allow_query=True)
    types = TypeFilter(parse_patterns(conn.query_params.get("types")), principal.types)
    return principal, types


def _clip(value: object, limit: int = 64) -> str:
    """A client's value as it may appear in an error message: short (never its whole input echoed)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def cors_headers(allowed: list[str], origin: str | None) -> list[tuple[bytes, bytes]]:
    """CORS headers for a cross-origin EventSource (the stream bypasses Starlette's middleware)."""
    if not origin or not allowed or ("*" not in allowed and origin not in allowed):
        return []
    return [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]


def _remote(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "?"


class SSEEndpoint:
    """`GET /v1/stream`, a plain ASGI app that owns the response from start to end.

    `hub.http.app` calls it with the server's own `send` (no middleware around it), which is what
    lets the fan-out write to the transport directly (`hub.live.sinks.transport_of`).
    """

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hub = self.hub
        conn = HTTPConnection(scope)
        try:
            if scope["method"] not in ("GET", "HEAD"):
                raise MethodNotAllowed("use GET for /v1/stream")
            principal, types = _open(hub, conn)
            # A reconnecting EventSource sends Last-Event-ID: it is newer than the URL's `after`.
            after = _parse_after(conn.headers.get("last-event-id"), "Last-Event-ID")
            if after is None:
                after = _parse_after(conn.query_params.get("after"), "after")
            heartbeat = conn.query_params.get("heartbeat", "comment")
            if heartbeat not in ("comment", "event"):
                raise BadRequest("heartbeat must be comment (the default) or event")
            hub.fanout.admit(principal.id, hub.config.streams.max_per_credential)  # last: released below
        except HubError as exc:
            await error_response(exc)(scope, receive, with_request_id(send, request_id.get() or ""))
            return
        try:
            await self._stream(scope, receive, send, principal, types, after, heartbeat)
        finally:
            hub.fanout.release(principal.id)

    async def _stream(self, scope: Scope, receive: Receive, raw_send: Send, principal: Principal, types: TypeFilter,
                      after: int | None, heartbeat: str) -> None:
        hub = self.hub
        conn = HTTPConnection(scope)
        streams = hub.config.streams
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache, no-store"),
            (b"x-accel-buffering", b"no"),  # tell nginx-style proxies not to buffer the stream
            (b"x-request-id", (request_id.get() or "").encode("latin-1")),
        ]
        headers += cors_headers(hub.config.server.cors_origins, conn.headers.get("origin"))
        await raw_send({"type": "http.response.start", "status": 200, "headers": headers})
        preamble = b"retry: %d\n: callhub stream, head seq %d\n\n" % (int(streams.sse_retry * 1000), hub.fanout.head)
        beat = heartbeat_event(streams.sse_heartbeat) if heartbeat == "event" else None
        if beat is not None:
            preamble += beat.record  # the client learns the interval at once, not one interval later
        await raw_send({"type": "http.response.body", "body": preamble, "more_body": True})
        sink = make_sink("sse", raw_send, streams.buffer, streams.buffer_bytes)
        if beat is not None:
            sink.beat = beat
        subscriber = Subscriber(
            transport="sse", principal=principal.name, agent=principal.agent, filter=types, sink=sink,
            remote=_remote(scope),
        )
        hub.fanout.register(subscriber, expires_at=principal.expires_at)
        try:
            hub.fanout.subscribe(subscriber, after)
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    break
        finally:
            hub.fanout.unregister(subscriber)


class WebSocketEndpoint:
    """`GET /v1/ws`, called like `SSEEndpoint` with the server's own `send`."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _websocket(self.hub, WebSocket(scope, receive, send), send)


async def _websocket(hub: Hub, websocket: WebSocket, raw_send: Send) -> None:
    try:
        principal, types = _open(hub, websocket)
        after = _parse_after(websocket.query_params.get("after"), "after")
        hub.fanout.admit(principal.id, hub.config.streams.max_per_credential)  # last: released below
    except HubError as exc:
        if "websocket.http.response" in websocket.scope.get("extensions", {}):
            denial = error_response(exc)
            denial.headers["x-request-id"] = request_id.get() or ""
            await websocket.send_denial_response(denial)
        else:
            await websocket.close(code=1008, reason=exc.message[:120])
        return
    try:
        await _serve_websocket(hub, websocket, raw_send, principal, types, after)
    finally:
        hub.fanout.release(principal.id)


async def _serve_websocket(hub: Hub, websocket: WebSocket, raw_send: Send, principal: Principal, types: TypeFilter,
                           after: int | None) -> None:
    await websocket.accept(headers=[(b"x-request-id", (request_id.get() or "").encode("latin-1"))])
    sink = make_sink("ws", raw_send, hub.config.streams.buffer, hub.config.streams.buffer_bytes)
    subscriber = Subscriber(
        transport="ws", principal=principal.name, agent=principal.agent, filter=types, sink=sink,
        remote=_remote(websocket.scope),
    )
    hub.fanout.register(subscriber, expires_at=principal.expires_at)
    bad_in_a_row, max_bad = 0, hub.config.streams.max_bad_messages
    try:
        hub.fanout.subscribe(subscriber, after)
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            text = message.get("text")
            if text is None:
                raw = message.get("bytes") or b""
                text = raw.decode("utf-8", "replace")
            if _client_message(hub, subscriber, principal, text):
                bad_in_a_row = 0
                continue
            bad_in_a_row += 1
            if bad_in_a_row >= max_bad:
                hub.fanout.drop(subscriber, "bad_messages")
    finally:
        hub.fanout.unregister(subscriber)


def _control(subscriber: Subscriber, content: dict[str, Any]) -> None:
    subscriber.sink.control(orjson.dumps(content))


def _client_message(hub: Hub, subscriber: Subscriber, principal: Principal, text: str) -> bool:
    """Handle `{"op": "subscribe", "types": [...], "after": SEQ}` and `{"op": "ping"}`; False if refused.

    A bad message gets an error frame (which never echoes the client's input whole); the
    connection stays open, until `[streams] max_bad_messages` in a row.
    """
    try:
        try:
            message = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise BadRequest("client messages must be JSON objects", code="invalid_message") from None
        if not isinstance(message, dict):
            raise BadRequest("client messages must be JSON objects", code="invalid_message")
        op = message.get("op")
        if op == "ping":
            _control(subscriber, {"op": "pong", "head": hub.fanout.head})
            return True
        if op != "subscribe":
            raise BadRequest(f"unknown op {_clip(op)}; known: subscribe, ping", code="invalid_message")
        unknown = set(message) - {"op", "types", "after"}
        if unknown:
            raise BadRequest(f"unknown field(s) {_clip(sorted(unknown))} in subscribe; known: op, types, after",
                             code="invalid_message")
        if "types" in message:
            if not isinstance(message["types"], (list, str)) and message["types"] is not None:
                raise BadRequest("'types' must be a list of patterns", code="invalid_filter")
            subscriber.filter = TypeFilter(parse_patterns(message["types"]), principal.types)
        after = _parse_after(message.get("after"), "after")
        hub.fanout.subscribe(subscriber, after)
        # What it will get: the request narrowed by the credential's `types` claim, not the request.
        _control(
            subscriber,
            {"op": "subscribed", "types": list(subscriber.filter.effective), "after": after, "head": hub.fanout.head},
        )
    except HubError as exc:
        _control(subscriber, {"op": "error", **exc.to_dict()})
        return False
    return True
