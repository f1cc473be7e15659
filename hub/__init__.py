"""callhub: a real-time call event and webhook hub (the vendor-neutral core)."""

from __future__ import annotations

from hub.app import CallhubApp, create_app
from hub.config import Config, ConfigError, load_config
from hub.core import Hub, Published
from hub.exceptions import HubError

__all__ = ["CallhubApp", "Config", "ConfigError", "Hub", "HubError", "Published", "create_app", "load_config"]
__version__ = "0.1.0"
