"""A faithful AntCRM (apiring) on loopback: tickets and contacts, `apikey` checked, misbehaviour on demand."""

from __future__ import annotations

from handlers.antcrm.simulator.app import DEFAULT_API_KEY, MAX_PAGE_SIZE, SimState, build_app

__all__ = ["DEFAULT_API_KEY", "MAX_PAGE_SIZE", "SimState", "build_app"]
