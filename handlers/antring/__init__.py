"""AntRing (AntBuddy call centre): voice token, call-signal socket, click-to-call, recordings.

`register` wires, from `[antring]`: the HTTP client, the token manager, the socket consumer
(a hub service), and the click-to-call and recording routes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from handlers.antring.client import AntRingClient, TokenManager, dial_number
from handlers.antring.config import AntRingConfig
from handlers.antring.consumer import UPSTREAM, SignalConsumer
from handlers.antring.normalize import AgentIndex, Normalizer
from handlers.antring.reconcile import Reconciler
from handlers.antring.routes import CLICK_TO_CALL, routes
from hub.plugin import ActionContext, ActionSpec, Executor, HubError, NotFound, Registry, public_params

__all__ = ["AntRingConfig", "register", "agent_index"]

logger = logging.getLogger("callhub.antring")

#: After a failed token refresh, try again this soon.
TOKEN_RETRY_DELAY = 5.0
#: Rule actions, with the parameters each needs.
ACTIONS: dict[str, tuple[str, ...]] = {CLICK_TO_CALL: ("agent", "number")}


def agent_index(config: AntRingConfig) -> AgentIndex:
    agents = config.agents
    return AgentIndex(
        by_owner={d.owner_id: name for name, d in agents.items() if d.owner_id},
        by_sip_user={d.sip_user: name for name, d in agents.items()},
        by_extension={d.extension: name for name, d in agents.items() if d.extension},
    )


def click_to_call_action(config: AntRingConfig, client: AntRingClient) -> Executor:
    """`antring.click_to_call` (`agent`, `number`): ring the agent's device to call the number.

    Not idempotent: AntRing cannot tell a retry from a second ring, so the runner never repeats it.
    """

    async def run(params: dict[str, Any], context: ActionContext) -> dict[str, Any]:
        agent = params.get("agent")
        device = config.agents.get(agent) if isinstance(agent, str) else None
        if device is None:
            raise NotFound(f"no SIP device configured for agent {agent!r} ([antring.agents.{agent}])")
        number = dial_number(params.get("number"), max_extension_digits=config.internal_max_digits)
        answer = await client.click_to_call(number, device.sip_user, device.sip_password)
        return {"outcome": "ringing", "agent": agent, "number": number, "vendor": answer}

    return run


def register(registry: Registry) -> None:
    config = registry.section("antring", AntRingConfig)
    if config is None or not config.enabled:
        return
    client = AntRingClient(config.base_url, config.app_id, config.app_secret, timeout=config.request_timeout,
                           expire_format=config.expire_format, time_zone=config.time_zone)
    client.report_to(registry.context.vendor_calls)
    tokens = TokenManager(client, config.sip_user, config.sip_password, refresh_margin=config.token_refresh_margin)
    normalizer = Normalizer(agents=agent_index(config), internal_max_digits=config.internal_max_digits)
    context = registry.context
    upstream = context.upstream(UPSTREAM, protocol=config.ws_protocol)
    reconciler = Reconciler(client, config, agents=normalizer.agents, is_extension=normalizer.is_extension,
                            publish=context.publish, store=context.store, upstream=upstream)
    consumer = SignalConsumer(config, tokens, normalizer, publish=context.publish, spawn=context.spawn,
                              upstream=upstream, on_reconnected=reconciler.after_reconnect)

    async def keep_token_fresh() -> None:
        """Fetch the next voice token ahead of expiry, so a reconnect never waits for one."""
        while True:
            await asyncio.sleep(max(0.0, tokens.seconds_until_refresh()))
            try:
                await tokens.get()
            except HubError as exc:
                logger.warning("antring voice token refresh failed: %s", exc.message)
                await asyncio.sleep(TOKEN_RETRY_DELAY)

    async def reconcile_periodically() -> None:
        while config.reconcile_interval > 0:
            await asyncio.sleep(config.reconcile_interval)
            if consumer.connected:
                await reconciler.periodic()

    async def check_online() -> str:
        """The app credentials and the hub's SIP device: AntRing issues a voice token for them."""
        token = await client.voice_token(config.sip_user, config.sip_password)
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(token.expires_at))
        return f"app {config.app_id} and SIP user {config.sip_user} accepted (voice token until {expires})"

    registry.add_check("antring", check_online)
    registry.claim_source(UPSTREAM)
    # One process holds the socket; reconciliation and the voice token go with it (they use its state).
    registry.add_service("antring-signals", consumer.run, lease=UPSTREAM)
    registry.add_service("antring-reconcile", reconcile_periodically, lease=UPSTREAM)
    registry.add_service("antring-token", keep_token_fresh, lease=UPSTREAM)
    registry.add_cleanup(client.aclose)
    registry.add_action(ActionSpec(CLICK_TO_CALL, click_to_call_action(config, client),
                                   idempotent=False, group="antring", required=ACTIONS[CLICK_TO_CALL],
                                   describe=public_params("agent", "number")))
    for route in routes(config, client, context):
        registry.add_route(route)
