"""Storage and cross-process fan-out backends, chosen by URL.

Each backend lives in its own module and is imported only when its scheme is asked for
(as encode/broadcaster does), so a new backend adds a module and a line here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hub.config import Config
    from hub.store.base import Backend

__all__ = ["SCHEMES", "open_backend"]

#: URL scheme -> "module:Class".
SCHEMES: dict[str, str] = {
    "local": "hub.store.local:LocalBackend",
}


def open_backend(config: Config) -> Backend:
    url = config.backend.url
    scheme = url.split("://", 1)[0] if "://" in url else url
    module_name, class_name = SCHEMES[scheme].split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    backend: Backend = cls(config)
    return backend
