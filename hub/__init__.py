"""callhub: a real-time call event and webhook hub (the vendor-neutral core)."""

from __future__ import annotations

from hub.config import Config, ConfigError, load_config
from hub.exceptions import HubError
from hub.http.app import CallhubApp, create_app
from hub.service import Hub, Published

__all__ = ["CallhubApp", "Config", "ConfigError", "Hub", "HubError", "Published", "create_app", "load_config"]
__version__ = "0.1.0"
