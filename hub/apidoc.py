"""The API's description (OpenAPI 3.1), kept beside the routes it describes.

A route carries its own operations (`described(Route(...), post=operation(...))`), the hub's and
the vendors' alike (handlers reach these helpers through `hub.plugin`); `document(routes)`
assembles `/openapi.json` from the app's routes, so a route is described where it is written,
and `undescribed(routes)` names every route and method that is not (a test fails on any).

Credentials (`SECURITY_SCHEMES`): API keys and agent JWTs as `Authorization: Bearer`, the
streams' `?token=`, and webhook verification. A security requirement lists the roles that may
call the operation (OpenAPI 3.1 allows role names for non-OAuth schemes).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute

__all__ = ["Operation", "described", "hidden", "operation", "ok", "json_body", "query", "ref", "document",
           "undescribed", "operations_of", "ERROR", "SECURITY_SCHEMES", "ROLES", "ANY_ROLE"]

Operation = dict[str, Any]
RouteT = TypeVar("RouteT", bound=BaseRoute)

#: The attribute a described route carries its operations in ({"get": {...}}); `HIDDEN` for a
#: route that is not part of the API (the demo's simulators mounted on the hub's port).
_ATTRIBUTE = "openapi_operations"
HIDDEN: dict[str, Operation] = {}

ROLES = ("admin", "publisher", "subscriber")
ANY_ROLE = ROLES

#: `{"error": {"code", "message", ...}}`: every error the hub answers (hub.requests.error_response).
ERROR: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {
        "type": "object",
        "required": ["code", "message"],
        "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                       "field": {"type": ["string", "null"]}},
        "additionalProperties": True,
    }},
}

_ERRORS = {
    400: "Bad request: a malformed body or query parameter",
    401: "No, bad or expired credentials (`WWW-Authenticate: Bearer`)",
    403: "The credential's role or scope does not allow this",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict with the current state",
    413: "Body over the size limit",
    415: "Not JSON",
    422: "JSON, but not valid for this operation (`field` names what is wrong)",
    426: "A WebSocket endpoint asked without the Upgrade handshake",
    429: "A per-credential limit is reached",
    502: "A vendor refused or failed",
    503: "The store cannot commit, or the hub is shutting down",
}

SECURITY_SCHEMES: dict[str, Any] = {
    "apiKey": {"type": "http", "scheme": "bearer",
               "description": "An API key from `[[auth.keys]]` (role admin, publisher or subscriber; optionally "
                              "scoped to an agent), or the admin key the hub generated into its data directory."},
    "agentJwt": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                 "description": "An HS256 JWT signed with `[auth] jwt_secret` (`callhub token`): role subscriber, "
                                "claims `sub`, `exp`, optional `agent` and `types`."},
    "queryToken": {"type": "apiKey", "in": "query", "name": "token",
                   "description": "The same API key or JWT as `?token=`, where a browser cannot set a header "
                                  "(the streams, recording links)."},
    "webhookToken": {"type": "apiKey", "in": "query", "name": "token",
                     "description": "A webhook source with `verify = \"token\"`: the shared token as `?token=` "
                                    "(or its header). See docs/WEBHOOKS.md."},
    "webhookSignature": {"type": "apiKey", "in": "header", "name": "X-Signature",
                         "description": "A webhook source with `verify = \"hmac-sha256\"` (its `header`, over the "
                                        "raw body) or `\"standard-webhooks\"` (`webhook-id`, `webhook-timestamp`, "
                                        "`webhook-signature`). See docs/WEBHOOKS.md."},
}


def described(route: RouteT, **operations: Operation) -> RouteT:
    """`route`, carrying its OpenAPI operations by lower-case method (`get=...`, `post=...`)."""
    setattr(route, _ATTRIBUTE, {method.lower(): op for method, op in operations.items()})
    return route


def hidden(route: RouteT) -> RouteT:
    """`route` is not part of the API (the demo's simulators): left out of the description on purpose."""
    setattr(route, _ATTRIBUTE, HIDDEN)
    return route


def operations_of(route: BaseRoute) -> dict[str, Operation] | None:
    found: dict[str, Operation] | None = getattr(route, _ATTRIBUTE, None)
    return found


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def ok(schema: Mapping[str, Any] | None, description: str, *,
       media_type: str = "application/json", headers: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A response object: `description`, and `schema` as `media_type` content (None: no body)."""
    response: dict[str, Any] = {"description": description}
    if schema is not None:
        response["content"] = {media_type: {"schema": dict(schema)}}
    if headers:
        response["headers"] = {name: {"schema": {"type": "string"}, "description": text}
                               for name, text in headers.items()}
    return response


def json_body(schema: Mapping[str, Any], *, required: bool = True,
              media_types: Sequence[str] = ("application/json",)) -> dict[str, Any]:
    return {"required": required, "content": {m: {"schema": dict(schema)} for m in media_types}}


def query(name: str, schema: Mapping[str, Any], description: str, *, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "description": description, "schema": dict(schema)}


def operation(summary: str, *, tag: str, responses: Mapping[int, dict[str, Any]], roles: Sequence[str] | None = ("admin",),
              jwt: bool = False, query_token: bool = False, security: list[dict[str, list[str]]] | None = None,
              description: str = "", parameters: Sequence[dict[str, Any]] = (), body: dict[str, Any] | None = None,
              errors: Iterable[int] = ()) -> Operation:
    """One operation. `roles` None: no credentials; else the API-key roles that may call it (`jwt`:
    agent JWTs too, `query_token`: also as `?token=`). `errors` lists the error statuses it answers
    (the shared `Error` body); 401 is added whenever credentials are needed."""
    op: Operation = {"summary": summary, "tags": [tag], "operationId": _operation_id(summary)}
    if description:
        op["description"] = description
    if parameters:
        op["parameters"] = list(parameters)
    if body is not None:
        op["requestBody"] = body
    codes = set(errors)
    if security is not None:
        op["security"] = security
    elif roles is None:
        op["security"] = []
    else:
        requirements: list[dict[str, list[str]]] = [{"apiKey": list(roles)}]
        if jwt:
            requirements.append({"agentJwt": ["subscriber"]})
        if query_token:
            requirements.append({"queryToken": list(roles)})
        op["security"] = requirements
        codes.add(401)
        if tuple(roles) != ANY_ROLE:
            codes.add(403)
    out: dict[str, Any] = {str(status): response for status, response in responses.items()}
    for status in sorted(codes):
        out.setdefault(str(status), {"$ref": f"#/components/responses/E{status}"})
    op["responses"] = out
    return op


def _operation_id(summary: str) -> str:
    words = re.findall(r"[A-Za-z0-9]+", summary)
    return words[0].lower() + "".join(w.capitalize() for w in words[1:]) if words else "operation"


_CONVERTER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::[a-z]+)?\}")


def _paths(routes: Iterable[BaseRoute], prefix: str = "") -> Iterable[tuple[str, list[str], BaseRoute]]:
    """(OpenAPI path, methods, route) for every endpoint below `routes`."""
    for route in routes:
        if isinstance(route, Route):
            methods = sorted(m for m in (route.methods or {"GET"}) if m != "HEAD" or route.methods == {"HEAD"})
            yield _CONVERTER.sub(r"{\1}", prefix + route.path), methods, route
        elif isinstance(route, WebSocketRoute):
            yield _CONVERTER.sub(r"{\1}", prefix + route.path), ["GET"], route
        elif isinstance(route, Mount):
            if operations_of(route) is HIDDEN:
                continue
            yield from _paths(route.routes, prefix + route.path)
        else:  # an unknown kind of route: reported as undescribed
            yield f"{prefix}<{type(route).__name__}>", ["?"], route


def undescribed(routes: Iterable[BaseRoute]) -> list[str]:
    """`METHOD /path` for every endpoint without an operation (nor marked `hidden`)."""
    missing = []
    for path, methods, route in _paths(routes):
        operations = operations_of(route)
        if operations is HIDDEN:
            continue
        missing += [f"{m} {path}" for m in methods if operations is None or m.lower() not in operations]
    return missing


def document(routes: Iterable[BaseRoute], *, title: str, version: str, description: str,
             schemas: Mapping[str, Any], tags: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document for `routes` (their operations), with the shared components."""
    paths: dict[str, dict[str, Any]] = {}
    for path, methods, route in _paths(routes):
        operations = operations_of(route) or {}
        for method in methods:
            op = operations.get(method.lower())
            if op is None:
                continue
            names = _CONVERTER.findall(path)
            if names:
                given = {p["name"] for p in op.get("parameters", []) if p.get("in") == "path"}
                extra = [{"name": n, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
                         for n in names if n not in given]
                op = {**op, "parameters": [*extra, *op.get("parameters", [])]}
            paths.setdefault(path, {})[method.lower()] = op
    responses = {f"E{status}": ok(ref("Error"), text) for status, text in _ERRORS.items()}
    responses["E401"]["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    used = {tag for item in paths.values() for op in item.values() for tag in op.get("tags", [])}
    ordered = [{"name": name, "description": text} for name, text in (tags or {}).items() if name in used]
    ordered += [{"name": name} for name in sorted(used - set(tags or {}))]
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": description},
        "tags": ordered,
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": {"Error": ERROR, **schemas}, "responses": responses,
                       "securitySchemes": SECURITY_SCHEMES},
    }
