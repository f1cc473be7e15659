"""AntRing's HTTP surface on the hub: click-to-call and recordings.

- `POST /v1/calls/click-to-call` `{"number", "agent"}` rings the agent's own SIP device, which
  then calls the number (a phone number in any form, or an internal extension). It runs the
  `antring.click_to_call` action through the hub's action runner, as a rule would: journaled,
  sent once and never retried (a retry would ring twice), and reported as `action.succeeded` or
  `action.failed` (with `requested_by`), which the agent's UI and dashboards see live.
- `GET /v1/recordings/{media}` redirects to a freshly signed AntRing URL, so subscribers never
  hold the app secret and never get a link that has already expired. An agent may fetch only
  the recordings of its own calls.
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from handlers.antring.client import AntRingClient, AntRingError, dial_number
from handlers.antring.config import AntRingConfig
from hub.plugin import (
    ANY_ROLE,
    Forbidden,
    HubError,
    InvalidEvent,
    JSONResponse,
    NotFound,
    PluginContext,
    TypeFilter,
    described,
    json_body,
    ok,
    operation,
    parse_json,
    read_body,
    require_json,
)

logger = logging.getLogger("callhub.antring")

__all__ = ["routes", "CLICK_TO_CALL"]

CLICK_TO_CALL = "antring.click_to_call"
#: Largest click-to-call request body.
MAX_BODY = 4096
#: AntRing's answers to `play_recording` for a media name it does not know (a 404, not a vendor failure).
UNKNOWN_MEDIA = frozenset({"MEDIA_NOT_FOUND", "MEDIA_MISSING"})
#: The source of the calls whose recordings may be fetched.
SOURCE = "antring"
#: Recordings are looked up among this many newest events that name them.
RECORDING_LOOKUP_LIMIT = 8


class DeviceOfflineConflict(HubError):
    status_code = 409
    code = "device_offline"


class VendorFailed(HubError):
    status_code = 502
    code = "upstream_error"


def routes(config: AntRingConfig, client: AntRingClient, context: PluginContext) -> list[Route]:
    authenticate, run_action, store = context.authenticate, context.run_action, context.store

    async def click_to_call(request: Request) -> Response:
        principal = authenticate(request)
        require_json(request)
        body = parse_json(await read_body(request, MAX_BODY))
        if not isinstance(body, dict):
            raise InvalidEvent("send a JSON object: {\"number\": ..., \"agent\": ...}")
        agent = body.get("agent")
        if not isinstance(agent, str) or not agent:
            raise InvalidEvent("'agent' is required", field="agent")
        if principal.role != "admin" and principal.agent != agent:
            raise Forbidden("only an admin, or the agent themselves, may ring this agent's device")
        if agent not in config.agents:
            raise NotFound(f"no SIP device configured for agent {agent!r} ([antring.agents.{agent}])")
        number = dial_number(body.get("number"), max_extension_digits=config.internal_max_digits)
        outcome = await run_action(CLICK_TO_CALL, {"agent": agent, "number": number}, requested_by=principal.name,
                                   agent=agent)
        if outcome.state == "succeeded":
            return JSONResponse(outcome.result, status_code=200)
        if outcome.code == "device_offline":
            raise DeviceOfflineConflict(f"{agent}'s device is offline (not registered): {outcome.error}", agent=agent)
        raise VendorFailed(f"AntRing did not place the call: {outcome.error}")

    async def recording(request: Request) -> Response:
        principal = authenticate(request, allow_query=True)
        media = request.path_params["media"]
        if principal.role != "admin":
            # Only calls AntRing itself reported (clients cannot publish as `antring`), that the
            # credential may see: its agent's, of types its `types` claim allows.
            visible = TypeFilter((), principal.types)
            found = await store.find("recording", media, agent=principal.agent, source=SOURCE,
                                     limit=RECORDING_LOOKUP_LIMIT)
            if not any(visible.matches(event.type) for event in found):
                # Same answer whether it exists or belongs to someone else: no probing.
                raise NotFound("no such recording among your calls")
        try:
            url = await client.play_recording(media)
        except AntRingError as exc:
            if exc.vendor_message in UNKNOWN_MEDIA:
                # AntRing has no such recording: the caller asked for something that is not there.
                raise NotFound("AntRing has no such recording") from None
            raise VendorFailed(f"AntRing could not sign the recording URL: {exc.message}") from None
        return RedirectResponse(url, status_code=307, headers={"Cache-Control": "no-store"})

    return [
        described(Route("/v1/calls/click-to-call", click_to_call, methods=["POST"]), post=CLICK_TO_CALL_OPERATION),
        described(Route("/v1/recordings/{media:path}", recording, methods=["GET"]), get=RECORDING_OPERATION),
    ]


CLICK_TO_CALL_OPERATION = operation(
    "Click-to-call", tag="antring", roles=ANY_ROLE, jwt=True, errors=[400, 403, 404, 409, 413, 415, 422, 502],
    description="Ring the agent's SIP device, then dial the number (admin, or the agent themselves). Not "
                "repeated on failure: AntRing cannot tell a retry from a second ring. docs/ANTRING.md.",
    body=json_body({"type": "object", "required": ["agent", "number"], "properties": {
        "agent": {"type": "string", "minLength": 1}, "number": {"type": "string"}}}),
    responses={200: ok({"type": "object"}, "Ringing: the agent's device rings first")},
)
RECORDING_OPERATION = operation(
    "A call recording", tag="antring", roles=ANY_ROLE, jwt=True, query_token=True, errors=[404, 502],
    description="Redirects (307) to AntRing's signed URL for the recording; a subscriber only for calls it may see.",
    responses={307: ok(None, "To the recording", headers={"Location": "AntRing's signed URL"})},
)
