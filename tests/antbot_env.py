"""A hub wired to a simulated AntBot (Alice) on loopback: its config section and the hub."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from handlers.antbot import AntBotConfig
from hub.config import config_from_dict
from hub.plugin import handler_sections
from tests.helpers import TICK, ServerThread, raw_config

#: The simulator's default account.
USER, PASSWORD = "sim-user", "sim-password"


def antbot_section(url: str, **extra: Any) -> dict[str, Any]:
    section: dict[str, Any] = {
        "base_url": url, "username": USER, "password": PASSWORD, "poll_interval": 4 * TICK,
        "lookback": "15m", "request_timeout": 40 * TICK, "reminders": {"calendar": 1, "creator": 1},
    }
    section.update(extra)
    return section


def antbot_hub(data_dir: Path, url: str, *, extra_config: dict[str, Any] | None = None, **extra: Any) -> ServerThread:
    raw = raw_config(data_dir)
    raw["antbot"] = antbot_section(url, **extra)
    raw.update(extra_config or {})
    config = config_from_dict(raw, env={}, handler_sections=handler_sections())
    assert isinstance(config.handlers["antbot"], AntBotConfig)
    return ServerThread(config)
