"""A whole AntRing on loopback (HTTP API and call-signal socket simulators) with a hub wired to it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from handlers.antring import AntRingConfig
from handlers.antring.simulator.calls import Party, ScriptedCall
from handlers.antring.simulator.http import Device, SimState, build_app
from handlers.antring.simulator.signals import SignalServer
from hub.config import config_from_dict
from hub.plugin import handler_sections
from tests.helpers import ADMIN, TICK, WAIT, AppServer, ServerThread, raw_config, wait_until

ACCOUNT = "acc-0001"
ALICE = Party("alice", "101", "u-alice")
BOB = Party("bob", "102", "u-bob")


@dataclass
class AntRingWorld:
    state: SimState
    api: AppServer
    signals: SignalServer
    signal_server: AppServer
    hub: ServerThread

    def restart_hub(self) -> None:
        """Stop the hub and start a new one on the same config and data directory (a restart)."""
        self.hub.stop()
        self.hub = ServerThread(self.hub.config).start()

    def record(self, *calls: ScriptedCall) -> None:
        """Put the calls' history records where `/histories` finds them (with an id, if the simulator adds one)."""
        for call in calls:
            self.state.add_history(call.record, call_id=call.call_id)

    def play(self, call: ScriptedCall, *, speed: float = 0.0) -> None:
        """Emit a scripted call's signals; `speed` scales the script's delays (0 = back to back)."""
        for signal in call.signals:
            if speed and signal.delay:
                time.sleep(signal.delay * speed)
            self.signals.emit_threadsafe(signal.name, signal.payload)

    def play_partly(self, call: ScriptedCall, *, upto: int) -> None:
        """Emit only the first `upto` signals (the rest are lost, as in an outage)."""
        for signal in call.signals[:upto]:
            self.signals.emit_threadsafe(signal.name, signal.payload)

    def upstream(self) -> dict[str, Any]:
        state: dict[str, Any] = httpx.get(f"{self.hub.url}/readyz", timeout=WAIT).json()["upstreams"]["antring"]
        return state

    def wait_connected(self, *, connects: int = 1) -> None:
        def up() -> bool:
            state = self.upstream()
            return bool(state["connected"]) and state["connects"] >= connects and len(self.signals.subscriptions) > 0
        wait_until(up, what="antring upstream connected")

    def history(self, types: str = "*") -> list[dict[str, Any]]:
        r = httpx.get(f"{self.hub.url}/v1/events", params={"after": 0, "limit": 1000, "types": types},
                      headers=ADMIN, timeout=WAIT)
        events: list[dict[str, Any]] = r.json()["events"]
        return events


def antring_section(state: SimState, api: AppServer, signal_server: AppServer, protocol: str,
                    **extra: Any) -> dict[str, Any]:
    scheme = "http"
    return {
        "base_url": api.url,
        "app_id": state.app_id,
        "app_secret": state.app_secret,
        "account_id": ACCOUNT,
        "ws_url": f"{scheme}://127.0.0.1:{signal_server.port}",
        "ws_protocol": protocol,
        "sip_user": "hub-device",
        "sip_password": "hub-pass",
        "reconnect_initial_delay": TICK,
        "reconnect_max_delay": 4 * TICK,
        "request_timeout": 40 * TICK,
        "agents": {
            "alice": {"sip_user": "alice-101", "sip_password": "alice-pass", "extension": "101", "owner_id": "u-alice"},
            "bob": {"sip_user": "bob-102", "sip_password": "bob-pass", "extension": "102", "owner_id": "u-bob"},
        },
        **extra,
    }


@contextmanager
def antring_world(data_dir: Path, protocol: str = "socketio", *, extra_config: dict[str, Any] | None = None,
                  id_field: str | None = None, **antring: Any) -> Iterator[AntRingWorld]:
    """A hub wired to simulated AntRing; `id_field` makes history records carry the call id under that
    name and the hub read it (`history_id_field`); without it, records are as documented (no id)."""
    state = SimState(devices={
        "hub-device": Device("hub-pass"),
        "alice-101": Device("alice-pass", username="alice"),
        "bob-102": Device("bob-pass", online=False, username="bob"),
    }, id_field=id_field)
    if id_field is not None:
        antring.setdefault("history_id_field", id_field)
    signals = SignalServer(protocol, token_valid=state.is_token_valid, account_id=ACCOUNT,
                           ping_interval=20 * TICK, ping_timeout=20 * TICK)
    with ExitStack() as stack:
        api = stack.enter_context(AppServer(build_app(state)))
        signal_server = stack.enter_context(AppServer(signals.app))
        raw = raw_config(data_dir)
        raw["antring"] = antring_section(state, api, signal_server, protocol, **antring)
        raw.update(extra_config or {})
        config = config_from_dict(raw, env={}, handler_sections=handler_sections())
        assert isinstance(config.handlers["antring"], AntRingConfig)
        world = AntRingWorld(state, api, signals, signal_server, ServerThread(config).start())
        try:
            yield world
        finally:
            world.hub.stop()
