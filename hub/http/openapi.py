"""`GET /openapi.json` (the API's OpenAPI 3.1 description) and `GET /docs` (it, for people).

The document is assembled from the app's own routes (`hub.apidoc.document`): each route, the
hub's and the vendors', carries its operations, so it describes exactly what this hub serves
(a vendor's routes appear when its section is configured). The shared schemas are here.

`/docs` is one small page of our own (`docs/index.html`, `docs.js`, `docs.css` as package
data) that fetches `/openapi.json` and lists every operation; no asset comes from elsewhere,
and it has the console's strict Content-Security-Policy (docs/DECISIONS.md says why not a
vendored Swagger UI or Redoc).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from importlib import metadata, resources
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from hub.apidoc import described, document, ok, operation, undescribed
from hub.exceptions import NotFound
from hub.http.console import Asset, asset

__all__ = ["routes", "SCHEMAS", "DOCS_ASSETS", "TAGS"]

logger = logging.getLogger("callhub.openapi")

_STRING = {"type": "string"}
_TIME = {"type": "string", "description": "RFC 3339, UTC"}
_NULLABLE_TIME = {"type": ["string", "null"], "description": "RFC 3339, UTC"}

SCHEMAS: dict[str, Any] = {
    "Event": {
        "type": "object",
        "description": "A stored CloudEvent (structured JSON mode) with the hub's `seq` (docs/EVENTS.md).",
        "required": ["specversion", "id", "source", "type", "seq"],
        "properties": {
            "specversion": {"const": "1.0"}, "id": _STRING, "source": _STRING, "type": _STRING,
            "time": _STRING, "subject": _STRING, "seq": {"type": "integer", "minimum": 1},
            "data": {"type": "object"},
        },
    },
    "NewEvent": {
        "type": "object",
        "description": "A CloudEvent to publish: only `type` is required; `id` defaults to a UUID, `source` to "
                       "`api`, `time` to now. `data` is an object; `data.agent` scopes it. `seq` may not be set.",
        "required": ["type"],
        "properties": {
            "type": {"type": "string", "minLength": 1}, "id": _STRING, "source": _STRING, "time": _STRING,
            "subject": _STRING, "specversion": {"const": "1.0"}, "datacontenttype": _STRING,
            "data": {"type": "object"},
        },
    },
    "Published": {
        "type": "object", "required": ["id", "seq"],
        "properties": {"id": _STRING, "seq": {"type": "integer"}, "duplicate": {"type": "boolean"}},
    },
    "EventsPage": {
        "type": "object", "required": ["events", "next"],
        "properties": {"events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
                       "next": {"type": "integer", "minimum": 0}},
    },
    "Subscriber": {
        "type": "object",
        "required": ["id", "transport", "principal", "agent", "types", "since", "state", "last_seq", "buffer"],
        "properties": {
            "id": {"type": "integer"}, "transport": {"enum": ["sse", "ws"]}, "principal": _STRING,
            "agent": {"type": ["string", "null"]}, "types": {"type": "array", "items": _STRING},
            "allowed_types": {"type": ["array", "null"], "items": _STRING}, "since": _TIME, "remote": _STRING,
            "state": {"enum": ["live", "catching_up"]}, "writer": {"enum": ["direct", "queued"]},
            "last_seq": {"type": "integer"},
            "buffer": {"type": "object", "properties": {"events": {"type": "integer"}, "limit": {"type": "integer"},
                                                        "fill": {"type": "number"}}},
        },
    },
    "Subscribers": {
        "type": "object", "required": ["count", "head", "subscribers"],
        "properties": {"count": {"type": "integer"}, "head": {"type": "integer"},
                       "subscribers": {"type": "array", "items": {"$ref": "#/components/schemas/Subscriber"}}},
    },
    "WhoAmI": {
        "type": "object", "required": ["name", "role", "agent", "types", "expires_at", "head"],
        "properties": {"name": _STRING, "role": {"enum": ["admin", "publisher", "subscriber"]},
                       "agent": {"type": ["string", "null"]}, "types": {"type": "array", "items": _STRING},
                       "expires_at": _NULLABLE_TIME, "head": {"type": "integer"}},
    },
    "Status": {"type": "object", "required": ["status"], "properties": {"status": _STRING}},
    "Ready": {
        "type": "object", "required": ["status", "head", "upstreams"],
        "properties": {"status": {"const": "ready"}, "head": {"type": "integer"},
                       "upstreams": {"type": "object", "additionalProperties": {
                           "type": "object", "required": ["connected"],
                           "properties": {"connected": {"type": "boolean"}, "since": _TIME,
                                          "connects": {"type": "integer"}}}},
                       "leases": {"type": "object", "description": "Exclusive work this process holds (an "
                                  "upstream, the rules, retention) with its fencing token; the rest runs in "
                                  "another process sharing the store (docs/SCALING.md).",
                                  "additionalProperties": {"type": "integer"}}},
    },
    "CallFigures": {
        "type": "object",
        "required": ["since", "ended", "inbound", "answered", "abandoned", "answered_within_threshold",
                     "service_level", "abandon_rate", "average_answer_s", "average_talk_s", "by_outcome",
                     "by_direction"],
        "properties": {"since": _STRING, "ended": {"type": "integer"}, "inbound": {"type": "integer"},
                       "answered": {"type": "integer"}, "abandoned": {"type": "integer"},
                       "answered_within_threshold": {"type": "integer"},
                       "service_level": {"type": ["number", "null"]}, "abandon_rate": {"type": ["number", "null"]},
                       "average_answer_s": {"type": ["number", "null"]}, "average_talk_s": {"type": ["number", "null"]},
                       "by_outcome": {"type": "object", "additionalProperties": {"type": "integer"}},
                       "by_direction": {"type": "object", "additionalProperties": {"type": "integer"}}},
    },
    "CallStats": {
        "type": "object",
        "required": ["time_zone", "service_level_threshold_s", "service_level_target", "at", "now", "last_15m", "today"],
        "properties": {
            "time_zone": _STRING, "service_level_threshold_s": {"type": "number"},
            "service_level_target": {"type": "number"}, "at": _STRING,
            "now": {"type": "object", "required": ["in_progress"], "properties": {"in_progress": {
                "type": "object", "required": ["total", "by_state", "by_direction"],
                "properties": {"total": {"type": "integer"},
                               "by_state": {"type": "object", "additionalProperties": {"type": "integer"}},
                               "by_direction": {"type": "object", "additionalProperties": {"type": "integer"}}}}}},
            "last_15m": {"$ref": "#/components/schemas/CallFigures"},
            "today": {"$ref": "#/components/schemas/CallFigures"},
        },
    },
    "Rule": {
        "type": "object", "required": ["name", "on", "enabled", "actions", "matched"],
        "properties": {"name": _STRING, "file": {"type": ["string", "null"]},
                       "on": {"type": "array", "items": _STRING}, "enabled": {"type": "boolean"},
                       "actions": {"type": "array", "items": _STRING}, "matched": {"type": "integer"},
                       "actions_ok": {"type": "integer"}, "actions_failed": {"type": "integer"},
                       "last_fired": _NULLABLE_TIME},
    },
    "SubscriptionSpec": {
        "type": "object", "required": ["url"],
        "description": "docs/WEBHOOKS_OUT.md",
        "properties": {
            "url": {"type": "string", "minLength": 1, "maxLength": 2048, "description": "an https:// endpoint"},
            "types": {"type": "array", "items": _STRING}, "filter": {"type": "object"},
            "description": {"type": "string", "maxLength": 500},
            "rate_limit_per_s": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 10000},
            "ordering": {"enum": ["per_call", "none"]},
            "max_age_s": {"type": "object", "additionalProperties": {"type": ["string", "number"]}},
            "enabled": {"type": "boolean"},
        },
    },
    "Subscription": {
        "type": "object",
        "required": ["id", "url", "types", "state", "managed_by", "created", "updated", "disabled"],
        "properties": {
            "id": _STRING, "url": _STRING, "types": {"type": "array", "items": _STRING},
            "filter": {"type": "object"}, "description": _STRING, "enabled": {"type": "boolean"},
            "state": _STRING, "managed_by": {"enum": ["api", "config"]}, "created": _TIME, "updated": _TIME,
            "disabled": {"type": ["object", "null"]}, "failing_since": _NULLABLE_TIME,
            "secret_rotation_ends": _NULLABLE_TIME, "backlog": {"type": "integer"},
            "cursor": {"type": "integer"}, "last_success": _NULLABLE_TIME,
            "last_failure": {"type": ["object", "null"]},
        },
    },
    "SubscriptionWithSecret": {
        "allOf": [{"$ref": "#/components/schemas/Subscription"},
                  {"type": "object", "required": ["secret"],
                   "properties": {"secret": {"type": "string", "description": "whsec_…, shown once"}}}],
    },
    "DeliveryAttempt": {
        "type": "object", "required": ["id", "delivery", "seq", "at", "attempt", "outcome"],
        "properties": {"id": {"type": "integer"}, "delivery": _STRING, "seq": {"type": "integer"},
                       "event_id": _STRING, "webhook_id": _STRING, "at": _TIME, "attempt": {"type": "integer"},
                       "outcome": _STRING, "status": {"type": ["integer", "null"]},
                       "latency_ms": {"type": ["number", "integer", "null"]}, "error": {"type": ["string", "null"]},
                       "response": {"type": ["string", "null"]}},
    },
}

DESCRIPTION = (
    "callhub: real-time call events from AntRing, AntCRM, Vbee and your own sources, as history, live "
    "streams (SSE, WebSocket) and webhooks. Errors are `{\"error\": {\"code\", \"message\"}}` with a 4xx "
    "status (503 when the store or the hub is unavailable). docs/API.md has the prose."
)

#: The operations' groups, in the order the reference shows them (a vendor's tag comes after these).
TAGS = {
    "events": "Publish and read the event log",
    "streams": "Live events: Server-Sent Events and WebSocket",
    "webhooks": "Inbound webhooks (docs/WEBHOOKS.md)",
    "subscriptions": "Outbound webhook subscriptions (docs/WEBHOOKS_OUT.md)",
    "rules": "Rules and their actions (docs/RULES.md)",
    "stats": "Live call figures (docs/OPERATIONS.md)",
    "console": "The agent console (docs/CONSOLE.md)",
    "meta": "Health, metrics and this description",
}

#: `/docs`: file in `hub/http/docs/` -> media type.
DOCS_ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "docs.css": "text/css; charset=utf-8",
    "docs.js": "text/javascript; charset=utf-8",
}


def _load_docs() -> dict[str, Asset]:
    folder = resources.files("hub.http").joinpath("docs")
    return {name: asset(folder.joinpath(name).read_bytes(), media_type) for name, media_type in DOCS_ASSETS.items()}


def routes(all_routes: Callable[[], Sequence[BaseRoute]]) -> list[Route]:
    """`/openapi.json` (built once, on first request, from `all_routes()`), `/docs` and its files."""
    built: list[bytes] = []
    pages = _load_docs()

    async def openapi(request: Request) -> Response:
        if not built:
            served = all_routes()
            missing = undescribed(served)
            if missing:  # a route added without its operation (the API tests fail on this too)
                logger.warning("routes left out of /openapi.json (no operation): %s", ", ".join(missing))
            doc = document(served, title="callhub", version=metadata.version("callhub"), description=DESCRIPTION,
                           schemas=SCHEMAS, tags=TAGS)
            built.append(orjson.dumps(doc))
        return Response(built[0], media_type="application/json", headers={"Cache-Control": "no-cache"})

    async def docs(request: Request) -> Response:
        return pages["index.html"].respond(request)

    async def docs_file(request: Request) -> Response:
        found = pages.get(request.path_params["name"])
        if found is None or found is pages["index.html"]:
            raise NotFound("no such docs file")
        return found.respond(request)

    return [
        described(Route("/openapi.json", openapi, methods=["GET"]),
                  get=operation("The API description", tag="meta", roles=None,
                                description="This document (OpenAPI 3.1): every endpoint this hub serves.",
                                responses={200: ok({"type": "object", "required": ["openapi", "paths"]},
                                                   "The OpenAPI document")})),
        described(Route("/docs", docs, methods=["GET"]),
                  get=operation("The API reference page", tag="meta", roles=None,
                                responses={200: ok({"type": "string"}, "An HTML page rendering /openapi.json",
                                                   media_type="text/html"),
                                           304: ok(None, "Not modified (ETag)")})),
        described(Route("/docs/{name}", docs_file, methods=["GET"]),
                  get=operation("A file of the API reference page", tag="meta", roles=None,
                                responses={200: {"description": "The page's script or stylesheet", "content": {
                                    "text/javascript": {"schema": {"type": "string"}},
                                    "text/css": {"schema": {"type": "string"}}}},
                                           304: ok(None, "Not modified (ETag)")},
                                errors=[404])),
    ]
