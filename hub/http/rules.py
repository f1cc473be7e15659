"""`/v1/rules`: list with counters, reload (keeps the old rules on error), and a dry run."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hub.events import prepare_event
from hub.exceptions import HubError
from hub.http.api import JSONResponse, hub_of, parse_json, read_body, require_json

__all__ = ["routes"]


class InvalidRules(HubError):
    status_code = 422
    code = "invalid_rules"


async def list_rules(request: Request) -> Response:
    hub = hub_of(request)
    hub.authenticate(request).require("admin")
    rules = hub.rules.rules if hub.rules else []
    return JSONResponse({"rules": [r.describe() for r in rules], "last_load": hub.rules_status})


async def reload_rules(request: Request) -> Response:
    hub = hub_of(request)
    hub.authenticate(request).require("admin")
    problems = hub.load_rules()
    if problems:
        raise InvalidRules(
            "the rules were not reloaded; the previous rules stay in force",
            problems=[{"file": p.file, "rule": p.rule, "key": p.key, "message": p.message} for p in problems],
        )
    return JSONResponse({"loaded": len(hub.rules.rules) if hub.rules else 0})


async def test_rules(request: Request) -> Response:
    """Which rules would fire for the posted event, and the exact action requests; nothing is sent."""
    hub = hub_of(request)
    hub.authenticate(request).require("admin")
    require_json(request)
    event = prepare_event(parse_json(await read_body(request, hub.config.server.max_body)))
    firings = hub.rules.evaluate(event, dry_run=True) if hub.rules else []
    fired: list[dict[str, Any]] = [
        {"rule": f.rule.name, "actions": f.requests, "errors": f.errors} for f in firings
    ]
    return JSONResponse({"fired": fired, "evaluated": len(hub.rules.candidates(event["type"])) if hub.rules else 0})


def routes() -> list[Route]:
    return [
        Route("/v1/rules", list_rules, methods=["GET"]),
        Route("/v1/rules/reload", reload_rules, methods=["POST"]),
        Route("/v1/rules/test", test_rules, methods=["POST"]),
    ]
