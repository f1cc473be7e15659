"""Test helpers: configs, a real uvicorn hub on a free loopback port, SSE parsing.

Time in tests is scaled from `TICK`, never a bare number of seconds.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import uvicorn

from hub.cli import HubServer, build_uvicorn_config
from hub.config import Config, config_from_dict
from hub.http.app import CallhubApp, create_app

#: The unit of waiting in tests; everything else is a multiple of it.
TICK = float(os.environ.get("CALLHUB_TEST_TICK", "0.05"))
#: Upper bound for "this should happen soon".
WAIT = 200 * TICK

ADMIN_KEY = "admin-key-0123456789abcdef"
PUBLISHER_KEY = "publisher-key-0123456789abcdef"
SUBSCRIBER_KEY = "subscriber-key-0123456789abcdef"
ALICE_KEY = "alice-key-0123456789abcdef"
JWT_SECRET = "test-jwt-secret-0123456789abcdef-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
PUBLISHER = {"Authorization": f"Bearer {PUBLISHER_KEY}"}


def raw_config(data_dir: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "server": {"data_dir": str(data_dir), "port": 0},
        "auth": {
            "jwt_secret": JWT_SECRET,
            "keys": [
                {"key": ADMIN_KEY, "role": "admin", "name": "test-admin"},
                {"key": PUBLISHER_KEY, "role": "publisher", "name": "test-publisher"},
                {"key": SUBSCRIBER_KEY, "role": "subscriber", "name": "test-subscriber"},
                {"key": ALICE_KEY, "role": "subscriber", "agent": "alice", "name": "alice"},
            ],
        },
        "retention": {"interval": "1h"},
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return raw


def make_config(data_dir: Path, **sections: dict[str, Any]) -> Config:
    return config_from_dict(raw_config(data_dir, **sections), env={})


def write_config(path: Path, raw: dict[str, Any]) -> Path:
    """Write `raw` as TOML (just the shapes the tests use)."""
    lines: list[str] = []

    def key(k: str) -> str:
        return k if k.replace("_", "").replace("-", "").isalnum() else orjson.dumps(k).decode()

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return orjson.dumps(v).decode()
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{key(k)} = {value(x)}" for k, x in v.items()) + " }"
        raise TypeError(v)

    for section, content in raw.items():
        if isinstance(content, list):  # an array of tables, e.g. [[sources]]
            for item in content:
                lines.append(f"[[{section}]]")
                lines.extend(f"{k} = {value(v)}" for k, v in item.items())
            continue
        tables = {k: v for k, v in content.items() if isinstance(v, list) and v and isinstance(v[0], dict)}
        lines.append(f"[{section}]")
        for k, v in content.items():
            if k not in tables:
                lines.append(f"{k} = {value(v)}")
        for k, items in tables.items():
            for item in items:
                lines.append(f"[[{section}.{k}]]")
                lines.extend(f"{ik} = {value(iv)}" for ik, iv in item.items())
    path.write_text("\n".join(lines) + "\n")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def event(type_: str = "call.ringing", **data: Any) -> dict[str, Any]:
    return {"type": type_, "data": data}


class LoopbackHub:
    """What tests do with a hub on a loopback port, however it runs."""

    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def publish(self, *events: dict[str, Any], headers: dict[str, str] = PUBLISHER) -> list[int]:
        seqs = []
        with httpx.Client(base_url=self.url, headers=headers, timeout=WAIT) as client:
            for ev in events:
                r = client.post("/v1/events", json=ev)
                assert r.status_code in (200, 202), r.text
                seqs.append(r.json()["seq"])
        return seqs


class ServerThread(LoopbackHub):
    """The real hub under uvicorn (uvloop, httptools, websockets-sansio) in a thread, on a free port."""

    def __init__(self, config: Config, *, port: int | None = None) -> None:
        self.config = config
        self.port = port or free_port()
        self.app: CallhubApp = create_app(config)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # uvicorn wraps a passed-in descriptor as a Unix socket and so never sets TCP_NODELAY on
        # what it accepts; accepted sockets inherit it from the listener (Linux).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", self.port))
        self._sock = sock
        self.server = HubServer(build_uvicorn_config(self.app, config, fd=sock.fileno()), self.app)
        self.thread = threading.Thread(target=self.server.run, name="hub-server", daemon=True)
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def hub(self):  # type: ignore[no-untyped-def]
        return self.app.hub

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + WAIT
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("hub did not start")
            time.sleep(TICK / 5)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(WAIT)
        self._sock.close()

    def call(self, fn: Any, *args: Any) -> Any:
        """Run `fn(*args)` on the server's event loop and return its result (for inspecting hub state)."""
        result: list[Any] = []
        done = threading.Event()
        loop = self.server_loop()

        def run() -> None:
            result.append(fn(*args))
            done.set()

        loop.call_soon_threadsafe(run)
        done.wait(WAIT)
        return result[0]

    def run(self, coro: Any) -> Any:
        """Await `coro` on the server's event loop (e.g. `hub.store.trim(...)`)."""
        return asyncio.run_coroutine_threadsafe(coro, self.server_loop()).result(WAIT)

    def server_loop(self) -> asyncio.AbstractEventLoop:
        backend = self.hub.store
        loop = getattr(backend, "_loop", None)
        assert loop is not None
        return loop

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample from /metrics (0 if absent)."""
        text = httpx.get(f"{self.url}/metrics", timeout=WAIT).text
        want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            if key == want or (labels and _same_labels(key, name, labels)):
                return float(value)
        return 0.0

    def subscribers(self) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.url}/v1/subscribers", headers=ADMIN, timeout=WAIT)
        r.raise_for_status()
        subs: list[dict[str, Any]] = r.json()["subscribers"]
        return subs

    def wait_subscribers(self, n: int, *, state: str = "live") -> list[dict[str, Any]]:
        deadline = time.monotonic() + WAIT
        while True:
            subs = [s for s in self.subscribers() if s["state"] == state]
            if len(subs) >= n:
                return subs
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {n} {state} subscribers, have {subs}")
            time.sleep(TICK / 5)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class SwappableApp:
    """An ASGI app that forwards to `self.app`: one loopback server per module, a fresh simulator per test."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


class AppServer:
    """Any ASGI app (a vendor simulator) under uvicorn in a thread, on a free loopback port."""

    def __init__(self, app: Any, *, ws: str = "websockets-sansio") -> None:
        self.port = free_port()
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="auto", ws=ws,
            ws_per_message_deflate=False,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="app-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> AppServer:
        self.thread.start()
        wait_until(lambda: self.server.started or not self.thread.is_alive(), what="app server start")
        if not self.server.started:
            raise RuntimeError("app server did not start")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(WAIT)

    def __enter__(self) -> AppServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _same_labels(key: str, name: str, labels: dict[str, str]) -> bool:
    if not key.startswith(name + "{"):
        return False
    parts = dict(p.split("=", 1) for p in key[len(name) + 1 : -1].split(","))
    return {k: v.strip('"') for k, v in parts.items()} == labels


@dataclass
class SSEEvent:
    id: str | None
    event: str | None
    data: str

    @property
    def json(self) -> dict[str, Any]:
        parsed: dict[str, Any] = orjson.loads(self.data)
        return parsed


class SSEReader:
    """A minimal, strict EventSource-style parser over an httpx streaming response."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines = response.iter_lines()
        self.comments: list[str] = []
        self.retry: int | None = None

    def next(self) -> SSEEvent:
        fields: dict[str, str] = {}
        data: list[str] = []
        for line in self.lines:
            if line == "":
                if data or fields:
                    return SSEEvent(fields.get("id"), fields.get("event"), "\n".join(data))
                continue
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                data.append(value)
            elif name == "retry":
                self.retry = int(value)
            else:
                fields[name] = value
        raise EOFError("stream ended")

    def take(self, n: int) -> list[SSEEvent]:
        return [self.next() for _ in range(n)]


class HubProcess(LoopbackHub):
    """`python -m hub serve ARGS` as a child process, its output kept in a log file."""

    def __init__(self, args: list[str], port: int, log: Path, *, cwd: Path | None = None) -> None:
        self.port = port
        self.log = log
        env = {k: v for k, v in os.environ.items() if k != "CALLHUB_CONFIG"}
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hub", "serve", *args],
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
            )

    @property
    def output(self) -> str:
        return self.log.read_text()

    def wait_healthy(self) -> HubProcess:
        def healthy() -> bool:
            assert self.proc.poll() is None, f"hub exited early:\n{self.output}"
            try:
                return httpx.get(f"{self.url}/healthz", timeout=TICK * 10).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(healthy, what="hub /healthz")
        return self

    def sigterm(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(WAIT)

    def stop(self) -> int:
        """SIGTERM, then SIGKILL if it does not exit in time; the exit status."""
        if self.proc.poll() is None:
            self.sigterm()
            try:
                self.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def history(self) -> list[dict[str, Any]]:
        """Every stored event, oldest first, read page by page through `GET /v1/events`."""
        events: list[dict[str, Any]] = []
        after = 0
        with httpx.Client(base_url=self.url, headers=ADMIN, timeout=WAIT) as client:
            while True:
                r = client.get("/v1/events", params={"after": after, "limit": 1000})
                assert r.status_code == 200, r.text
                page = r.json()
                events += page["events"]
                if not page["events"]:
                    return events
                after = page["next"]

    def subscriber_count(self) -> int:
        r = httpx.get(f"{self.url}/v1/subscribers", headers=ADMIN, timeout=WAIT)
        r.raise_for_status()
        count: int = r.json()["count"]
        return count


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hub", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=timeout,
    )


def wait_until(predicate: Any, *, timeout: float = WAIT, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(TICK / 5)


def iter_ws_json(ws: Any, n: int) -> Iterator[dict[str, Any]]:
    for _ in range(n):
        yield orjson.loads(ws.recv(timeout=WAIT))
