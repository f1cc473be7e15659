"""`/v1/subscriptions` and `/v1/deliveries`: outbound webhook subscriptions, their delivery log,
replays and retries (admin only; docs/WEBHOOKS_OUT.md)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hub.apidoc import described, json_body, ok, operation, query, ref
from hub.events import event_time
from hub.exceptions import BadRequest
from hub.requests import MAX_SEQ, JSONResponse, int_param, parse_json, read_body, require_json
from hub.service import Hub
from hub.webhooks.delivery import OUTCOMES
from hub.webhooks.subscriptions import spec_from

__all__ = ["routes", "LOG_LIMIT_DEFAULT", "LOG_LIMIT_MAX"]

#: `GET /v1/subscriptions/{id}/deliveries` page size: default and maximum.
LOG_LIMIT_DEFAULT = 100
LOG_LIMIT_MAX = 1000
#: Subscription documents are small: a body past this is refused.
MAX_BODY = 64 * 1024


def routes(hub: Hub) -> list[Route]:
    authenticate, deliveries = hub.authenticate, hub.deliveries

    def admin(request: Request) -> None:
        authenticate(request).require("admin")

    async def admin_current(request: Request) -> None:
        """Admin only; on a process that does not deliver (several on Redis), the subscriptions as the
        shared outbox has them now, so a read shows and a change starts from what is stored."""
        admin(request)
        await deliveries.refresh()

    async def body(request: Request, *, optional: bool = False) -> Any:
        if optional and not await _has_body(request):
            return {}
        require_json(request)
        obj = parse_json(await read_body(request, MAX_BODY))
        if not isinstance(obj, dict):
            raise BadRequest("the body must be a JSON object", code="invalid_body")
        return obj

    async def collection(request: Request) -> Response:
        await admin_current(request)
        if request.method == "GET":
            subscriptions = deliveries.describe_all()
            return JSONResponse({"subscriptions": subscriptions, "count": len(subscriptions)})
        described, secret = await deliveries.create(spec_from(await body(request)))
        return JSONResponse({**described, "secret": secret}, status_code=201,
                            headers={"Location": f"/v1/subscriptions/{described['id']}", "Cache-Control": "no-store"})

    async def one(request: Request) -> Response:
        await admin_current(request)
        id_ = request.path_params["id"]
        if request.method == "GET":
            return JSONResponse(deliveries.describe(deliveries.worker(id_)))
        if request.method == "DELETE":
            await deliveries.delete(id_)
            return Response(status_code=204)
        patch = await body(request)
        current = deliveries.worker(id_).sub.spec.model_dump()
        return JSONResponse(await deliveries.update(id_, spec_from({**current, **patch})))

    async def rotate(request: Request) -> Response:
        await admin_current(request)
        described, secret = await deliveries.rotate(request.path_params["id"])
        return JSONResponse({**described, "secret": secret}, headers={"Cache-Control": "no-store"})

    async def enable(request: Request) -> Response:
        await admin_current(request)
        options = await body(request, optional=True)
        skip = options.get("skip_backlog", False)
        if not isinstance(skip, bool):
            raise BadRequest("'skip_backlog' must be true or false", code="invalid_body", field="skip_backlog")
        return JSONResponse(await deliveries.enable(request.path_params["id"], skip_backlog=skip))

    async def replay(request: Request) -> Response:
        await admin_current(request)
        options = await body(request)
        unknown = sorted(set(options) - {"after_seq", "since"})
        if unknown:
            raise BadRequest(f"unknown field {unknown[0]!r}; give 'after_seq' or 'since'", code="invalid_body",
                             field=unknown[0])
        after_seq, since = options.get("after_seq"), options.get("since")
        if after_seq is not None and (not isinstance(after_seq, int) or isinstance(after_seq, bool)
                                      or not 0 <= after_seq <= MAX_SEQ):
            raise BadRequest("'after_seq' must be a seq (an integer, 0 or more)", code="invalid_body",
                             field="after_seq")
        when = None
        if since is not None:
            when = event_time({"time": since}, default=-1.0) if isinstance(since, str) else -1.0
            if when < 0:
                raise BadRequest("'since' must be an RFC 3339 time, like 2026-11-25T08:00:00Z", code="invalid_body",
                                 field="since")
        result = await deliveries.replay(request.path_params["id"], after_seq=after_seq, since=when)
        return JSONResponse(result, status_code=202)

    async def log(request: Request) -> Response:
        admin(request)
        status = request.query_params.get("status") or None
        if status is not None and status not in OUTCOMES:
            raise BadRequest(f"'status' must be one of {', '.join(OUTCOMES)}", code="invalid_parameter",
                             field="status")
        after = int_param(request, "after", default=0, low=0, high=MAX_SEQ)
        limit = int_param(request, "limit", default=LOG_LIMIT_DEFAULT, low=1, high=LOG_LIMIT_MAX)
        assert after is not None and limit is not None
        attempts = await deliveries.attempts(request.path_params["id"], outcome=status, after=after, limit=limit)
        return JSONResponse({"deliveries": attempts, "next": attempts[-1]["id"] if attempts else after})

    async def retry(request: Request) -> Response:
        await admin_current(request)
        return JSONResponse(await deliveries.retry(request.path_params["id"]), status_code=202)

    return [
        described(Route("/v1/subscriptions", collection, methods=["GET", "POST"]), get=operation(
            "List subscriptions", tag="subscriptions",
            responses={200: ok({"type": "object", "required": ["subscriptions", "count"], "properties": {
                "subscriptions": {"type": "array", "items": ref("Subscription")}, "count": {"type": "integer"}}},
                "Every subscription")}),
            post=operation(
            "Create a subscription", tag="subscriptions", errors=[400, 409, 413, 415, 422],
            description="The answer holds the signing secret, shown this once.", body=json_body(ref("SubscriptionSpec")),
            responses={201: ok(ref("SubscriptionWithSecret"), "Created", headers={"Location": "its URL"})})),
        described(Route("/v1/subscriptions/{id}", one, methods=["GET", "PATCH", "DELETE"]), get=operation(
            "Get a subscription", tag="subscriptions", errors=[404],
            responses={200: ok(ref("Subscription"), "The subscription")}),
            patch=operation(
            "Change a subscription", tag="subscriptions", errors=[400, 404, 409, 413, 415, 422],
            description="The fields given replace the subscription's; a subscription from the config file is "
                        "read-only (409 managed_by_config).",
            body=json_body({"type": "object", "description": "Any fields of SubscriptionSpec"}),
            responses={200: ok(ref("Subscription"), "Changed")}),
            delete=operation(
            "Delete a subscription", tag="subscriptions", errors=[404, 409],
            responses={204: ok(None, "Deleted")})),
        described(Route("/v1/subscriptions/{id}/rotate-secret", rotate, methods=["POST"]), post=operation(
            "Rotate a subscription's secret", tag="subscriptions", errors=[404, 409],
            description="A new secret (shown once); the old one keeps signing beside it for `secret_overlap`.",
            responses={200: ok(ref("SubscriptionWithSecret"), "Rotated")})),
        described(Route("/v1/subscriptions/{id}/enable", enable, methods=["POST"]), post=operation(
            "Enable a subscription", tag="subscriptions", errors=[400, 404, 409, 413, 415],
            body=json_body({"type": "object", "properties": {"skip_backlog": {"type": "boolean"}}}, required=False),
            responses={200: ok(ref("Subscription"), "Enabled")})),
        described(Route("/v1/subscriptions/{id}/replay", replay, methods=["POST"]), post=operation(
            "Replay events to a subscription", tag="subscriptions", errors=[400, 404, 409, 413, 415],
            body=json_body({"type": "object", "additionalProperties": False, "properties": {
                "after_seq": {"type": "integer", "minimum": 0, "maximum": MAX_SEQ}, "since": _TIME}}),
            responses={202: ok({"type": "object", "required": ["subscription", "from_seq", "through_seq"],
                                "properties": {"subscription": {"type": "string"}, "from_seq": {"type": "integer"},
                                               "through_seq": {"type": "integer"}}}, "Replay scheduled")})),
        described(Route("/v1/subscriptions/{id}/deliveries", log, methods=["GET"]), get=operation(
            "A subscription's delivery log", tag="subscriptions", errors=[400, 404],
            parameters=[
                query("status", {"enum": list(OUTCOMES)}, "Only attempts with this outcome"),
                query("after", {"type": "integer", "minimum": 0, "maximum": MAX_SEQ}, "Attempts after this id"),
                query("limit", {"type": "integer", "minimum": 1, "maximum": LOG_LIMIT_MAX},
                      f"Page size (default {LOG_LIMIT_DEFAULT})"),
            ],
            responses={200: ok({"type": "object", "required": ["deliveries", "next"], "properties": {
                "deliveries": {"type": "array", "items": ref("DeliveryAttempt")}, "next": {"type": "integer"}}},
                "Attempts, oldest first")})),
        described(Route("/v1/deliveries/{id}/retry", retry, methods=["POST"]), post=operation(
            "Retry a delivery now", tag="subscriptions", errors=[404, 409],
            responses={202: ok({"type": "object", "required": ["delivery", "state"], "properties": {
                "delivery": {"type": "string"}, "state": {"type": "string"}}}, "Retry scheduled")})),
    ]


_TIME = {"type": "string", "description": "RFC 3339, e.g. 2026-11-25T08:00:00Z"}


async def _has_body(request: Request) -> bool:
    length = request.headers.get("content-length")
    if length is not None:
        return length.strip() not in ("", "0")
    return "transfer-encoding" in request.headers
