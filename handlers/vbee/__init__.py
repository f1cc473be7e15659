"""Vbee AICall: AI voice campaigns. Results arrive on a webhook; contacts are added over its API.

`register` wires, from `[vbee]`: the built-in webhook source `vbee`
(`POST /v1/webhooks/vbee`, token-verified, normalised by `normalize.Normalizer`), the API
client (closed when the hub stops) and `POST /v1/campaigns/{campaign_id}/contacts`.
"""

from __future__ import annotations

from handlers.vbee.client import VbeeClient
from handlers.vbee.config import VbeeConfig
from handlers.vbee.normalize import SOURCE, Normalizer
from handlers.vbee.routes import routes
from hub.plugins import Registry
from hub.webhooks_in import Source, token_verifier

__all__ = ["VbeeConfig", "register"]


def register(registry: Registry) -> None:
    config = registry.section("vbee", VbeeConfig)
    if config is None or not config.enabled:
        return
    registry.add_source(Source(SOURCE, token_verifier(config.webhook_token), Normalizer(config), origin="[vbee]"))
    client: VbeeClient | None = None
    if config.api_key and config.api_secret:
        client = VbeeClient(config.base_url, config.api_key, config.api_secret, timeout=config.request_timeout)
        registry.add_cleanup(client.aclose)
    for route in routes(client, batch_size=config.batch_size):
        registry.add_route(route)
