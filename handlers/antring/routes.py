"""AntRing's HTTP surface on the hub: click-to-call and recordings.

- `POST /v1/calls/click-to-call` `{"number", "agent"}` rings the agent's own SIP device, which
  then calls the number (a phone number in any form, or an internal extension). Sent once, never
  retried (a retry would ring twice); every attempt is recorded as an `action.click_to_call`
  event with its outcome.
- `GET /v1/recordings/{media}` redirects to a freshly signed AntRing URL, so subscribers never
  hold the app secret and never get a link that has already expired. An agent may fetch only
  the recordings of its own calls.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from handlers.antring.client import AntRingClient, AntRingError, DeviceOffline, dial_number
from handlers.antring.config import AntRingConfig
from hub.events import hub_event
from hub.exceptions import Forbidden, HubError, InvalidEvent, NotFound
from hub.http.api import JSONResponse, hub_of, parse_json, read_body, require_json
from hub.matcher import TypeFilter

logger = logging.getLogger("callhub.antring")

__all__ = ["routes"]

#: Largest click-to-call request body.
MAX_BODY = 4096
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


def routes(config: AntRingConfig, client: AntRingClient) -> list[Route]:
    async def click_to_call(request: Request) -> Response:
        hub = hub_of(request)
        principal = hub.authenticate(request)
        require_json(request)
        body = parse_json(await read_body(request, MAX_BODY))
        if not isinstance(body, dict):
            raise InvalidEvent("send a JSON object: {\"number\": ..., \"agent\": ...}")
        agent = body.get("agent")
        if not isinstance(agent, str) or not agent:
            raise InvalidEvent("'agent' is required", field="agent")
        if principal.role != "admin" and principal.agent != agent:
            raise Forbidden("only an admin, or the agent themselves, may ring this agent's device")
        device = config.agents.get(agent)
        if device is None:
            raise NotFound(f"no SIP device configured for agent {agent!r} ([antring.agents.{agent}])")
        number = dial_number(body.get("number"), max_extension_digits=config.internal_max_digits)
        record: dict[str, Any] = {"agent": agent, "number": number, "requested_by": principal.name}
        status, outcome = 200, "ringing"
        result: dict[str, Any]
        try:
            vendor = await client.click_to_call(number, device.sip_user, device.sip_password)
            result = {"outcome": outcome, "agent": agent, "number": number, "vendor": vendor}
        except DeviceOffline as exc:
            status, outcome = 409, "device_offline"
            record["vendor_message"] = exc.message
            await _record(request, {**record, "outcome": outcome})
            raise DeviceOfflineConflict(
                f"{agent}'s device is offline (not registered): {exc.message}", agent=agent
            ) from None
        except AntRingError as exc:
            outcome = "failed"
            await _record(request, {**record, "outcome": outcome, "vendor_message": exc.message})
            raise VendorFailed(f"AntRing did not place the call: {exc.message}") from None
        await _record(request, {**record, "outcome": outcome})
        return JSONResponse(result, status_code=status)

    async def recording(request: Request) -> Response:
        hub = hub_of(request)
        principal = hub.authenticate(request, allow_query=True)
        media = request.path_params["media"]
        if principal.role != "admin":
            # Only calls AntRing itself reported (clients cannot publish as `antring`), that the
            # credential may see: its agent's, of types its `types` claim allows.
            visible = TypeFilter((), principal.types)
            found = await hub.backend.find(
                path="recording", value=media, agent=principal.agent, limit=RECORDING_LOOKUP_LIMIT, source=SOURCE
            )
            if not any(visible.matches(event.type) for event in found):
                # Same answer whether it exists or belongs to someone else: no probing.
                raise NotFound("no such recording among your calls")
        try:
            url = await client.play_recording(media)
        except AntRingError as exc:
            raise VendorFailed(f"AntRing could not sign the recording URL: {exc.message}") from None
        return RedirectResponse(url, status_code=307, headers={"Cache-Control": "no-store"})

    return [
        Route("/v1/calls/click-to-call", click_to_call, methods=["POST"]),
        Route("/v1/recordings/{media:path}", recording, methods=["GET"]),
    ]


async def _record(request: Request, data: dict[str, Any]) -> None:
    """The attempt as an event, so the agent's UI and dashboards see it live."""
    event = hub_event("action.click_to_call", data, subject=data["agent"])
    event["source"] = "antring"
    try:
        await hub_of(request).publish(event, default_source="antring")
    except HubError as exc:
        logger.warning("click-to-call attempt not recorded: %s", exc.message)
