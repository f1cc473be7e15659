"""Request helpers every HTTP endpoint shares (the hub's and the vendors'): JSON answers, errors as
JSON, bodies read within a limit, JSON parsed within a depth, query parameters checked.

A leaf module: it knows HTTP and the error tree, nothing of the hub's parts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, HTTPConnection, Request
from starlette.responses import Response
from starlette.types import Message, Scope, Send

from hub.events import check_depth
from hub.exceptions import BadRequest, HubError, PayloadTooLarge, UnsupportedMediaType
from hub.tracing import accept_request_id

__all__ = ["JSONResponse", "error_response", "int_param", "read_body", "parse_json", "require_json", "bearer",
           "MAX_SEQ", "scope_request_id", "with_request_id"]

#: Largest seq a client may name (SQLite's INTEGER is signed 64-bit).
MAX_SEQ = 2**63 - 1
_JSON_TYPES = {"application/json", "application/cloudevents+json"}


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(exc: HubError) -> JSONResponse:
    """The one way an error becomes an answer: `{"error": {"code", "message", ...}}` with its status."""
    headers = {"WWW-Authenticate": 'Bearer realm="callhub"'} if exc.status_code == 401 else None
    return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=headers)


def scope_request_id(scope: Scope) -> str:
    """The request's id: the client's `X-Request-Id` when short and safe (`hub.tracing`), else a new one."""
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            return accept_request_id(value.decode("latin-1"))
    return accept_request_id(None)


def with_request_id(send: Send, rid: str) -> Send:
    """`send`, adding `X-Request-Id: rid` to the response's head."""
    header = (b"x-request-id", rid.encode("latin-1"))

    async def tagged(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), header]}
        await send(message)

    return tagged


def bearer(conn: HTTPConnection, *, allow_query: bool = False) -> str | None:
    """The credential a request presents: `Authorization: Bearer …`, else (streams only) `?token=`."""
    header = conn.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer":
            return value.strip()
    if allow_query:
        return conn.query_params.get("token")
    return None


def int_param(request: HTTPConnection, name: str, *, default: int | None, low: int,
              high: int | None = None) -> int | None:
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


def require_json(request: HTTPConnection) -> None:
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    if media not in _JSON_TYPES:
        raise UnsupportedMediaType(
            f"send the event as application/json or application/cloudevents+json, not {media or 'no content type'!r}"
        )
