"""callhub: a real-time call event and webhook hub (the vendor-neutral core).

The public names: `create_app(config)` (the ASGI app), `build(config)` (the hub without HTTP),
`load_config`, `Config`, and the errors. Vendor adapters use `hub.plugin`.
"""

from __future__ import annotations

from hub.config import Config, ConfigError, load_config
from hub.events import Published
from hub.exceptions import HubError
from hub.http.app import CallhubApp, create_app
from hub.service import Hub, build

__all__ = ["CallhubApp", "Config", "ConfigError", "Hub", "HubError", "Published", "build", "create_app",
           "load_config"]
__version__ = "0.1.0"
