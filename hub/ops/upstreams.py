"""Upstream connections (a vendor's socket, say): their state, for `/readyz`, metrics and events.

A handler owning a long-lived upstream connection gets an `Upstream` (`Upstreams.register`) and
reports through it: connected, disconnected, each signal received, calls recovered from history.
The hub publishes `hub.upstream.connected` / `hub.upstream.disconnected` so dashboards see it live.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from hub.events import HUB_SOURCE, Publish, hub_event
from hub.ops.metrics import Metrics

__all__ = ["Upstream", "Upstreams"]

logger = logging.getLogger("callhub.upstreams")


class Upstream:
    """One upstream connection's state, and how its owner reports on it."""

    def __init__(self, name: str, detail: dict[str, Any], *, publish: Publish, metrics: Metrics) -> None:
        self.name = name
        self.connected = False
        #: Unix time of the last change.
        self.since = time.time()
        #: Successful connections so far (the first one included).
        self.connects = 0
        self.detail = detail
        self._publish = publish
        self._metrics = metrics
        self._signals = metrics.upstream_signals
        metrics.upstream_connected.labels(name).set(0)

    async def up(self, **detail: Any) -> None:
        """The connection is (again) established."""
        await self._change(True, detail)

    async def down(self, **detail: Any) -> None:
        """The connection is lost (`reason=...`)."""
        await self._change(False, detail)

    def signal(self, kind: str) -> None:
        """A signal arrived (counted by kind, e.g. the vendor's event name)."""
        self._signals.labels(self.name, kind).inc()

    def recovered(self, count: int) -> None:
        """Events recovered from the upstream's history after a gap."""
        self._metrics.upstream_reconciled.labels(self.name).inc(count)

    def reconciled(self, outcome: str) -> None:
        """A reconciliation run finished: `complete`, `partial` (some of it must be read again),
        `failed` (the vendor or the store did not answer) or `skipped` (too much to compare)."""
        self._metrics.upstream_reconciliations.labels(self.name, outcome).inc()

    async def _change(self, connected: bool, detail: dict[str, Any]) -> None:
        if self.connected == connected:
            return
        was_down_since = self.since
        self.connected, self.since = connected, time.time()
        self._metrics.upstream_connected.labels(self.name).set(1 if connected else 0)
        if connected:
            self.connects += 1
            self._metrics.upstream_connects.labels(self.name).inc()
        data: dict[str, Any] = {"upstream": self.name, **detail}
        if connected:
            data["down_s"] = round(self.since - was_down_since, 3)
        type_ = "hub.upstream.connected" if connected else "hub.upstream.disconnected"
        logger.info("upstream %s %s", self.name, "connected" if connected else "disconnected")
        try:
            await self._publish(hub_event(type_, data, subject=self.name), default_source=HUB_SOURCE)
        except Exception:  # the hub shutting down must not break the consumer's bookkeeping
            logger.debug("could not publish %s for %s", type_, self.name, exc_info=True)

    def describe(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.since)),
            "connects": self.connects,
            **self.detail,
        }


class Upstreams:
    def __init__(self, publish: Publish, metrics: Metrics) -> None:
        self._publish = publish
        self._metrics = metrics
        self.states: dict[str, Upstream] = {}

    def register(self, name: str, **detail: Any) -> Upstream:
        """The upstream `name` (its state starts down); its owner reports through the answer."""
        if name in self.states:
            raise ValueError(f"upstream {name!r} is registered twice")
        upstream = self.states[name] = Upstream(name, detail, publish=self._publish, metrics=self._metrics)
        return upstream

    def describe(self) -> dict[str, Any]:
        return {name: state.describe() for name, state in self.states.items()}
