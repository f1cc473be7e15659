"""The store: the event log and the rules journal, behind one contract (`hub.store.base`).

A backend is a module with one class, chosen by the scheme of `[backend] url` and imported only
when asked for (as encode/broadcaster does), so a new backend is a module and a line here.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from pydantic import ValidationError

from hub.config import BackendConfig, ConfigError
from hub.store.base import Backend

__all__ = ["SCHEMES", "open_backend", "Backend"]

#: URL scheme -> "module:Class".
SCHEMES: dict[str, str] = {
    "local": "hub.store.local:LocalBackend",
    # Redis Streams, shared by several hub processes (`redis://host:port/db`; `rediss://` for TLS).
    "redis": "hub.store.redis_streams:RedisBackend",
    "rediss": "hub.store.redis_streams:RedisBackend",
}


def open_backend(config: BackendConfig, data_dir: Path) -> Backend:
    """The backend `config.url` names, with its own options validated (nothing is opened yet:
    `Backend.start` does). `ConfigError` names the `[backend]` key of every problem."""
    url = config.url
    scheme = url.split("://", 1)[0] if "://" in url else url
    if scheme not in SCHEMES:
        raise ConfigError([("backend.url", f"unknown backend {url!r}; known: {', '.join(sorted(SCHEMES))}")])
    module_name, class_name = SCHEMES[scheme].split(":")
    cls: type[Backend] = getattr(importlib.import_module(module_name), class_name)
    try:
        options = cls.Options.model_validate(config.options)
    except ValidationError as exc:
        raise ConfigError([(".".join(("backend", *(str(p) for p in err["loc"]))),
                            "unknown key" if err["type"] == "extra_forbidden" else err["msg"])
                           for err in exc.errors()]) from None
    return cls(url=url, options=options, data_dir=data_dir)  # type: ignore[call-arg]
