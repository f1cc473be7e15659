"""`callhub serve | check | token`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import Any

from hub.auth import ensure_jwt_secret, issue_token
from hub.config import Config, ConfigError, ServerConfig, load_config
from hub.http.app import CallhubApp, app_for
from hub.http.server import HubServer, build_uvicorn_config
from hub.matcher import parse_patterns
from hub.plugin import demo_overrides, handler_sections
from hub.rules.engine import RulesInvalid
from hub.service import CheckResult, Hub, build
from hub.units import parse_duration

__all__ = ["main", "serve", "check", "token"]

CONFIG_ENV = "CALLHUB_CONFIG"


def _load(args: argparse.Namespace, overrides: dict[str, Any] | None = None) -> Config:
    path = args.config or os.environ.get(CONFIG_ENV) or None
    return load_config(path, overrides=overrides, handler_sections=handler_sections())


def _configured_port(args: argparse.Namespace) -> int:
    """The port `serve` will listen on (the demo's simulators are mounted there)."""
    try:
        return _load(args).server.port
    except ConfigError:
        return int(ServerConfig.model_fields["port"].default)  # serve reports the real error


#: `check --online`: how long each vendor may take to answer.
ONLINE_CHECK_TIMEOUT = 10.0


def _seconds(value: str) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return seconds


#: How long the agent token the demo prints stays valid.
DEMO_AGENT_TOKEN_TTL = 8 * 3600.0


def _banner(app: CallhubApp, config: Config, *, demo: bool = False) -> None:
    credentials = app.hub.credentials
    host = config.server.host
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{config.server.port}"
    lines = [f"callhub listening on {url}  (store: {config.backend.url}, data: {config.data_dir.resolve()})"]
    if not config.server.auth:
        lines.append("auth is OFF (loopback only): every request is admin")
    elif credentials.admin_key is not None and credentials.admin_key_created:
        key = credentials.admin_key.key
        lines += [
            "",
            f"An admin key was created for you (shown once; kept in {credentials.admin_key_path}):",
            f"    {key}",
            "Try it:",
            f"    curl -N -H 'Authorization: Bearer {key}' {url}/v1/stream",
            "",
        ]
    elif credentials.admin_key is not None:
        lines.append(f"admin key: in {credentials.admin_key_path}")
    if demo:
        # Only a key the hub generated (and keeps in its data directory) is printed: a key from the
        # config file is the operator's secret, and terminals end up in logs and screenshots.
        generated = credentials.admin_key
        console = f"{url}/?token={generated.key}" if config.server.auth and generated is not None else f"{url}/"
        lines += ["", "Demo: simulated AntRing, AntCRM and Vbee are playing calls. Open the console as admin:",
                  f"    {console}"]
        if config.server.auth and generated is None:
            lines.append("    (sign in there with the admin key from your config file)")
        if config.server.auth:
            agent = issue_token(credentials.jwt_secret, sub="alice", agent="alice", ttl=DEMO_AGENT_TOKEN_TTL)
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
        hub = build(config)
    except ConfigError as exc:
        _report(exc, "not starting: ")
        return 1
    app = app_for(hub)
    _banner(app, config, demo=args.demo)
    server = HubServer(build_uvicorn_config(app, config), app)
    server.run()
    return 0 if server.started else 1


def check(args: argparse.Namespace) -> int:
    """Build the hub exactly as `serve` would (configured vendors, their action types, the rules
    against them, the backend's options), start nothing, and say what is wrong or what it found."""
    try:
        config = _load(args)
        hub = build(config, check_only=True)
    except ConfigError as exc:
        _report(exc)
        return 1
    results = asyncio.run(_online(hub, args.timeout if args.online else None))
    print(
        f"{args.config or os.environ.get(CONFIG_ENV) or 'defaults'}: ok "
        f"(listen {config.server.host}:{config.server.port}, backend {config.backend.url}, "
        f"{len(config.auth.keys)} API key(s), auth {'on' if config.server.auth else 'OFF'}, "
        f"{len(hub.rules.current.rules)} rule(s), actions: {', '.join(sorted(hub.actions.specs))})"
    )
    if results is None:
        return 0
    if not results:
        print("online: no vendor configured, nothing to check")
        return 0
    width = max(len(r.name) for r in results)
    for r in results:
        print(f"online: {r.name:<{width}}  {'ok' if r.ok else 'FAILED':<6}  {r.detail}")
    failed = [r.name for r in results if not r.ok]
    if failed:
        print(f"online: {len(failed)} of {len(results)} vendor(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


async def _online(hub: Hub, timeout: float | None) -> list[CheckResult] | None:
    """With a `timeout` (`--online`), each configured vendor asked with its credentials; the clients closed."""
    try:
        return None if timeout is None else await hub.check_online(timeout)
    finally:
        await hub.release()


def _report(exc: ConfigError, prefix: str = "") -> None:
    if isinstance(exc, RulesInvalid):
        print(f"{prefix}{len(exc.rule_problems)} problem(s) in the rules:", file=sys.stderr)
        for problem in exc.rule_problems:
            print(f"  {problem}", file=sys.stderr)
    else:
        print(exc, file=sys.stderr)


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
    p.add_argument("--online", action="store_true",
                   help="also ask each configured vendor (AntRing, AntCRM, Vbee) whether it accepts the credentials")
    p.add_argument("--timeout", type=_seconds, default=ONLINE_CHECK_TIMEOUT,
                   help=f"--online: how long each vendor may take to answer, e.g. 5s (default {ONLINE_CHECK_TIMEOUT:g}s)")
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
