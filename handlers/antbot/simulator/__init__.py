"""A faithful AntBot (Alice) on loopback: token auth, campaigns, contacts, DNC, calendar events and
alarms, the CDR report, and a dialer round that turns due alarms and campaign contacts into CDR rows."""

from __future__ import annotations

from handlers.antbot.simulator.app import LOCAL_FORMAT, SimState, build_app

__all__ = ["LOCAL_FORMAT", "SimState", "build_app"]
