"""A faithful AntRing on loopback: the open HTTP API (`http`) and the call-signal socket."""

from __future__ import annotations

from handlers.antring.simulator.http import Device, SimState, build_app

__all__ = ["Device", "SimState", "build_app"]
