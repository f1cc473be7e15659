"""`callhub serve | check | token`."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from typing import Any

import uvicorn
from uvicorn.config import LOGGING_CONFIG

from hub.auth import ensure_jwt_secret, issue_token
from hub.config import Config, ConfigError, ServerConfig, load_config
from hub.http.app import CallhubApp, create_app
from hub.http.protocol import Limits, protocols
from hub.plugin import action_types, demo_overrides, handler_sections
from hub.rules.engine import load_rules
from hub.units import parse_duration

__all__ = ["main", "serve", "build_uvicorn_config"]

CONFIG_ENV = "CALLHUB_CONFIG"
#: Pending connections the listening socket queues (thousands of agents reconnect at once after a restart).
LISTEN_BACKLOG = 4096


def _load(args: argparse.Namespace, overrides: dict[str, Any] | None = None) -> Config:
    path = args.config or os.environ.get(CONFIG_ENV) or None
    return load_config(path, overrides=overrides, handler_sections=handler_sections())


def _configured_port(args: argparse.Namespace) -> int:
    """The port `serve` will listen on (the demo's simulators are mounted there)."""
    try:
        return _load(args).server.port
    except ConfigError:
        return int(ServerConfig.model_fields["port"].default)  # serve reports the real error


def _loop_impl() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def build_uvicorn_config(app: CallhubApp, config: Config, *, fd: int | None = None) -> uvicorn.Config:
    streams = config.streams
    log_config: dict[str, Any] = {
        **LOGGING_CONFIG,
        "filters": {"redact": {"()": "hub.ops.logs.RedactSecrets"}, "frames": {"()": "hub.ops.logs.QuietFrames"}},
        # Every handler redacts: uvicorn logs request paths, and `?token=` is in them.
        "handlers": {name: {**handler, "filters": ["frames", "redact"]}
                     for name, handler in LOGGING_CONFIG["handlers"].items()},
        "loggers": dict(LOGGING_CONFIG["loggers"]),
    }
    log_config["loggers"]["callhub"] = {"handlers": ["default"], "level": config.server.log_level.upper(), "propagate": False}
    # httpx logs every outbound request at INFO, signed query strings included.
    log_config["loggers"]["httpx"] = {"handlers": ["default"], "level": "WARNING", "propagate": False}
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
        log_level=config.server.log_level,
        log_config=log_config,
        access_log=config.server.access_log,
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


#: How long the agent token the demo prints stays valid.
DEMO_AGENT_TOKEN_TTL = 8 * 3600.0


def _banner(app: CallhubApp, config: Config, *, demo: bool = False) -> None:
    hub = app.hub
    host = config.server.host
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{config.server.port}"
    lines = [f"callhub listening on {url}  (store: {config.backend.url}, data: {config.data_dir.resolve()})"]
    if not config.server.auth:
        lines.append("auth is OFF (loopback only): every request is admin")
    elif hub.admin_key is not None and hub.admin_key_created:
        key = hub.admin_key.key
        lines += [
            "",
            f"An admin key was created for you (shown once; kept in {hub.admin_key_path}):",
            f"    {key}",
            "Try it:",
            f"    curl -N -H 'Authorization: Bearer {key}' {url}/v1/stream",
            "",
        ]
    elif hub.admin_key is not None:
        lines.append(f"admin key: in {hub.admin_key_path}")
    if demo:
        # Only a key the hub generated (and keeps in its data directory) is printed: a key from the
        # config file is the operator's secret, and terminals end up in logs and screenshots.
        generated = hub.admin_key
        console = f"{url}/?token={generated.key}" if config.server.auth and generated is not None else f"{url}/"
        lines += ["", "Demo: simulated AntRing, AntCRM and Vbee are playing calls. Open the console as admin:",
                  f"    {console}"]
        if config.server.auth and generated is None:
            lines.append("    (sign in there with the admin key from your config file)")
        if config.server.auth:
            agent = issue_token(hub.jwt_secret, sub="alice", agent="alice", ttl=DEMO_AGENT_TOKEN_TTL)
            lines += ["or as the agent alice (a token valid for 8 hours):", f"    {url}/?token={agent}"]
        lines.append("")
    print("\n".join(lines), file=sys.stderr, flush=True)


def serve(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    if args.host:
        overrides.setdefault("server", {})["host"] = args.host
    if args.port is not None:
        overrides.setdefault("server", {})["port"] = args.port
    if args.demo:
        port = args.port if args.port is not None else _configured_port(args)
        overrides.update(demo_overrides(port))
    try:
        config = _load(args, overrides)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    app = create_app(config)
    # Checked against the executors actually configured (a rule using antcrm.* needs [antcrm]).
    problems = app.hub.load_rules()
    if problems:
        print(f"not starting: {len(problems)} problem(s) in the rules:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    _banner(app, config, demo=args.demo)
    server = HubServer(build_uvicorn_config(app, config), app)
    server.run()
    return 0 if server.started else 1


def check(args: argparse.Namespace) -> int:
    try:
        config = _load(args)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    rules, problems = load_rules(config.rules, config.rules_file, action_types())
    if problems:
        print(f"{len(problems)} problem(s) in the rules:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print(
        f"{args.config or os.environ.get(CONFIG_ENV) or 'defaults'}: ok "
        f"(listen {config.server.host}:{config.server.port}, backend {config.backend.url}, "
        f"{len(config.auth.keys)} API key(s), auth {'on' if config.server.auth else 'OFF'}, "
        f"{len(rules.rules) if rules else 0} rule(s))"
    )
    return 0


def token(args: argparse.Namespace) -> int:
    try:
        config = _load(args)
        ttl = parse_duration(args.ttl)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"--ttl: {exc}", file=sys.stderr)
        return 1
    if ttl <= 0:
        print("--ttl must be positive", file=sys.stderr)
        return 1
    from hub.matcher import parse_patterns

    try:
        types = parse_patterns(args.types)
    except Exception as exc:
        print(f"--types: {exc}", file=sys.stderr)
        return 1
    secret = ensure_jwt_secret(config)
    print(issue_token(secret, sub=args.sub or args.agent or "subscriber", ttl=ttl, agent=args.agent, types=types))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="callhub", description="Real-time call event and webhook hub")
    sub = parser.add_subparsers(dest="command", required=True)
    config_help = f"TOML config file (default: ${CONFIG_ENV}, else the embedded defaults)"

    p = sub.add_parser("serve", help="run the hub")
    p.add_argument("--config", help=config_help)
    p.add_argument("--host", help="override server.host")
    p.add_argument("--port", type=int, help="override server.port")
    p.add_argument("--demo", action="store_true", help="run simulated upstreams and a scripted stream of calls")
    p.set_defaults(func=serve)

    p = sub.add_parser("check", help="validate a config file and print every problem")
    p.add_argument("--config", help=config_help)
    p.set_defaults(func=check)

    p = sub.add_parser("token", help="print a subscriber JWT")
    p.add_argument("--config", help=config_help)
    p.add_argument("--agent", help="scope the token to this agent's events")
    p.add_argument("--sub", help="subject (default: the agent)")
    p.add_argument("--types", help="comma-separated type patterns the token may see")
    p.add_argument("--ttl", default="8h", help="lifetime, e.g. 15m, 8h, 7d (default 8h)")
    p.set_defaults(func=token)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    result: int = args.func(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
