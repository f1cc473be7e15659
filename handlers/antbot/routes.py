"""AntBot's admin endpoints on the hub, each running its rule action (journaled and reported as
`action.succeeded` / `action.failed` with `requested_by`, exactly as a rule's):

    POST /v1/antbot/contacts                     {"phonebook", "phone_number" | "phone_numbers", ...}
    POST /v1/antbot/campaigns/{campaign_id}/status   {"status": "start" | "pause" | "abort" | "end"}
    POST /v1/antbot/reminders                    {"phone_number", "at" | "delay", "title"?, ...}

Answers: 200 with the action's result; 422 for bad input (checked before anything is sent);
409 `do_not_call` when every number is on a do-not-call list; 404 when AntBot does not know the
campaign or phonebook; 502/503 when AntBot refused or
failed (with `maybe_sent` when the request may have reached it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from handlers.antbot.actions import (
    ADD_CONTACT,
    CAMPAIGN_STATUS,
    REMINDER_CALL,
    DoNotCall,
    parse_campaign_status,
    parse_contacts,
)
from hub.plugin import (
    HubError,
    InvalidEvent,
    JSONResponse,
    NotFound,
    PluginContext,
    described,
    json_body,
    ok,
    operation,
    parse_json,
    read_body,
    require_json,
)

__all__ = ["routes", "MAX_BODY"]

#: Largest request body (a bulk add of 10,000 numbers fits).
MAX_BODY = 512 * 1024


class AntBotFailed(HubError):
    """AntBot refused or failed the request the action sent."""

    status_code = 502
    code = "antbot_failed"


class AntBotDown(AntBotFailed):
    status_code = 503
    code = "antbot_unavailable"


def routes(context: PluginContext, *, check_reminder: Callable[[dict[str, Any]], object] | None) -> list[Route]:
    authenticate, run_action = context.authenticate, context.run_action

    async def admin_request(request: Request) -> tuple[str, dict[str, Any]]:
        """Who asked (an admin credential only) and the JSON object they sent."""
        principal = authenticate(request)
        principal.require("admin")
        require_json(request)
        body = parse_json(await read_body(request, MAX_BODY))
        if not isinstance(body, dict):
            raise InvalidEvent("send a JSON object")
        return principal.name, body

    async def run(type_: str, params: dict[str, Any], requested_by: str) -> Response:
        outcome = await run_action(type_, params, requested_by=requested_by)
        if outcome.state == "succeeded":
            return JSONResponse(outcome.result)
        details = outcome.result if isinstance(outcome.result, dict) else {}
        extra = {k: v for k, v in details.items() if k in ("refused", "maybe_sent", "event_id")}
        if outcome.code == DoNotCall.code:
            raise DoNotCall(outcome.error or "on a do-not-call list", **extra)
        if outcome.code in ("invalid_event", "invalid_phone_number"):
            raise InvalidEvent(outcome.error or "invalid request")
        if details.get("status") == 404:  # AntBot does not know it (a campaign id, a phonebook): ours to say
            raise NotFound(f"AntBot: {outcome.error}")
        error = AntBotDown if outcome.code in ("antbot_unavailable", "timeout") else AntBotFailed
        raise error(f"AntBot: {outcome.error}", **extra)

    async def contacts(request: Request) -> Response:
        requested_by, body = await admin_request(request)
        parse_contacts(body)
        return await run(ADD_CONTACT, body, requested_by)

    async def campaign_status(request: Request) -> Response:
        requested_by, body = await admin_request(request)
        params = {"campaign_id": request.path_params["campaign_id"], "status": body.get("status")}
        parse_campaign_status(params)
        return await run(CAMPAIGN_STATUS, params, requested_by)

    async def reminders(request: Request) -> Response:
        requested_by, body = await admin_request(request)
        if check_reminder is None:
            raise InvalidEvent("reminder calls are off: set [antbot.reminders] calendar and creator")
        check_reminder(body)
        return await run(REMINDER_CALL, body, requested_by)

    return [
        described(Route("/v1/antbot/contacts", contacts, methods=["POST"]), post=ADD_CONTACTS),
        described(Route("/v1/antbot/campaigns/{campaign_id}/status", campaign_status, methods=["POST"]),
                  post=SET_STATUS),
        described(Route("/v1/antbot/reminders", reminders, methods=["POST"]), post=REMINDERS),
    ]


_ERRORS = [400, 404, 409, 413, 415, 422, 502, 503]
_RESULT = ok({"type": "object", "description": "The action's result (what AntBot answered, as the action reports it)"},
             "Done")
ADD_CONTACTS = operation(
    "Add numbers to an AntBot phonebook", tag="antbot", errors=_ERRORS,
    description="Runs `antbot.add_contact` (journaled and reported like a rule's action). A number on a do-not-call "
                "list is never added: 409 `do_not_call` when every number is on one; a bulk add lists the refused "
                "ones. docs/ANTBOT.md.",
    body=json_body({"type": "object", "required": ["phonebook"], "properties": {
        "phonebook": {"type": ["string", "integer"]}, "phone_number": {"type": "string"},
        "phone_numbers": {"type": "array", "items": {"type": "string"}}}}),
    responses={200: _RESULT},
)
SET_STATUS = operation(
    "Start, pause, abort or end an AntBot campaign", tag="antbot", errors=_ERRORS,
    description="Runs `antbot.campaign_status`. docs/ANTBOT.md.",
    body=json_body({"type": "object", "required": ["status"], "properties": {
        "status": {"enum": ["start", "pause", "abort", "end"]}}}),
    responses={200: _RESULT},
)
REMINDERS = operation(
    "Create an AntBot reminder call", tag="antbot", errors=_ERRORS,
    description="Runs `antbot.reminder_call`: the calendar event, then the alarm, for a number and a time (`at`, "
                "ISO 8601, or `delay`). Off (422) unless `[antbot.reminders]` names a calendar and a creator.",
    body=json_body({"type": "object", "required": ["phone_number"], "properties": {
        "phone_number": {"type": "string"}, "at": {"type": "string"}, "delay": {"type": ["string", "number"]},
        "title": {"type": "string"}}}),
    responses={200: _RESULT},
)
