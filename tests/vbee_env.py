"""A Vbee on loopback (campaign API simulator) with a hub wired to it, and a flaky gateway that
stands between the simulated sender and the hub (answers lost, 5xx)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from handlers.vbee import VbeeConfig
from handlers.vbee.simulator import API_PREFIX, CampaignRunner, RunnerConfig, SimState, build_app
from hub.config import config_from_dict
from hub.plugin import handler_sections
from tests.helpers import ADMIN, TICK, WAIT, AppServer, ServerThread, raw_config

WEBHOOK_TOKEN = "vbee-hook-token-0123456789abcdef"
API_KEY = "vbee-api-key-test"
#: 32+ bytes: PyJWT warns about shorter HS256 keys, and warnings are errors here.
API_SECRET = "vbee-api-secret-0123456789abcdef-0123"


#: The campaigns the tests' simulated AICall app has (Vbee refuses any other id).
CAMPAIGNS = frozenset({"camp-0001", "camp-callback"})


def sim_state(**knobs: Any) -> SimState:
    knobs.setdefault("campaigns_known", set(CAMPAIGNS))
    return SimState(apps={API_KEY: API_SECRET}, **knobs)


def vbee_section(api_url: str | None, **extra: Any) -> dict[str, Any]:
    section: dict[str, Any] = {"webhook_token": WEBHOOK_TOKEN, "request_timeout": 40 * TICK}
    if api_url is not None:
        section.update(base_url=api_url + API_PREFIX, api_key=API_KEY, api_secret=API_SECRET)
    section.update(extra)
    return section


def vbee_hub(data_dir: Path, api_url: str | None, *, server: dict[str, Any] | None = None,
             **vbee: Any) -> ServerThread:
    raw = raw_config(data_dir, **({"server": server} if server else {}))
    raw["vbee"] = vbee_section(api_url, **vbee)
    config = config_from_dict(raw, env={}, handler_sections=handler_sections())
    assert isinstance(config.handlers["vbee"], VbeeConfig)
    return ServerThread(config)


class FlakyGateway:
    """A reverse proxy in front of the hub that fails on demand, as load balancers do during trouble.

    `fail_before` answers the next N requests 503 without forwarding them; `lose_answer` forwards
    the next N (the hub commits) and answers 502 instead of the hub's answer.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.fail_before = 0
        self.lose_answer = 0
        self.failed = 0
        self._lock = threading.Lock()
        self._client: aiohttp.ClientSession | None = None

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            # aiohttp: httpx's pool slows to ~100 requests/s at 64 in flight, and bursts pass through here.
            connector = aiohttp.TCPConnector(limit=128)
            async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=WAIT)) as client:
                self._client = client
                yield

        self.app = Starlette(routes=[Route("/{path:path}", self._forward, methods=["POST"])], lifespan=lifespan)

    def _take(self, name: str) -> bool:
        with self._lock:
            if getattr(self, name) > 0:
                setattr(self, name, getattr(self, name) - 1)
                self.failed += 1
                return True
        return False

    async def _forward(self, request: Request) -> Response:
        if self._take("fail_before"):
            return JSONResponse({"error": "upstream unavailable"}, status_code=503)
        assert self._client is not None
        url = f"{self.upstream}{request.url.path}?{request.url.query}"
        async with self._client.post(url, data=await request.body(),
                                     headers={"Content-Type": request.headers.get("content-type", "")}) as answer:
            content, status = await answer.read(), answer.status
        if self._take("lose_answer"):
            return JSONResponse({"error": "bad gateway"}, status_code=502)
        return Response(content, status_code=status, media_type="application/json")


@dataclass
class VbeeWorld:
    state: SimState
    api: AppServer
    hub: ServerThread
    gateway: FlakyGateway
    gateway_server: AppServer

    @property
    def webhook_url(self) -> str:
        """The hub's Vbee webhook as the simulated Vbee reaches it: through the gateway."""
        return f"{self.gateway_server.url}/v1/webhooks/vbee?token={WEBHOOK_TOKEN}"

    def runner(self, **knobs: Any) -> CampaignRunner:
        knobs.setdefault("backoff", TICK / 5)
        knobs.setdefault("max_backoff", TICK)
        knobs.setdefault("request_timeout", WAIT)
        return CampaignRunner(self.state, RunnerConfig(self.webhook_url, **knobs))

    def add_contacts(self, campaign_id: str, contacts: list[dict[str, Any]],
                     headers: dict[str, str] = ADMIN) -> httpx.Response:
        return httpx.post(f"{self.hub.url}/v1/campaigns/{campaign_id}/contacts", content=orjson.dumps(
            {"contacts": contacts}), headers={**headers, "Content-Type": "application/json"}, timeout=WAIT)

    def history(self, types: str = "*") -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        after = 0
        while True:
            r = httpx.get(f"{self.hub.url}/v1/events", params={"after": after, "limit": 1000, "types": types},
                          headers=ADMIN, timeout=WAIT)
            page = r.json()
            events += page["events"]
            if not page["events"]:
                return events
            after = page["next"]


@contextmanager
def vbee_world(data_dir: Path, state: SimState | None = None, **vbee: Any) -> Iterator[VbeeWorld]:
    state = state or sim_state()
    with ExitStack() as stack:
        api = stack.enter_context(AppServer(build_app(state)))
        hub = stack.enter_context(vbee_hub(data_dir, api.url, **vbee))
        gateway = FlakyGateway(hub.url)
        gateway_server = stack.enter_context(AppServer(gateway.app))
        yield VbeeWorld(state, api, hub, gateway, gateway_server)
