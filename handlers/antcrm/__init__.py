"""AntCRM (AntBuddy's CRM, "apiring"): tickets, leads, and the screen-pop customer lookup.

`register` validates `[antcrm]` and builds the API client and the screen-pop lookup (both
closed when the hub stops). Nothing acts on events yet: the rules engine's actions
(`antcrm.create_ticket`, `antcrm.upsert_contact`) and the screen-pop enrichment reach them
through `services(registry)` (or `register`'s answer).
"""

from __future__ import annotations

from dataclasses import dataclass

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
from hub.plugins import Registry

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
                          phone_format=config.phone_format)
    lookup = CustomerLookup(client, timeout=config.lookup_timeout, ttl=config.cache_ttl,
                            negative_ttl=config.negative_cache_ttl, max_entries=config.cache_max_entries)
    return AntCRM(config, client, lookup)


def register(registry: Registry) -> AntCRM | None:
    config = registry.section("antcrm", AntCRMConfig)
    if config is None or not config.enabled:
        return None
    antcrm = build(config)
    registry.add_cleanup(antcrm.aclose)
    registry.provide(PROVIDED_AS, antcrm)
    return antcrm


def services(registry: Registry) -> AntCRM | None:
    """The `AntCRM` that `register` built for this registry, if `[antcrm]` is on."""
    antcrm = registry.provided.get(PROVIDED_AS)
    return antcrm if isinstance(antcrm, AntCRM) else None
