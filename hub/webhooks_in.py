"""Inbound webhooks: `POST /v1/webhooks/{source}`, verified, deduplicated, durable before the 2xx.

A `Source` says how to check a delivery (`Verifier`) and how to turn it into an event
(`Normalize`). Sources come from the config (`[[sources]]`, mapped by `mapped_source`) or from
vendor handlers (`Registry.add_source`, e.g. Vbee). For every delivery, in this order:

    unknown source 404 -> body over server.max_body 413 -> verification 401 (counted per source)
    -> JSON 400 (unless format = "raw") -> normalise 422 -> commit -> 200 {"id", "seq", "duplicate"}

The event's `id` is the delivery's idempotency key, so a redelivery answers the same 200 with
the original seq and stores nothing new. The endpoint is a plain ASGI app, called straight from
`hub.app`: senders burst, and Starlette's middleware would cost each request for nothing.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import orjson
from starlette.datastructures import Headers, QueryParams
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from hub.api import error_response, read_body
from hub.config import SourceConfig
from hub.core import Hub
from hub.exceptions import BadRequest, HubError, InvalidEvent, MethodNotAllowed, NotFound
from hub.matcher import lookup
from hub.signatures import (
    SignatureError,
    check_hmac_sha256,
    check_standard_webhook,
    check_token,
    decode_whsec,
)

logger = logging.getLogger("callhub.webhooks")

__all__ = ["Delivery", "Source", "Verifier", "Normalize", "WebhookEndpoint", "mapped_source", "verifier_for", "PREFIX"]

PREFIX = "/v1/webhooks/"


@dataclass
class Delivery:
    """One webhook as it arrived."""

    source: str
    body: bytes
    headers: Headers
    query: QueryParams
    #: The parsed JSON body (None for `format = "raw"` sources).
    payload: Any = None

    def body_hash(self) -> str:
        return hashlib.sha256(self.body).hexdigest()


class Verifier(Protocol):
    def __call__(self, delivery: Delivery) -> None:
        """Return if the delivery is authentic; raise `SignatureError` (401) otherwise."""


Normalize = Callable[[Delivery], dict[str, Any]]


@dataclass(frozen=True)
class Source:
    name: str
    verify: Verifier
    #: The CloudEvent for a delivery: at least `type` and `id` (the idempotency key).
    normalize: Normalize
    format: Literal["json", "raw"] = "json"
    #: Where it was defined, for error messages (`[[sources]]`, `[vbee]`).
    origin: str = field(default="[[sources]]", compare=False)


def _bearer(headers: Headers) -> str | None:
    scheme, _, value = headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value else None


def token_verifier(secret: str) -> Verifier:
    def verify(delivery: Delivery) -> None:
        check_token(_bearer(delivery.headers) or delivery.query.get("token"), secret)

    return verify


def verifier_for(config: SourceConfig) -> Verifier:
    if config.verify == "none":
        return lambda delivery: None
    secret = config.secret or ""
    if config.verify == "token":
        return token_verifier(secret)
    if config.verify == "hmac-sha256":
        header = config.header

        def verify_hmac(delivery: Delivery) -> None:
            check_hmac_sha256(delivery.body, delivery.headers.get(header), secret)

        return verify_hmac
    key = decode_whsec(secret)
    tolerance = config.tolerance

    def verify_standard(delivery: Delivery) -> None:
        h = delivery.headers
        check_standard_webhook(
            delivery.body,
            msg_id=h.get("webhook-id"),
            timestamp=h.get("webhook-timestamp"),
            signature=h.get("webhook-signature"),
            key=key,
            tolerance=tolerance,
        )

    return verify_standard


def idempotency_key(delivery: Delivery, spec: str | list[str] | None) -> str:
    """The key that makes a redelivery a duplicate: a header, one or more body paths, or the body hash."""
    if spec is None:
        return "sha256:" + delivery.body_hash()
    if isinstance(spec, str) and spec.lower().startswith("header:"):
        value = delivery.headers.get(spec[7:].strip())
        return value if value else "sha256:" + delivery.body_hash()
    paths = [spec] if isinstance(spec, str) else spec
    values = [lookup(delivery.payload, p) for p in paths]
    if any(v is None or isinstance(v, (dict, list)) for v in values):
        # Lossless over strict: a delivery missing its key is still stored, keyed by content.
        return "sha256:" + delivery.body_hash()
    return ":".join(str(v) for v in values)


def mapped_source(config: SourceConfig) -> Source:
    """A `[[sources]]` entry: fixed or looked-up type, key by spec, `fields` copied into `data`."""

    def normalize(delivery: Delivery) -> dict[str, Any]:
        payload = delivery.payload
        if config.type.startswith("$."):
            type_ = lookup(payload, config.type[2:])
            if not isinstance(type_, str) or not type_:
                raise InvalidEvent(f"the body has no event type at {config.type[2:]!r}", field=config.type)
        else:
            type_ = config.type
        data: dict[str, Any] = {name: lookup(payload, path) for name, path in config.fields.items()}
        if config.format == "raw":
            data["raw"] = delivery.body.decode("utf-8", "replace")
            data["content_type"] = delivery.headers.get("content-type")
        else:
            data["raw"] = payload
        return {"type": type_, "id": idempotency_key(delivery, config.id), "source": config.name, "data": data}

    return Source(config.name, verifier_for(config), normalize, config.format)


class WebhookEndpoint:
    """`POST /v1/webhooks/{source}` for every known source."""

    def __init__(self, hub: Hub, sources: dict[str, Source]) -> None:
        self.hub = hub
        self.sources = sources
        metrics = hub.metrics
        self._received = metrics.webhooks_received
        self._rejected = metrics.webhooks_rejected
        self._counters: dict[tuple[str, bool], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        name = scope["path"][len(PREFIX):]
        source = self.sources.get(name)
        label = name if source is not None else "unknown"
        try:
            if source is None:
                raise NotFound(f"no webhook source named {name[:64]!r}")
            if scope["method"] != "POST":
                raise MethodNotAllowed("webhooks are POSTed")
            body = await read_body(request, self.hub.config.server.max_body)
            delivery = Delivery(name, body, request.headers, request.query_params)
            try:
                source.verify(delivery)
            except SignatureError as exc:
                self._rejected.labels(label, exc.reason).inc()
                raise
            if source.format == "json":
                try:
                    delivery.payload = orjson.loads(body)
                except orjson.JSONDecodeError:
                    raise BadRequest("the body is not valid JSON", code="invalid_json") from None
            event = source.normalize(delivery)
            result = await self.hub.publish(event, default_source=name)
        except HubError as exc:
            if not isinstance(exc, SignatureError):
                self._rejected.labels(label, exc.code).inc()
            await error_response(exc)(scope, receive, send)
            return
        self._count(label, result.duplicate)
        # Senders burst: the answer is written as two ready-made ASGI messages.
        body = orjson.dumps({"id": result.id, "seq": result.seq, "duplicate": result.duplicate})
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})

    def _count(self, label: str, duplicate: bool) -> None:
        key = (label, duplicate)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = self._received.labels(label, "duplicate" if duplicate else "stored")
        counter.inc()
