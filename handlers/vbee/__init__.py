"""Vbee AICall: AI voice campaigns. Results arrive on a webhook; contacts are added over its API.

`register` wires, from `[vbee]`: the built-in webhook source `vbee`
(`POST /v1/webhooks/vbee`, token-verified, normalised by `normalize.Normalizer`), the API
client (closed when the hub stops) and `POST /v1/campaigns/{campaign_id}/contacts`.
"""

from __future__ import annotations

from typing import Any

from handlers.vbee.client import VbeeAuthError, VbeeClient, VbeeError, VbeeUnavailable
from handlers.vbee.config import VbeeConfig
from handlers.vbee.normalize import SOURCE, Normalizer
from handlers.vbee.routes import routes
from hub.plugin import (
    ActionContext,
    ActionSpec,
    Executor,
    InvalidEvent,
    OnlineCheck,
    PhoneForm,
    Registry,
    Source,
    parse_phone,
    public_params,
    token_verifier,
)

__all__ = ["VbeeConfig", "register"]

ADD_CONTACTS = "vbee.add_contacts"
#: Rule actions, with the parameters each needs.
ACTIONS: dict[str, tuple[str, ...]] = {ADD_CONTACTS: ("campaign_id", "phone_number")}


def add_contacts_action(client: VbeeClient, phone_format: PhoneForm) -> Executor:
    """`vbee.add_contacts` (`campaign_id`, `phone_number`, personalization tags such as `ho_ten`).

    Not idempotent: Vbee would call a contact added twice twice, so after a crash mid-request the
    runner reports it `unknown` rather than sending it again.
    """

    async def run(params: dict[str, Any], context: ActionContext) -> dict[str, Any]:
        fields = dict(params)
        campaign_id = fields.pop("campaign_id", None)
        if not isinstance(campaign_id, str) or not campaign_id:
            raise InvalidEvent("vbee.add_contacts needs campaign_id")
        number = parse_phone(fields.pop("phone_number", None), field="phone_number").formatted(phone_format)
        added = await client.add_contacts(campaign_id, [{"phone_number": number, **fields}])
        if not added:
            raise InvalidEvent(f"Vbee did not add {number} to campaign {campaign_id}")
        return {"campaign_id": campaign_id, "contacts": added}

    return run


#: The campaign `callhub check --online` names, with no contacts: Vbee authenticates the request
#: and then refuses it, adding nothing (Vbee's API has no read-only call).
CHECK_CAMPAIGN = "callhub-credentials-check"


def check_online(client: VbeeClient) -> OnlineCheck:
    async def check() -> str:
        try:
            await client.add_contacts(CHECK_CAMPAIGN, [])
        except (VbeeAuthError, VbeeUnavailable):
            raise
        except VbeeError as exc:  # refused after authenticating: the credentials are good
            return f"API key {client.api_key} accepted (an empty request refused as expected: {exc.vendor_code})"
        return f"API key {client.api_key} accepted"

    return check


def register(registry: Registry) -> None:
    config = registry.section("vbee", VbeeConfig)
    if config is None or not config.enabled:
        return
    registry.add_source(Source(SOURCE, token_verifier(config.webhook_token), Normalizer(config), origin="[vbee]"))
    client: VbeeClient | None = None
    if config.api_key and config.api_secret:
        client = VbeeClient(config.base_url, config.api_key, config.api_secret, timeout=config.request_timeout)
        client.report_to(registry.context.vendor_calls)
        registry.add_cleanup(client.aclose)
        registry.add_check("vbee", check_online(client))
        registry.add_action(ActionSpec(ADD_CONTACTS, add_contacts_action(client, config.phone_format),
                                       idempotent=False, group="vbee", required=ACTIONS[ADD_CONTACTS],
                                       describe=public_params("campaign_id", "phone_number")))
    for route in routes(client, registry.context, batch_size=config.batch_size, phone_format=config.phone_format):
        registry.add_route(route)
