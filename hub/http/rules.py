"""`/v1/rules`: list with counters, reload (keeps the old rules on error), and a dry run."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hub.events import prepare_event
from hub.exceptions import HubError
from hub.requests import JSONResponse, parse_json, read_body, require_json
from hub.service import Hub

__all__ = ["routes", "InvalidRules"]


class InvalidRules(HubError):
    status_code = 422
    code = "invalid_rules"


def routes(hub: Hub) -> list[Route]:
    authenticate, rules, max_body = hub.authenticate, hub.rules, hub.config.server.max_body

    async def list_rules(request: Request) -> Response:
        authenticate(request).require("admin")
        return JSONResponse({"rules": rules.describe(), "last_load": rules.status})

    async def reload_rules(request: Request) -> Response:
        authenticate(request).require("admin")
        problems = rules.load()
        if problems:
            raise InvalidRules(
                "the rules were not reloaded; the previous rules stay in force",
                problems=[{"file": p.file, "rule": p.rule, "key": p.key, "message": p.message} for p in problems],
            )
        return JSONResponse({"loaded": len(rules.current.rules)})

    async def test_rules(request: Request) -> Response:
        """Which rules would fire for the posted event, and the exact action requests; nothing is sent."""
        authenticate(request).require("admin")
        require_json(request)
        event = prepare_event(parse_json(await read_body(request, max_body)))
        fired: list[dict[str, Any]] = [
            {"rule": f.rule.name, "actions": f.requests, "errors": f.errors} for f in rules.dry_run(event)
        ]
        return JSONResponse({"fired": fired, "evaluated": len(rules.candidates(event["type"]))})

    return [
        Route("/v1/rules", list_rules, methods=["GET"]),
        Route("/v1/rules/reload", reload_rules, methods=["POST"]),
        Route("/v1/rules/test", test_rules, methods=["POST"]),
    ]
