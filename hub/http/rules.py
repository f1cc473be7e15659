"""`/v1/rules`: list with counters, reload (keeps the old rules on error), and a dry run."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hub.apidoc import described, json_body, ok, operation, ref
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
        described(Route("/v1/rules", list_rules, methods=["GET"]), get=operation(
            "List rules", tag="rules", description="The rules in force with their counters, and the last load.",
            responses={200: ok({"type": "object", "required": ["rules", "last_load"], "properties": {
                "rules": {"type": "array", "items": ref("Rule")}, "last_load": {"type": "object"}}}, "The rules")})),
        described(Route("/v1/rules/reload", reload_rules, methods=["POST"]), post=operation(
            "Reload rules", tag="rules", errors=[422],
            description="Read the rules again (as SIGHUP does); on any problem the previous rules stay in force "
                        "and the answer lists the problems (422 invalid_rules).",
            responses={200: ok({"type": "object", "required": ["loaded"],
                                "properties": {"loaded": {"type": "integer"}}}, "Reloaded")})),
        described(Route("/v1/rules/test", test_rules, methods=["POST"]), post=operation(
            "Dry-run the rules", tag="rules", errors=[400, 413, 415, 422],
            description="Which rules would fire for the posted event, with the exact action requests; nothing runs.",
            body=json_body(ref("NewEvent")),
            responses={200: ok({"type": "object", "required": ["fired", "evaluated"], "properties": {
                "fired": {"type": "array", "items": {"type": "object"}}, "evaluated": {"type": "integer"}}},
                "What would fire")})),
    ]
