"""`POST /v1/webhooks/{source}`: a delivery verified as it streams in, mapped, stored, answered.

The order of checks and answers is in `hub.webhooks.inbound`. The endpoint is a plain ASGI app,
called straight from `hub.http.app`: senders burst, and Starlette's middleware would cost each
request for nothing.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from hub.apidoc import json_body, ok, operation
from hub.events import Publish
from hub.exceptions import HubError, MethodNotAllowed, NotFound
from hub.ops.metrics import Metrics
from hub.requests import error_response, parse_json, read_body
from hub.tracing import REQUEST_ID_HEADER
from hub.webhooks.inbound import Delivery, Source
from hub.webhooks.signatures import SignatureError

__all__ = ["WebhookEndpoint", "PREFIX"]

PREFIX = "/v1/webhooks/"

WEBHOOK = operation(
    "Receive a webhook", tag="webhooks", roles=None,
    security=[{"webhookToken": []}, {"webhookSignature": []}],
    description="A delivery from a `[[sources]]` sender or a built-in vendor source (`vbee`), verified as it "
                "streams in (token, HMAC-SHA256 or Standard Webhooks: see docs/WEBHOOKS.md), mapped to an "
                "event and stored; a repeated delivery (same id) answers `duplicate` with the original seq.",
    body=json_body({"description": "Whatever the source sends (JSON, or any body for `format = \"raw\"`)"},
                   media_types=("application/json", "*/*")),
    responses={200: ok({"type": "object", "required": ["id", "seq", "duplicate"], "properties": {
        "id": {"type": "string"}, "seq": {"type": "integer"}, "duplicate": {"type": "boolean"}}}, "Stored")},
    errors=[400, 401, 403, 404, 405, 413, 415, 422, 503],
)


class WebhookEndpoint:
    """`POST /v1/webhooks/{source}` for every known source."""

    def __init__(self, sources: dict[str, Source], *, publish: Publish, metrics: Metrics, max_body: int) -> None:
        self.sources = sources
        self._publish = publish
        self._max_body = max_body
        self._received = metrics.webhooks_received
        self._rejected = metrics.webhooks_rejected
        self._requests = metrics.webhook_requests
        self._counters: dict[tuple[str, bool], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send, rid: str = "") -> None:
        """`rid`: the request id, returned as `X-Request-Id` on every answer."""
        request = Request(scope, receive)
        name = scope["path"][len(PREFIX):]
        source = self.sources.get(name)
        label = name if source is not None else "unknown"
        try:
            if source is None:
                raise NotFound(f"no webhook source named {name[:64]!r}")
            if scope["method"] != "POST":
                raise MethodNotAllowed("webhooks are POSTed")
            try:
                check = source.verify(request.headers, request.query_params)
                body = await read_body(request, self._max_body, on_chunk=check.update)
                check.finish()
            except SignatureError as exc:
                self._rejected.labels(label, exc.reason).inc()
                raise
            delivery = Delivery(name, body, request.headers, request.query_params)
            if source.format == "json":
                delivery.payload = parse_json(body)
            event = source.normalize(delivery)
            result = await self._publish(event, default_source=name)
        except HubError as exc:
            if isinstance(exc, SignatureError):
                outcome = "unauthorized"
            else:
                self._rejected.labels(label, exc.code).inc()
                outcome = "failed" if exc.status_code >= 500 else "invalid"
            self._requests.labels(label, outcome).inc()
            response = error_response(exc)
            if rid:
                response.headers[REQUEST_ID_HEADER] = rid
            await response(scope, receive, send)
            return
        self._count(label, result.duplicate)
        # Senders burst: the answer is written as two ready-made ASGI messages.
        body = orjson.dumps({"id": result.id, "seq": result.seq, "duplicate": result.duplicate})
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        if rid:
            headers.append((b"x-request-id", rid.encode("latin-1")))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _count(self, label: str, duplicate: bool) -> None:
        key = (label, duplicate)
        counters = self._counters.get(key)
        if counters is None:
            counters = self._counters[key] = (
                self._received.labels(label, "duplicate" if duplicate else "stored"),
                self._requests.labels(label, "duplicate" if duplicate else "accepted"),
            )
        for counter in counters:
            counter.inc()
