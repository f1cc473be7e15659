"""The AntRing call-signal socket client against the simulator, over every `ws_protocol` revision."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from handlers.antring.simulator.signals import SignalServer
from handlers.antring.socket import (
    PROTOCOLS,
    AuthRejected,
    ConnectionLost,
    SignalStreamError,
    stream_signals,
)
from handlers.antring.socket.base import binding_matches, unwrap
from tests.helpers import TICK, WAIT, AppServer, free_port, wait_until

ACCOUNT = "acc-3f2a9c"
TOKEN = "voice-token-6a1f0e5b9d"
BAD_TOKEN = "stale-token-0c7d2e4a"
BINDINGS = ["call.CHANNEL_CREATE.*", "call.CHANNEL_ANSWER.*", "call.CHANNEL_DESTROY.*"]
#: Short heartbeats for the tests that watch them.
PING_INTERVAL = 2 * TICK
PING_TIMEOUT = 6 * TICK
#: "Promptly": well under any default heartbeat.
PROMPTLY = 40 * TICK


def kazoo(call_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "Call-ID": call_id,
        "Call-Direction": "inbound",
        "Caller-ID-Number": "0901234567",
        "Callee-ID-Number": "1001",
        "Custom-Channel-Vars": {"Account-ID": ACCOUNT, "Owner-ID": "owner-1"},
        **extra,
    }


class Client:
    """`stream_signals` in a thread of its own with its own event loop, recording what it gets."""

    def __init__(self, protocol: str, url: str, *, token: str = TOKEN, bindings: list[str] = BINDINGS) -> None:
        self.protocol, self.url, self.token, self.bindings = protocol, url, token, bindings
        self.signals: list[tuple[str, dict[str, Any]]] = []
        self.subscribed = threading.Event()
        self.done = threading.Event()
        self.error: BaseException | None = None
        self._started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._thread = threading.Thread(target=self._run, name=f"signals-{protocol}", daemon=True)

    def _run(self) -> None:
        async def on_signal(name: str, payload: dict[str, Any]) -> None:
            self.signals.append((name, payload))

        async def main() -> None:
            self._loop, self._task = asyncio.get_running_loop(), asyncio.current_task()
            self._started.set()
            await stream_signals(
                self.protocol, self.url, account_id=ACCOUNT, auth_token=self.token, bindings=self.bindings,
                on_signal=on_signal, on_subscribed=self.subscribed.set, open_timeout=WAIT,
            )

        try:
            asyncio.run(main())
        except BaseException as exc:  # CancelledError too: record whatever ended the stream
            self.error = exc
        finally:
            self._started.set()
            self.done.set()

    def start(self) -> Client:
        self._thread.start()
        assert self._started.wait(WAIT)
        return self

    def stop(self) -> None:
        if not self.done.is_set() and self._loop is not None and self._task is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(WAIT)
        assert not self._thread.is_alive(), "client did not stop"

    def wait_subscribed(self) -> None:
        wait_until(lambda: self.subscribed.is_set() or self.done.is_set(), what="subscribed")
        assert self.subscribed.is_set(), f"stream ended: {self.error!r}"

    def wait_error(self, timeout: float = WAIT) -> BaseException:
        assert self.done.wait(timeout), "stream did not end"
        assert self.error is not None
        return self.error

    def wait_signals(self, n: int) -> list[tuple[str, dict[str, Any]]]:
        wait_until(lambda: len(self.signals) >= n or self.done.is_set(), what=f"{n} signals")
        assert len(self.signals) >= n, f"got {self.signals}, stream ended: {self.error!r}"
        return list(self.signals)


Serve = Callable[..., tuple[SignalServer, AppServer]]
Connect = Callable[..., Client]


@pytest.fixture(params=list(PROTOCOLS))
def protocol(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def serve(protocol: str) -> Iterator[Serve]:
    """Start a signal simulator for `protocol` (options as for SignalServer) on a loopback port."""
    with contextlib.ExitStack() as stack:

        def start(**options: Any) -> tuple[SignalServer, AppServer]:
            server = SignalServer(protocol, lambda token: token == TOKEN, ACCOUNT, **options)
            return server, stack.enter_context(AppServer(server.app))

        yield start


@pytest.fixture
def connect(serve: Serve, protocol: str) -> Iterator[Connect]:
    """Start clients; they are stopped before the simulators."""
    clients: list[Client] = []

    def start(app: AppServer, **options: Any) -> Client:
        client = Client(protocol, app.url, **options).start()
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.stop()


def subscribed(server: SignalServer, client: Client, n: int = len(BINDINGS)) -> None:
    client.wait_subscribed()
    wait_until(lambda: len(server.subscriptions) == n, what=f"{n} subscriptions")


def test_subscribes_every_binding(serve: Serve, connect: Connect) -> None:
    """The client subscribes every binding once, with the account id and token, on one connection."""
    server, app = serve()
    client = connect(app)
    subscribed(server, client)
    assert server.connections == 1
    seen = sorted((s.account_id, s.auth_token, s.binding) for s in server.subscriptions)
    assert seen == sorted((ACCOUNT, TOKEN, binding) for binding in BINDINGS)


def test_events_arrive_in_order_bare(serve: Serve, connect: Connect) -> None:
    """Events for subscribed bindings arrive in order; bare and {name, args}-wrapped payloads arrive bare."""
    server, app = serve()
    client = connect(app)
    subscribed(server, client)
    sent = [
        ("CHANNEL_CREATE", kazoo("c1"), False),
        ("CHANNEL_ANSWER", kazoo("c1"), True),
        ("CHANNEL_CREATE", kazoo("c2"), True),
        ("CHANNEL_DESTROY", kazoo("c1", **{"Hangup-Cause": "NORMAL_CLEARING", "Duration-Seconds": 42}), False),
    ]
    for name, payload, wrapped in sent:
        assert server.emit_threadsafe(name, payload, wrapped=wrapped) == 1
    assert client.wait_signals(len(sent)) == [(name, payload) for name, payload, _ in sent]


def test_unsubscribed_binding_not_delivered(serve: Serve, connect: Connect) -> None:
    """An event for a binding the client did not subscribe does not arrive."""
    server, app = serve()
    client = connect(app, bindings=["call.CHANNEL_CREATE.*"])
    subscribed(server, client, 1)
    assert server.emit_threadsafe("CHANNEL_ANSWER", kazoo("c1")) == 0
    assert server.emit_threadsafe("CHANNEL_CREATE", kazoo("c2")) == 1
    assert client.wait_signals(1) == [("CHANNEL_CREATE", kazoo("c2"))]
    time.sleep(4 * TICK)
    assert client.signals == [("CHANNEL_CREATE", kazoo("c2"))]


def test_bad_token_is_auth_rejected(serve: Serve, connect: Connect) -> None:
    """A subscribe with a token the server refuses ends the stream with AuthRejected."""
    server, app = serve()
    client = connect(app, token=BAD_TOKEN)
    error = client.wait_error()
    assert isinstance(error, AuthRejected), repr(error)
    assert isinstance(error, SignalStreamError)
    assert server.refused and {s.auth_token for s in server.refused} == {BAD_TOKEN}
    assert server.subscriptions == []


def test_drop_all_is_connection_lost(serve: Serve, connect: Connect) -> None:
    """The server dropping the connection ends the stream promptly with ConnectionLost."""
    server, app = serve()
    client = connect(app)
    subscribed(server, client)
    server.drop_all_threadsafe()
    error = client.wait_error(PROMPTLY)
    assert isinstance(error, ConnectionLost), repr(error)
    wait_until(lambda: server.connections == 0, what="no connections")


def test_open_failure_is_connection_lost(protocol: str) -> None:
    """Nothing listening at the URL ends the stream promptly with ConnectionLost."""
    client = Client(protocol, f"http://127.0.0.1:{free_port()}").start()
    try:
        error = client.wait_error(PROMPTLY)
        assert isinstance(error, ConnectionLost), repr(error)
    finally:
        client.stop()


@pytest.mark.parametrize("protocol", ["socketio", "socketio-eio3", "socketio-0.9"])
def test_heartbeats_keep_idle_connection_open(serve: Serve, connect: Connect) -> None:
    """Heartbeats keep an idle connection open past many ping intervals."""
    server, app = serve(ping_interval=PING_INTERVAL, ping_timeout=PING_TIMEOUT)
    client = connect(app)
    subscribed(server, client)
    time.sleep(10 * PING_INTERVAL)
    assert not client.done.is_set(), repr(client.error)
    assert server.connections == 1
    assert server.emit_threadsafe("CHANNEL_CREATE", kazoo("c1")) == 1
    assert client.wait_signals(1) == [("CHANNEL_CREATE", kazoo("c1"))]


@pytest.mark.parametrize("protocol", ["socketio-eio3", "socketio-0.9"])
def test_silent_server_is_connection_lost(serve: Serve, connect: Connect) -> None:
    """A server whose heartbeats stop is given up on within the heartbeat timeout."""
    server, app = serve(ping_interval=PING_INTERVAL, ping_timeout=PING_TIMEOUT, heartbeats=False)
    client = connect(app)
    subscribed(server, client)
    error = client.wait_error(PROMPTLY)
    assert isinstance(error, ConnectionLost), repr(error)


def test_token_never_logged(serve: Serve, connect: Connect, caplog: pytest.LogCaptureFixture) -> None:
    """Neither a good nor a refused token appears in the logs or in the errors, even at DEBUG."""
    caplog.set_level(logging.DEBUG)
    server, app = serve()
    good = connect(app)
    subscribed(server, good)
    server.emit_threadsafe("CHANNEL_CREATE", kazoo("c1"), wrapped=True)
    good.wait_signals(1)
    server.drop_all_threadsafe()
    bad = connect(app, token=BAD_TOKEN)
    errors = [good.wait_error(), bad.wait_error()]
    assert caplog.records, "nothing was logged: the test proves nothing"
    for text in [caplog.text, *map(str, errors), *map(repr, errors)]:
        assert TOKEN not in text and BAD_TOKEN not in text


def test_payload_helpers() -> None:
    """Wrapped payloads unwrap (args as dict or list, nested), bindings name events and match keys."""
    payload = kazoo("c1")
    assert unwrap(payload) == (None, payload)
    assert unwrap({"name": "CHANNEL_CREATE", "args": payload}) == ("CHANNEL_CREATE", payload)
    assert unwrap({"name": "CHANNEL_CREATE", "args": ["x", payload]}) == ("CHANNEL_CREATE", payload)
    assert unwrap([{"args": {"name": "CHANNEL_ANSWER", "args": [payload]}}]) == ("CHANNEL_ANSWER", payload)
    assert unwrap(["not an object"]) == (None, None)
    assert binding_matches("call.CHANNEL_CREATE.*", "call.CHANNEL_CREATE.abc")
    assert not binding_matches("call.CHANNEL_CREATE.*", "call.CHANNEL_ANSWER.abc")
    assert not binding_matches("call.CHANNEL_CREATE.*", "call.CHANNEL_CREATE.a.b")
    assert binding_matches("call.#", "call.CHANNEL_CREATE.a.b")
    assert binding_matches("call.*.*", "call.CHANNEL_HOLD.abc")
