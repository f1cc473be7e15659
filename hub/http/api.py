"""Request/response endpoints: publish, history, subscribers, whoami, call figures, health, metrics."""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hub.apidoc import ANY_ROLE, described, json_body, ok, operation, query, ref
from hub.exceptions import Forbidden, HubError
from hub.live.fanout import GAP, gap_event
from hub.matcher import TypeFilter, parse_patterns
from hub.ops.metrics import CONTENT_TYPE_LATEST
from hub.requests import MAX_SEQ, JSONResponse, int_param, parse_json, read_body, require_json
from hub.service import Hub

__all__ = ["routes", "HISTORY_LIMIT_DEFAULT", "HISTORY_LIMIT_MAX"]

#: `GET /v1/events` page size: default and maximum.
HISTORY_LIMIT_DEFAULT = 100
HISTORY_LIMIT_MAX = 1000


def routes(hub: Hub) -> list[Route]:
    """The endpoints, each using only the parts it needs."""
    authenticate, publisher, store, fanout, calls = hub.authenticate, hub.publisher, hub.store, hub.fanout, hub.calls
    max_body = hub.config.server.max_body
    rejected = hub.metrics.events_rejected

    async def publish_event(request: Request) -> Response:
        received = time.perf_counter()
        try:
            principal = authenticate(request)
            principal.require("publisher", "admin")
            require_json(request)
            obj = parse_json(await read_body(request, max_body))
            result = await publisher.publish_from(principal, obj, received=received)
        except HubError as exc:
            rejected.labels(str(exc.status_code)).inc()
            raise
        content: dict[str, Any] = {"id": result.id, "seq": result.seq}
        if result.duplicate:
            content["duplicate"] = True
            return JSONResponse(content, status_code=200)
        return JSONResponse(content, status_code=202)

    async def list_events(request: Request) -> Response:
        principal = authenticate(request)
        after = int_param(request, "after", default=0, low=0, high=MAX_SEQ)
        limit = int_param(request, "limit", default=HISTORY_LIMIT_DEFAULT, low=1, high=HISTORY_LIMIT_MAX)
        assert after is not None and limit is not None
        types = TypeFilter(parse_patterns(request.query_params.get("types")), principal.types)
        page = await store.read(after, limit=limit, agent=principal.agent, types=types)
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
        authenticate(request).require("admin")
        subscribers = fanout.describe()
        return JSONResponse({"subscribers": subscribers, "count": len(subscribers), "head": fanout.head})

    async def whoami(request: Request) -> Response:
        """What the presented credential is: a UI learns from this whether to show one agent or all."""
        principal = authenticate(request)
        expires = principal.expires_at
        return JSONResponse({
            "name": principal.name,
            "role": principal.role,
            "agent": principal.agent,
            "types": list(principal.types),
            "expires_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires)) if expires is not None else None,
            "head": fanout.head,
        }, headers={"Cache-Control": "no-store"})

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        """Ready when the store takes writes. Upstreams are reported, not required: with a vendor's
        socket down the hub still stores, serves history and reconciles when it returns. `leases`:
        the exclusive work this process holds (the rest runs in another process sharing the store)."""
        await hub.check_ready()
        return JSONResponse({"status": "ready", "head": fanout.head, "upstreams": hub.upstreams.describe(),
                             "leases": dict(sorted(hub.leases.items()))})

    async def call_stats(request: Request) -> Response:
        """The call figures: admins and supervisors, i.e. credentials that see every agent's calls.
        An agent's credential (or one whose `types` leave out calls) sees only part of them: 403."""
        principal = authenticate(request)
        if principal.agent is not None or not TypeFilter((), principal.types).matches("call.ended"):
            raise Forbidden("call figures cover every agent's calls: they need a credential not scoped to "
                            "an agent or to other event types", code="scope")
        return JSONResponse(calls.snapshot(), headers={"Cache-Control": "no-store"})

    async def metrics(request: Request) -> Response:
        return Response(hub.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return [
        described(Route("/v1/events", events, methods=["GET", "POST"]), get=HISTORY, post=PUBLISH),
        described(Route("/v1/subscribers", list_subscribers, methods=["GET"]), get=operation(
            "List live subscribers", tag="streams", responses={200: ok(ref("Subscribers"), "Every live subscriber")})),
        described(Route("/v1/whoami", whoami, methods=["GET"]), get=operation(
            "Who the credential is", tag="events", roles=ANY_ROLE, jwt=True,
            description="The presented credential (header only), and the log's head.",
            responses={200: ok(ref("WhoAmI"), "The credential")})),
        described(Route("/v1/stats/calls", call_stats, methods=["GET"]), get=operation(
            "Call figures", tag="stats", roles=ANY_ROLE,
            description="Calls in progress now, and for the last 15 minutes and today (in the centre's time zone): "
                        "ended, answered, abandoned, service level. Credentials scoped to one agent, or to types "
                        "that leave out calls, get 403 scope.",
            errors=[403], responses={200: ok(ref("CallStats"), "The figures")})),
        described(Route("/healthz", healthz, methods=["GET"]), get=operation(
            "Liveness", tag="meta", roles=None, responses={200: ok(ref("Status"), "The process runs")})),
        described(Route("/readyz", readyz, methods=["GET"]), get=operation(
            "Readiness", tag="meta", roles=None, errors=[503],
            description="Ready when the store can start a write transaction now; upstreams are reported.",
            responses={200: ok(ref("Ready"), "Ready")})),
        described(Route("/metrics", metrics, methods=["GET"]), get=operation(
            "Prometheus metrics", tag="meta", roles=None,
            responses={200: ok({"type": "string"}, "Prometheus text exposition", media_type="text/plain")})),
    ]


PUBLISH = operation(
    "Publish an event", tag="events", roles=("publisher", "admin"),
    description="Stored once the commit is on disk (202); a (source, id) already stored answers 200 with "
                "`duplicate` and the original seq. Reserved sources (the hub's, webhook sources', vendors') are "
                "refused (403 reserved_source); an agent-scoped key publishes only for its agent (403 agent_scope).",
    body=json_body(ref("NewEvent"), media_types=("application/json", "application/cloudevents+json")),
    responses={202: ok(ref("Published"), "Stored"), 200: ok(ref("Published"), "Already stored (duplicate)")},
    errors=[400, 403, 413, 415, 422, 503],
)
HISTORY = operation(
    "Read history", tag="events", roles=ANY_ROLE, jwt=True,
    description="Stored events, oldest first, scoped like the streams. Pass `next` as the next `after`; an empty "
                "page is the head. A page may start with `hub.gap` when `after` is older than retention kept.",
    parameters=[
        query("after", {"type": "integer", "minimum": 0, "maximum": MAX_SEQ}, "Events after this seq (default 0)"),
        query("limit", {"type": "integer", "minimum": 1, "maximum": HISTORY_LIMIT_MAX},
              f"Page size (default {HISTORY_LIMIT_DEFAULT})"),
        query("types", {"type": "string"}, "Comma-separated type patterns, e.g. `call.*,campaign.*`"),
    ],
    responses={200: ok(ref("EventsPage"), "A page of events")},
    errors=[400],
)
