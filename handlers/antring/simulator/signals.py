"""A loopback AntRing call-signal socket speaking any of the four `ws_protocol` revisions.

    server = SignalServer("socketio", token_valid=lambda t: t == token, account_id="acc")
    with AppServer(server.app):                  # any ASGI server
        server.emit_threadsafe("CHANNEL_CREATE", {"Call-ID": "c1", ...})

Revision by revision (see `handlers.antring.socket` for the client side):

    socketio       python-socketio's own AsyncServer + ASGIApp (Engine.IO 4), at /socket.io/
    socketio-eio3  Engine.IO 3 websocket transport, at /socket.io/?EIO=3&transport=websocket
    socketio-0.9   GET /socket.io/1/ handshake, then /socket.io/1/websocket/<sid>
    blackhole      plain WebSocket JSON at /

A `subscribe` is accepted when `token_valid(auth_token)` and the account is `account_id`. A refused
one is answered the way the clients assume AntRing does (undocumented): Socket.IO revisions emit an
`error` event `{"message": …}` and disconnect; Blackhole replies `"status": "error"`.

`emit` sends an event to every connection with a binding that matches the routing key
`call.<NAME>.<Call-ID>` (KAZOO wildcards: `*` one word, `#` any). `drop_all` closes every
connection without the protocol's goodbye, as a crashed or restarted server would. State lives on
the server's event loop; the `*_threadsafe` wrappers let a test thread drive it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import socketio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketState

from handlers.antring.socket.base import binding_matches

PROTOCOLS = ("socketio", "socketio-eio3", "socketio-0.9", "blackhole")
#: WebSocket close codes.
CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008
CLOSE_RESTART = 1012
#: How long a `*_threadsafe` call waits for the server's loop.
THREADSAFE_TIMEOUT = 10.0
#: Socket.IO 0.9 `close_timeout` in the handshake (meaningless for websockets, but part of the answer).
CLOSE_TIMEOUT_09 = 60
REFUSED = "invalid auth token"

log = logging.getLogger(__name__)
_library_log = log.getChild("library")


@dataclass(frozen=True)
class Subscription:
    """One accepted subscribe: which connection, for which account, with which token and binding."""

    connection: int
    account_id: str
    auth_token: str
    binding: str


class _Connection:
    """One client connection: its accepted bindings, and how to reach or drop it."""

    def __init__(self, number: int, send: Callable[[str, Any, str, str], Awaitable[None]],
                 abort: Callable[[], Awaitable[None]]) -> None:
        self.number = number
        self.subscriptions: list[Subscription] = []
        self._send = send
        self._abort = abort

    def binding_for(self, routing_key: str) -> str | None:
        return next((s.binding for s in self.subscriptions if binding_matches(s.binding, routing_key)), None)

    async def send(self, name: str, body: Any, binding: str, routing_key: str) -> None:
        await self._send(name, body, binding, routing_key)

    async def abort(self) -> None:
        await self._abort()


class SignalServer:
    """An ASGI app (`app`) serving the call-signal socket in `protocol`; see the module docstring."""

    def __init__(
        self,
        protocol: str,
        token_valid: Callable[[str], bool],
        account_id: str,
        *,
        ping_interval: float = 25.0,
        ping_timeout: float = 5.0,
        heartbeats: bool = True,
    ) -> None:
        """`ping_interval`/`ping_timeout` are the Engine.IO ping settings (for 0.9: heartbeat every
        `ping_interval`, heartbeat timeout `ping_interval + ping_timeout`). `heartbeats=False` makes
        the hand-written revisions stop answering (EIO3) or sending (0.9) heartbeats."""
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}")
        self.protocol = protocol
        self.token_valid = token_valid
        self.account_id = account_id
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.heartbeats = heartbeats
        #: Subscribes refused, for tests (as `Subscription`s that were not kept).
        self.refused: list[Subscription] = []
        self._connections: dict[int, _Connection] = {}
        self._numbers = itertools.count(1)
        self._sessions_09: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sio: socketio.AsyncServer | None = None
        self.app: Any = self._socketio_app() if protocol == "socketio" else self._starlette_app()

    # -- inspection and control ------------------------------------------------------------------

    @property
    def connections(self) -> int:
        return len(self._connections)

    @property
    def subscriptions(self) -> list[Subscription]:
        """Accepted subscriptions of the open connections, in connection then arrival order."""
        return [s for c in list(self._connections.values()) for s in list(c.subscriptions)]

    async def emit(self, name: str, payload: dict[str, Any], *, wrapped: bool = False) -> int:
        """Send call event `name` to every connection subscribed to it; how many it reached."""
        routing_key = f"call.{name}.{payload.get('Call-ID', 'unknown')}"
        body: Any = {"name": name, "args": payload} if wrapped else payload
        sends = []
        for connection in list(self._connections.values()):
            binding = connection.binding_for(routing_key)
            if binding is not None:
                sends.append(connection.send(name, body, binding, routing_key))
        await asyncio.gather(*sends)
        return len(sends)

    async def drop_all(self) -> None:
        """Close every connection abruptly (no protocol-level disconnect first)."""
        connections = list(self._connections.values())
        self._connections.clear()
        await asyncio.gather(*(c.abort() for c in connections))

    def emit_threadsafe(self, name: str, payload: dict[str, Any], *, wrapped: bool = False) -> int:
        """`emit` from another thread (a test): runs on the server's loop and waits for it."""
        loop = self._require_loop()
        return asyncio.run_coroutine_threadsafe(self.emit(name, payload, wrapped=wrapped), loop).result(
            THREADSAFE_TIMEOUT
        )

    def drop_all_threadsafe(self) -> None:
        """`drop_all` from another thread (a test)."""
        loop = self._require_loop()
        asyncio.run_coroutine_threadsafe(self.drop_all(), loop).result(THREADSAFE_TIMEOUT)

    def _require_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("the signal server has not started (no lifespan, no connection yet)")
        return self._loop

    def _capture_loop(self) -> None:
        self._loop = asyncio.get_running_loop()

    # -- the shared subscribe rule ---------------------------------------------------------------

    def _connect(self, send: Callable[[str, Any, str, str], Awaitable[None]],
                 abort: Callable[[], Awaitable[None]]) -> _Connection:
        self._capture_loop()
        connection = _Connection(next(self._numbers), send, abort)
        self._connections[connection.number] = connection
        return connection

    def _disconnect(self, connection: _Connection) -> None:
        self._connections.pop(connection.number, None)

    def _subscribe(self, connection: _Connection, account_id: Any, auth_token: Any, binding: Any) -> str | None:
        """Record a subscribe; the refusal message, or None when accepted."""
        if not all(isinstance(x, str) and x for x in (account_id, auth_token, binding)):
            return "account_id, auth_token and binding are required"
        subscription = Subscription(connection.number, account_id, auth_token, binding)
        if account_id != self.account_id or not self.token_valid(auth_token):
            self.refused.append(subscription)
            log.info("signal simulator: refused %s for account %s", binding, account_id)
            return REFUSED
        connection.subscriptions.append(subscription)
        return None

    # -- socketio: the library's own server --------------------------------------------------------

    def _socketio_app(self) -> Any:
        sio = socketio.AsyncServer(
            async_mode="asgi",
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
            logger=_library_log,
            # Engine.IO's server logs whole packets, tokens included: keep it at its quiet default.
            engineio_logger=False,
        )
        self._sio = sio
        by_sid: dict[str, _Connection] = {}

        async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
            async def send(name: str, body: Any, binding: str, routing_key: str) -> None:
                await sio.emit(name, body, to=sid)

            async def abort() -> None:
                eio_sid = sio.manager.eio_sid_from_sid(sid, "/")
                if eio_sid is not None:
                    await sio.eio.disconnect(eio_sid)

            by_sid[sid] = self._connect(send, abort)

        async def disconnect(sid: str, reason: Any = None) -> None:
            connection = by_sid.pop(sid, None)
            if connection is not None:
                self._disconnect(connection)

        async def subscribe(sid: str, data: Any = None) -> None:
            connection = by_sid.get(sid)
            if connection is None:
                return
            data = data if isinstance(data, dict) else {}
            refusal = self._subscribe(connection, data.get("account_id"), data.get("auth_token"), data.get("binding"))
            if refusal is not None:
                await sio.emit("error", {"message": refusal}, to=sid)
                await sio.disconnect(sid)

        sio.on("connect", connect)
        sio.on("disconnect", disconnect)
        sio.on("subscribe", subscribe)
        return socketio.ASGIApp(sio, on_startup=self._capture_loop, on_shutdown=sio.shutdown)

    # -- the hand-written revisions on Starlette ---------------------------------------------------

    def _starlette_app(self) -> Starlette:
        if self.protocol == "socketio-eio3":
            routes: list[Route | WebSocketRoute] = [
                WebSocketRoute("/socket.io/", self._eio3),
                WebSocketRoute("/socket.io", self._eio3),
            ]
        elif self.protocol == "socketio-0.9":
            routes = [
                Route("/socket.io/1/", self._handshake_09, methods=["GET"]),
                Route("/socket.io/1", self._handshake_09, methods=["GET"]),
                WebSocketRoute("/socket.io/1/websocket/{sid}", self._socketio_09),
            ]
        else:
            routes = [WebSocketRoute("/", self._blackhole)]

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            self._capture_loop()
            yield

        return Starlette(routes=routes, lifespan=lifespan)

    def _websocket_connection(self, websocket: WebSocket,
                              send: Callable[[str, Any, str, str], Awaitable[None]]) -> _Connection:
        async def abort() -> None:
            await _close(websocket, CLOSE_RESTART)

        return self._connect(send, abort)

    async def _receive(self, websocket: WebSocket, timeout: float | None) -> str | None:
        """The next text frame; None when the client left, went silent for `timeout`, or we closed."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    message = await websocket.receive()
                    if message["type"] == "websocket.disconnect":
                        return None
                    if message.get("text") is not None:
                        return str(message["text"])
        except TimeoutError:
            return None
        except RuntimeError:  # closed by drop_all while receiving
            return None

    async def _eio3(self, websocket: WebSocket) -> None:
        if websocket.query_params.get("EIO") != "3" or websocket.query_params.get("transport") != "websocket":
            await websocket.close(CLOSE_POLICY)
            return
        await websocket.accept()

        async def send(name: str, body: Any, binding: str, routing_key: str) -> None:
            await _send(websocket, "42" + orjson.dumps([name, body]).decode())

        connection = self._websocket_connection(websocket, send)
        try:
            info = {
                "sid": secrets.token_urlsafe(15),
                "upgrades": [],
                "pingInterval": int(self.ping_interval * 1000),
                "pingTimeout": int(self.ping_timeout * 1000),
            }
            await _send(websocket, "0" + orjson.dumps(info).decode())
            await _send(websocket, "40")
            while True:
                # The client pings every interval; silence past interval + timeout means it is gone.
                text = await self._receive(websocket, self.ping_interval + self.ping_timeout)
                if text is None or text in ("1", "41"):
                    break
                if text.startswith("2"):
                    if self.heartbeats:
                        await _send(websocket, "3" + text[1:])
                elif text.startswith("42"):
                    event = _json(text[2:].lstrip("0123456789"))
                    if not (isinstance(event, list) and event and event[0] == "subscribe"):
                        continue
                    data = event[1] if len(event) > 1 and isinstance(event[1], dict) else {}
                    refusal = self._subscribe(connection, data.get("account_id"), data.get("auth_token"), data.get("binding"))
                    if refusal is not None:
                        await _send(websocket, "42" + orjson.dumps(["error", {"message": refusal}]).decode())
                        await _send(websocket, "41")
                        break
        finally:
            self._disconnect(connection)
            await _close(websocket, CLOSE_NORMAL)

    async def _handshake_09(self, request: Request) -> Response:
        sid = secrets.token_hex(10)
        self._sessions_09.add(sid)
        heartbeat_timeout = self.ping_interval + self.ping_timeout
        return PlainTextResponse(f"{sid}:{heartbeat_timeout:g}:{CLOSE_TIMEOUT_09}:websocket")

    async def _socketio_09(self, websocket: WebSocket) -> None:
        await websocket.accept()
        sid = websocket.path_params["sid"]
        if sid not in self._sessions_09:
            await _send(websocket, "7:::1+0")  # client not handshaken; advice: reconnect
            await _close(websocket, CLOSE_POLICY)
            return
        self._sessions_09.discard(sid)

        async def send(name: str, body: Any, binding: str, routing_key: str) -> None:
            await _send(websocket, "5:::" + orjson.dumps({"name": name, "args": [body]}).decode())

        connection = self._websocket_connection(websocket, send)
        heartbeat = asyncio.create_task(self._heartbeat_09(websocket), name="signal-sim-heartbeat")
        try:
            await _send(websocket, "1::")
            while True:
                # The client echoes every heartbeat; silence past the heartbeat timeout means it is gone.
                text = await self._receive(websocket, self.ping_interval + self.ping_timeout)
                if text is None or text.startswith("0:"):
                    break
                if not text.startswith("5:"):
                    continue  # heartbeat echoes and the rest only prove the client alive
                event = _json(text.split(":", 3)[3] if text.count(":") >= 3 else "")
                if not (isinstance(event, dict) and event.get("name") == "subscribe"):
                    continue
                args = event.get("args")
                data = args[0] if isinstance(args, list) and args and isinstance(args[0], dict) else {}
                refusal = self._subscribe(connection, data.get("account_id"), data.get("auth_token"), data.get("binding"))
                if refusal is not None:
                    error = {"name": "error", "args": [{"message": refusal}]}
                    await _send(websocket, "5:::" + orjson.dumps(error).decode())
                    await _send(websocket, "0::")
                    break
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            self._disconnect(connection)
            await _close(websocket, CLOSE_NORMAL)

    async def _heartbeat_09(self, websocket: WebSocket) -> None:
        while True:
            await asyncio.sleep(self.ping_interval)
            if self.heartbeats:
                await _send(websocket, "2::")

    async def _blackhole(self, websocket: WebSocket) -> None:
        await websocket.accept()

        async def send(name: str, body: Any, binding: str, routing_key: str) -> None:
            event = {"action": "event", "subscribed_key": binding, "subscription_key": binding,
                     "name": name, "routing_key": routing_key, "data": body}
            await _send(websocket, orjson.dumps(event).decode())

        connection = self._websocket_connection(websocket, send)
        try:
            while True:
                text = await self._receive(websocket, None)
                if text is None:
                    break
                message = _json(text)
                if not isinstance(message, dict):
                    continue
                reply: dict[str, Any] = {"action": "reply", "request_id": message.get("request_id")}
                if message.get("action") == "subscribe":
                    data = message["data"] if isinstance(message.get("data"), dict) else {}
                    refusal = self._subscribe(connection, data.get("account_id"), message.get("auth_token"), data.get("binding"))
                    if refusal is None:
                        reply |= {"status": "success", "data": {"subscribed": [data.get("binding")]}}
                    else:
                        reply |= {"status": "error", "data": {"message": refusal}}
                elif message.get("action") == "ping":
                    reply |= {"status": "success", "data": {"response": "pong"}}
                else:
                    reply |= {"status": "error", "data": {"message": "unknown action"}}
                await _send(websocket, orjson.dumps(reply).decode())
        finally:
            self._disconnect(connection)
            await _close(websocket, CLOSE_NORMAL)


def _json(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None


async def _send(websocket: WebSocket, text: str) -> None:
    """Send unless the connection is already closed (a dropped client is not the sender's error)."""
    if websocket.application_state != WebSocketState.CONNECTED:
        return
    # uvicorn raises its ClientDisconnected (an OSError) once the peer has gone; Starlette raises
    # RuntimeError after a close was sent.
    with contextlib.suppress(OSError, RuntimeError):
        await websocket.send_text(text)


async def _close(websocket: WebSocket, code: int) -> None:
    if websocket.application_state == WebSocketState.CONNECTED:
        with contextlib.suppress(OSError, RuntimeError):
            await websocket.close(code)
