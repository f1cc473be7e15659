"""Inbound webhooks: `POST /v1/webhooks/{source}`, verified, deduplicated, durable before the 2xx.

A `Source` says how to check a delivery (`Verifier`) and how to turn it into an event
(`Normalize`). Sources come from the config (`[[sources]]`, mapped by `mapped_source`) or from
vendor handlers (`Registry.add_source`, e.g. Vbee). For every delivery, in this order:

    unknown source 404 -> credentials 401 (before the body is read; counted per source)
    -> body over server.max_body 413 (declared, or as it streams) -> signature over the body 401
    -> JSON 400 / nesting over MAX_JSON_DEPTH 422 (unless format = "raw") -> normalise 422
    -> commit -> 200 {"id", "seq", "duplicate"}

The signature is computed as the body streams in, and a sender without valid credentials is
refused before its body is read at all. The event's `id` is the delivery's idempotency key, so
a redelivery answers the same 200 with the original seq and stores nothing new. The endpoint
itself is `hub.http.webhooks`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from starlette.datastructures import Headers, QueryParams

from hub.config import ConfigError, SourceConfig
from hub.exceptions import InvalidEvent
from hub.matcher import lookup
from hub.webhooks.signatures import (
    NO_BODY_CHECK,
    BodyCheck,
    begin_hmac_sha256,
    begin_standard_webhook,
    begin_token,
    check_timestamp,
    decode_whsec,
)

logger = logging.getLogger("callhub.webhooks")

__all__ = ["Delivery", "Source", "Verifier", "BodyCheck", "Normalize", "mapped_source", "verifier_for",
           "token_verifier", "sources_of"]


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
    def __call__(self, headers: Headers, query: QueryParams) -> BodyCheck:
        """Check what can be checked before the body is read, raising `SignatureError` (401);
        return what checks the body as it streams in (`signatures.NO_BODY_CHECK` if nothing)."""


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


def token_verifier(secret: str, *, timestamp_header: str | None = None, tolerance: float = 300.0) -> Verifier:
    def verify(headers: Headers, query: QueryParams) -> BodyCheck:
        check = begin_token(_bearer(headers) or query.get("token"), secret)
        if timestamp_header:
            check_timestamp(headers.get(timestamp_header), tolerance, header=timestamp_header)
        return check

    return verify


def verifier_for(config: SourceConfig) -> Verifier:
    if config.verify == "none":
        return lambda headers, query: NO_BODY_CHECK
    secret = config.secret or ""
    if config.verify == "token":
        return token_verifier(secret, timestamp_header=config.timestamp_header, tolerance=config.tolerance)
    if config.verify == "hmac-sha256":
        header, stamp_header, tolerance = config.header, config.timestamp_header, config.tolerance
        template = config.signed.removesuffix("{body}")

        def verify_hmac(headers: Headers, query: QueryParams) -> BodyCheck:
            prefix = template
            if stamp_header:
                stamp = check_timestamp(headers.get(stamp_header), tolerance, header=stamp_header)
                prefix = template.replace("{timestamp}", stamp)
            return begin_hmac_sha256(headers.get(header), secret, prefix=prefix.encode())

        return verify_hmac
    key = decode_whsec(secret)
    tolerance = config.tolerance

    def verify_standard(headers: Headers, query: QueryParams) -> BodyCheck:
        return begin_standard_webhook(
            msg_id=headers.get("webhook-id"),
            timestamp=headers.get("webhook-timestamp"),
            signature=headers.get("webhook-signature"),
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


def sources_of(configured: list[SourceConfig], built_in: list[Source]) -> dict[str, Source]:
    """`[[sources]]` and the handlers' built-in ones, by name; a name may be used once."""
    sources: dict[str, Source] = {}
    for source in [*(mapped_source(c) for c in configured), *built_in]:
        if source.name in sources:
            raise ConfigError([("sources", f"webhook source {source.name!r} is defined twice")])
        sources[source.name] = source
    return sources
