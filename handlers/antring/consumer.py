"""The AntRing call-signal consumer: token, socket, reconnects, normalised events into the hub.

    TokenManager ──token──▶ stream_signals(protocol) ──(name, payload)──▶ Normalizer ──▶ Hub.publish
         ▲ invalidate on AuthRejected            │ on_subscribed / connection lost
         └───────────── refreshed ahead of expiry └──▶ hub.upstreams (readyz, metrics, hub.upstream.* events)

The socket is reopened forever, with exponential back-off and full jitter capped at
`reconnect_max_delay`; the back-off starts over after a connection that stayed up for
`STABLE_AFTER` seconds. After every reconnect, `on_reconnected(down_since, up_at)` runs, which
is where history reconciliation hooks in.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from handlers.antring.client import TokenManager
from handlers.antring.config import AntRingConfig
from handlers.antring.normalize import Normalizer
from handlers.antring.socket import stream_signals
from handlers.antring.socket.base import AuthRejected, SignalStreamError
from hub.plugin import HubError, Publish, Spawn, Upstream

logger = logging.getLogger("callhub.antring")

__all__ = ["SignalConsumer", "UPSTREAM"]

UPSTREAM = "antring"
#: A connection that lasted this long resets the reconnect back-off.
STABLE_AFTER = 30.0

OnReconnected = Callable[[float, float], Awaitable[object]]


class SignalConsumer:
    def __init__(
        self,
        config: AntRingConfig,
        tokens: TokenManager,
        normalizer: Normalizer,
        *,
        publish: Publish,
        spawn: Spawn,
        upstream: Upstream,
        on_reconnected: OnReconnected | None = None,
    ) -> None:
        self.config = config
        self.tokens = tokens
        self.normalizer = normalizer
        self.on_reconnected = on_reconnected
        self.connected = False
        self.down_since = time.time()
        self._publish = publish
        self._spawn = spawn
        self._upstream = upstream

    async def run(self) -> None:
        """Consume forever (until cancelled)."""
        attempt = 0
        while True:
            opened = time.monotonic()
            reason = "closed"
            try:
                token = await self.tokens.get()
                await stream_signals(
                    self.config.ws_protocol,
                    self.config.ws_url,
                    account_id=self.config.account_id,
                    auth_token=token,
                    bindings=self.config.bindings,
                    on_signal=self._on_signal,
                    on_subscribed=self._on_subscribed,
                    open_timeout=self.config.request_timeout,
                )
            except AuthRejected:
                # The socket refused the token: fetch a new one before the next try.
                reason = "token refused"
                self.tokens.invalidate()
            except SignalStreamError as exc:
                reason = str(exc) or type(exc).__name__
            except HubError as exc:  # the token could not be obtained
                reason = f"token: {exc.message}"
            except asyncio.CancelledError:
                await self._went_down("hub stopping")
                raise
            await self._went_down(reason)
            attempt = 0 if time.monotonic() - opened >= STABLE_AFTER else attempt + 1
            delay = self._backoff(attempt)
            logger.info("antring socket down (%s); reconnecting in %.1fs", reason, delay)
            await asyncio.sleep(delay)

    def _backoff(self, attempt: int) -> float:
        if attempt == 0:
            return random.uniform(0, self.config.reconnect_initial_delay)
        cap = min(self.config.reconnect_max_delay, self.config.reconnect_initial_delay * 2**attempt)
        return random.uniform(cap / 2, cap)

    def _on_subscribed(self) -> None:
        self._spawn(self._went_up(), name="antring-up")

    async def _went_up(self) -> None:
        if self.connected:
            return
        self.connected = True
        down_since, up_at = self.down_since, time.time()
        await self._upstream.up(protocol=self.config.ws_protocol, bindings=list(self.config.bindings))
        if self.on_reconnected is not None:
            try:
                await self.on_reconnected(down_since, up_at)
            except Exception:
                logger.exception("antring: after-reconnect step failed")

    async def _went_down(self, reason: str) -> None:
        if not self.connected:
            return
        self.connected = False
        self.down_since = time.time()
        await self._upstream.down(reason=reason)

    async def _on_signal(self, name: str, payload: dict[str, Any]) -> None:
        self._upstream.signal(name)
        event = self.normalizer.event(name, payload)
        try:
            await self._publish(event, default_source=UPSTREAM)
        except HubError as exc:
            # Never let one bad signal take the socket down; the store or validation said why.
            logger.warning("antring signal %s not stored: %s", name, exc.message)
