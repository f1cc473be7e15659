"""A faithful Vbee AICall on loopback: the campaign API (`build_app`) and the runner that reports
call results to the hub's webhook (`CampaignRunner`)."""

from __future__ import annotations

from handlers.vbee.simulator.app import (
    API_PREFIX,
    CampaignRunner,
    RunnerConfig,
    RunReport,
    SentWebhook,
    SimState,
    build_app,
    vbee_phone,
)

__all__ = ["API_PREFIX", "CampaignRunner", "RunnerConfig", "RunReport", "SentWebhook", "SimState", "build_app",
           "vbee_phone"]
