"""Upstream connections (a vendor's socket, say): their state, for `/readyz`, metrics and events.

A handler owning a long-lived upstream connection reports it here; the hub publishes
`hub.upstream.connected` / `hub.upstream.disconnected` so dashboards see it live.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hub.events import hub_event

if TYPE_CHECKING:
    from hub.service import Hub

__all__ = ["Upstream", "Upstreams"]

logger = logging.getLogger("callhub.upstreams")


@dataclass
class Upstream:
    name: str
    connected: bool = False
    #: Unix time of the last change.
    since: float = field(default_factory=time.time)
    #: Successful connections so far (the first one included).
    connects: int = 0
    detail: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.since)),
            "connects": self.connects,
            **self.detail,
        }


class Upstreams:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.states: dict[str, Upstream] = {}

    def register(self, name: str, **detail: Any) -> Upstream:
        upstream = self.states[name] = Upstream(name, detail=detail)
        self.hub.metrics.upstream_connected.labels(name).set(0)
        return upstream

    async def connected(self, name: str, **detail: Any) -> None:
        await self._change(name, True, detail)

    async def disconnected(self, name: str, **detail: Any) -> None:
        await self._change(name, False, detail)

    async def _change(self, name: str, connected: bool, detail: dict[str, Any]) -> None:
        upstream = self.states.get(name) or self.register(name)
        if upstream.connected == connected:
            return
        was_down_since = upstream.since
        upstream.connected, upstream.since = connected, time.time()
        self.hub.metrics.upstream_connected.labels(name).set(1 if connected else 0)
        if connected:
            upstream.connects += 1
            self.hub.metrics.upstream_connects.labels(name).inc()
        data: dict[str, Any] = {"upstream": name, **detail}
        if connected:
            data["down_s"] = round(upstream.since - was_down_since, 3)
        type_ = "hub.upstream.connected" if connected else "hub.upstream.disconnected"
        logger.info("upstream %s %s", name, "connected" if connected else "disconnected")
        try:
            await self.hub.publish(hub_event(type_, data, subject=name), default_source="hub")
        except Exception:  # the hub shutting down must not break the consumer's bookkeeping
            logger.debug("could not publish %s for %s", type_, name, exc_info=True)

    def describe(self) -> dict[str, Any]:
        return {name: state.describe() for name, state in self.states.items()}
