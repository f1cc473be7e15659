"""Request/response endpoints: publish, history, subscribers, health, metrics."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from hub.events import check_depth
from hub.exceptions import BadRequest, HubError, PayloadTooLarge, UnsupportedMediaType
from hub.live.fanout import GAP, SCAN_FACTOR, gap_event
from hub.matcher import TypeFilter, parse_patterns
from hub.ops.metrics import CONTENT_TYPE_LATEST
from hub.service import Hub

__all__ = [
    "JSONResponse", "publish_event", "list_events", "list_subscribers", "whoami", "healthz", "readyz", "metrics",
]

#: `GET /v1/events` page size: default and maximum.
HISTORY_LIMIT_DEFAULT = 100
HISTORY_LIMIT_MAX = 1000
#: Largest seq a client may name (SQLite's INTEGER is signed 64-bit).
MAX_SEQ = 2**63 - 1
_JSON_TYPES = {"application/json", "application/cloudevents+json"}


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(exc: HubError) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Bearer realm="callhub"'} if exc.status_code == 401 else None
    return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=headers)


def hub_of(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


def int_param(request: Request, name: str, *, default: int | None, low: int, high: int | None = None) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"'{name}' must be an integer, not {raw[:40]!r}", code="invalid_parameter") from None
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise BadRequest(f"'{name}' must be {bound}", code="invalid_parameter")
    return value


async def read_body(request: Request, limit: int, *, on_chunk: Callable[[bytes], None] | None = None) -> bytes:
    """The request body, refusing (413) as soon as it is known to exceed `limit` bytes.

    `on_chunk` sees each chunk as it arrives (a webhook signature is computed that way).
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise PayloadTooLarge(f"body is larger than the limit of {limit} bytes", limit=limit)
        except ValueError:
            raise BadRequest("invalid Content-Length header") from None
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"body is larger than the limit of {limit} bytes", limit=limit)
            if on_chunk is not None:
                on_chunk(chunk)
            chunks.append(chunk)
    except ClientDisconnect:
        # Nobody is left to read the answer; this only keeps the log free of a traceback.
        raise BadRequest("the client went away before sending the whole body", code="client_disconnected") from None
    return b"".join(chunks)


def parse_json(body: bytes) -> Any:
    """A request body as JSON: 400 if it is not JSON, 422 if it nests deeper than `MAX_JSON_DEPTH`."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"body is not valid JSON: {exc}", code="invalid_json") from None
    check_depth(value)
    return value


def require_json(request: Request) -> None:
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    if media not in _JSON_TYPES:
        raise UnsupportedMediaType(
            f"send the event as application/json or application/cloudevents+json, not {media or 'no content type'!r}"
        )


async def publish_event(request: Request) -> Response:
    received = time.perf_counter()
    hub = hub_of(request)
    try:
        principal = hub.authenticate(request)
        principal.require("publisher", "admin")
        require_json(request)
        obj = parse_json(await read_body(request, hub.config.server.max_body))
        result = await hub.publish_from(principal, obj, received=received)
    except HubError as exc:
        hub.metrics.events_rejected.labels(str(exc.status_code)).inc()
        raise
    content: dict[str, Any] = {"id": result.id, "seq": result.seq}
    if result.duplicate:
        content["duplicate"] = True
        return JSONResponse(content, status_code=200)
    return JSONResponse(content, status_code=202)


async def list_events(request: Request) -> Response:
    hub = hub_of(request)
    principal = hub.authenticate(request)
    after = int_param(request, "after", default=0, low=0, high=MAX_SEQ)
    limit = int_param(request, "limit", default=HISTORY_LIMIT_DEFAULT, low=1, high=HISTORY_LIMIT_MAX)
    assert after is not None and limit is not None
    types = TypeFilter(parse_patterns(request.query_params.get("types")), principal.types)
    page = await hub.backend.read(
        after, limit=limit, agent=principal.agent, types=types, scan_limit=max(limit, 100) * SCAN_FACTOR
    )
    bodies = [e.body for e in page.events]
    if after < page.trimmed_through and types.allows(GAP):
        bodies.insert(0, gap_event(after, page.trimmed_through).body)
    # The stored JSON goes out as it is: no decode, no re-encode.
    out = b'{"events":[' + b",".join(bodies) + b'],"next":%d}' % page.next
    return Response(out, media_type="application/json")


async def events(request: Request) -> Response:
    """`/v1/events`: one route for both methods, so a 405 names both in `Allow`."""
    if request.method == "POST":
        return await publish_event(request)
    return await list_events(request)


async def list_subscribers(request: Request) -> Response:
    hub = hub_of(request)
    hub.authenticate(request).require("admin")
    subscribers = hub.fanout.describe()
    return JSONResponse({"subscribers": subscribers, "count": len(subscribers), "head": hub.fanout.head})


async def whoami(request: Request) -> Response:
    """What the presented credential is: a UI learns from this whether to show one agent or all."""
    hub = hub_of(request)
    principal = hub.authenticate(request)
    expires = principal.expires_at
    return JSONResponse({
        "name": principal.name,
        "role": principal.role,
        "agent": principal.agent,
        "types": list(principal.types),
        "expires_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires)) if expires is not None else None,
        "head": hub.fanout.head,
    }, headers={"Cache-Control": "no-store"})


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready when the store takes writes. Upstreams are reported, not required: with a vendor's
    socket down the hub still stores, serves history and reconciles when it returns."""
    hub = hub_of(request)
    await hub.check_ready()
    return JSONResponse({"status": "ready", "head": hub.fanout.head, "upstreams": hub.upstreams.describe()})


async def metrics(request: Request) -> Response:
    return Response(hub_of(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)
