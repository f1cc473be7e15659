"""AntCRM (AntBuddy's CRM, "apiring"): tickets, leads, and the screen-pop customer lookup.

`register` validates `[antcrm]` and builds the API client and the screen-pop lookup (both
closed when the hub stops). Nothing acts on events yet: the rules engine's actions
(`antcrm.create_ticket`, `antcrm.upsert_contact`) and the screen-pop enrichment reach them
through `services(registry)` (or `register`'s answer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from handlers.antcrm.client import (
    AntCRMAuthError,
    AntCRMClient,
    AntCRMError,
    AntCRMRejected,
    AntCRMUnavailable,
    creation_retry,
    stable_key,
)
from handlers.antcrm.config import AntCRMConfig
from handlers.antcrm.lookup import CustomerLookup
from handlers.antcrm.screenpop import screen_pop
from hub.plugin import ActionContext, ActionSpec, Executor, InvalidEvent, OnlineCheck, Registry, public_params

__all__ = [
    "AntCRM",
    "AntCRMAuthError",
    "AntCRMClient",
    "AntCRMConfig",
    "AntCRMError",
    "AntCRMRejected",
    "AntCRMUnavailable",
    "CustomerLookup",
    "build",
    "register",
    "services",
    "stable_key",
]

CREATE_TICKET = "antcrm.create_ticket"
UPSERT_CONTACT = "antcrm.upsert_contact"
#: Rule actions, with the parameters each needs.
ACTIONS: dict[str, tuple[str, ...]] = {CREATE_TICKET: ("title", "SLA", "contact"), UPSERT_CONTACT: ("phone", "name")}

#: The name under which `register` provides its `AntCRM` (read it with `services`).
PROVIDED_AS = "antcrm"


@dataclass(frozen=True, slots=True)
class AntCRM:
    """What `[antcrm]` builds: its config, the API client and the screen-pop lookup."""

    config: AntCRMConfig
    client: AntCRMClient
    lookup: CustomerLookup

    async def aclose(self) -> None:
        await self.lookup.aclose()
        await self.client.aclose()


def build(config: AntCRMConfig) -> AntCRM:
    """The client and lookup `config` describes (the caller closes them: `AntCRM.aclose`)."""
    client = AntCRMClient(config.base_url, config.api_key, timeout=config.request_timeout,
                          retry=creation_retry(config.retry_for), max_concurrency=config.max_concurrency,
                          phone_format=config.phone_format, lookup_forms=config.lookup_forms,
                          lookup_contact_types=config.lookup_contact_types)
    lookup = CustomerLookup(client, timeout=config.lookup_timeout, ttl=config.cache_ttl,
                            negative_ttl=config.negative_cache_ttl, max_entries=config.cache_max_entries)
    return AntCRM(config, client, lookup)


def create_ticket_action(client: AntCRMClient) -> Executor:
    """`antcrm.create_ticket` (`title`, `SLA`, `contact`, `priority`, `summary`, `cusFields`, …).

    `ticketIdApiRing` is derived from the rule, the event and the action's place, so however
    often it is sent (retries, a restart mid-request) AntCRM keeps one ticket: idempotent.
    """

    async def run(params: dict[str, Any], context: ActionContext) -> dict[str, Any]:
        fields = dict(params)
        title, sla, contact = fields.pop("title", None), fields.pop("SLA", None), fields.pop("contact", None)
        if not isinstance(title, str) or not isinstance(sla, str) or not isinstance(contact, dict):
            raise InvalidEvent("antcrm.create_ticket needs title, SLA and contact")
        key = stable_key(context.key)
        answer = await client.create_ticket(
            title, sla, contact, ticket_id_apiring=key, priority=fields.pop("priority", None),
            summary=fields.pop("summary", None), cus_fields=fields.pop("cusFields", None), **fields,
        )
        return {"ticketIdApiRing": key, **answer}

    return run


def upsert_contact_action(client: AntCRMClient) -> Executor:
    """`antcrm.upsert_contact` (`phone`, `name`, …): a lead for an unknown caller; idempotent by number."""

    async def run(params: dict[str, Any], context: ActionContext) -> dict[str, Any]:
        fields = dict(params)
        phone, name = fields.pop("phone", None), fields.pop("name", None)
        if not isinstance(phone, str) or not isinstance(name, str):
            raise InvalidEvent("antcrm.upsert_contact needs phone and name")
        return await client.upsert_contact(phone, name=name, customer_id_apiring=stable_key("contact", phone), **fields)

    return run


#: The number `callhub check --online` looks up: a read that needs the API key and changes nothing.
CHECK_NUMBER = "+84900000000"


def check_online(client: AntCRMClient) -> OnlineCheck:
    async def check() -> str:
        found = await client.find_contacts(CHECK_NUMBER)
        return f"API key accepted (contact look-up answered, {len(found)} found)"

    return check


def register(registry: Registry) -> AntCRM | None:
    config = registry.section("antcrm", AntCRMConfig)
    if config is None or not config.enabled:
        return None
    antcrm = build(config)
    antcrm.client.report_to(registry.context.vendor_calls)
    registry.add_cleanup(antcrm.aclose)
    registry.add_check("antcrm", check_online(antcrm.client))
    registry.claim_source("antcrm")  # the screen-pop's call.enriched
    registry.provide(PROVIDED_AS, antcrm)
    if config.screen_pop_types:
        registry.add_listener(tuple(config.screen_pop_types), screen_pop(registry.context.publish, registry.context.spawn, antcrm.lookup))
    registry.add_action(ActionSpec(CREATE_TICKET, create_ticket_action(antcrm.client),
                                   idempotent=True, group="antcrm", required=ACTIONS[CREATE_TICKET],
                                   describe=public_params("title", "SLA", "priority")))
    registry.add_action(ActionSpec(UPSERT_CONTACT, upsert_contact_action(antcrm.client),
                                   idempotent=True, group="antcrm", required=ACTIONS[UPSERT_CONTACT],
                                   describe=public_params("phone", "name")))
    return antcrm


def services(registry: Registry) -> AntCRM | None:
    """The `AntCRM` that `register` built for this registry, if `[antcrm]` is on."""
    antcrm = registry.provided.get(PROVIDED_AS)
    return antcrm if isinstance(antcrm, AntCRM) else None
