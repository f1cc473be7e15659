"""Serving the app with uvicorn: its settings, and a server that closes subscribers before it waits.

uvicorn runs with httptools and websockets-sansio (the fan-out writes pre-built bytes straight to
their transports: `hub.live.sinks`), the limits uvicorn lacks (`hub.http.protocol`), and log
handlers that redact secrets and drop per-frame debug lines (`hub.ops.logs`).
"""

from __future__ import annotations

import socket
from typing import Any

import uvicorn
from uvicorn.config import LOGGING_CONFIG

from hub.config import Config
from hub.http.app import CallhubApp
from hub.http.protocol import Limits, protocols

__all__ = ["HubServer", "build_uvicorn_config", "logging_config", "LISTEN_BACKLOG"]

#: Pending connections the listening socket queues (thousands of agents reconnect at once after a restart).
LISTEN_BACKLOG = 4096


def _loop_impl() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def logging_config(config: Config) -> dict[str, Any]:
    """uvicorn's logging, with the hub's: every handler redacts (uvicorn logs request paths, and
    `?token=` is in them) and stamps the request id; `[log] format = "json"` writes JSON lines,
    the root logger's too (libraries' warnings), so a collector reads one format."""
    log = config.log
    log_config: dict[str, Any] = {
        **LOGGING_CONFIG,
        "filters": {"redact": {"()": "hub.ops.logs.RedactSecrets", "phone_numbers": log.phone_numbers},
                    "frames": {"()": "hub.ops.logs.QuietFrames"}},
        "handlers": {name: {**handler, "filters": ["frames", "redact"]}
                     for name, handler in LOGGING_CONFIG["handlers"].items()},
        "loggers": dict(LOGGING_CONFIG["loggers"]),
    }
    level = config.log_level.upper()
    log_config["loggers"]["callhub"] = {"handlers": ["default"], "level": level, "propagate": False}
    # httpx logs every outbound request at INFO, signed query strings included.
    log_config["loggers"]["httpx"] = {"handlers": ["default"], "level": "WARNING", "propagate": False}
    if log.format == "json":
        json_formatter = {"()": "hub.ops.logs.JsonFormatter", "phone_numbers": log.phone_numbers}
        log_config["formatters"] = {"default": json_formatter, "access": json_formatter}
        log_config["root"] = {"handlers": ["default"], "level": "WARNING"}
    return log_config


def build_uvicorn_config(app: CallhubApp, config: Config, *, fd: int | None = None) -> uvicorn.Config:
    streams = config.streams
    log_config = logging_config(config)
    kwargs: dict[str, Any] = {"fd": fd} if fd is not None else {"host": config.server.host, "port": config.server.port}
    server = config.server
    http_protocol, ws_protocol = protocols(Limits(
        header_timeout=server.header_timeout, body_timeout=server.body_timeout, send_timeout=server.send_timeout,
        max_head=server.max_head, max_unread=streams.buffer_bytes, max_control_per_s=streams.max_control_per_s,
    ))
    return uvicorn.Config(
        app,
        **kwargs,
        loop=_loop_impl(),
        # httptools and websockets-sansio, with the limits uvicorn lacks (hub.protocol).
        http=http_protocol,
        # The fan-out writes pre-built frames straight to the transport of this protocol (hub.sinks).
        ws=ws_protocol,
        ws_ping_interval=streams.ws_ping_interval or None,
        ws_ping_timeout=streams.ws_ping_timeout or None,
        ws_max_size=streams.ws_max_message,
        # Compression is per connection and stateful: it would mean compressing every event once
        # per subscriber, and a zlib context per connection. Events are small; send them as they are.
        ws_per_message_deflate=False,
        lifespan="on",
        log_level=config.log_level,
        log_config=log_config,
        access_log=config.access_log,
        timeout_graceful_shutdown=max(1, int(config.server.shutdown_grace * 2)),
        backlog=LISTEN_BACKLOG,
        limit_concurrency=config.server.max_connections or None,
        proxy_headers=False,
        server_header=False,
    )


class HubServer(uvicorn.Server):
    """uvicorn, taught to close subscribers before it waits for connections to end.

    Left alone, uvicorn would wait for every SSE stream to finish, which they never do.
    """

    def __init__(self, config: uvicorn.Config, app: CallhubApp) -> None:
        super().__init__(config)
        self.hub = app.hub

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()  # stop accepting first
        if self.hub.started:
            await self.hub.drain()
        await super().shutdown(sockets)
        # uvicorn re-raises the signal that stopped it once it is done, so the process would end
        # "killed by SIGTERM" (status 143) after a clean shutdown. A completed graceful
        # shutdown exits 0, as process supervisors expect.
        captured = getattr(self, "_captured_signals", None)
        if isinstance(captured, list):
            captured.clear()
