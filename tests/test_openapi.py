"""`/openapi.json` describes every endpoint the app serves, is valid OpenAPI 3.1, and the live hub keeps
to it (schemathesis); `/docs` renders it in a real Chromium without leaving loopback.

The hub here runs the demo configuration: every vendor (AntRing, AntCRM, Vbee) configured, their
simulators mounted on the hub's own port, so the vendors' routes are served and described too.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.testclient import TestClient
from websockets.sync.client import connect

from hub.apidoc import HIDDEN, operations_of
from hub.config import Config, config_from_dict
from hub.http.app import create_app
from hub.plugin import demo_overrides, handler_sections
from tests.browser import PageErrors, chromium, screenshot
from tests.helpers import (
    ADMIN,
    ADMIN_KEY,
    ALICE_KEY,
    PUBLISHER,
    WAIT,
    AppServer,
    HubProcess,
    event,
    free_port,
    raw_config,
    wait_until,
    write_config,
)

#: Endpoints schemathesis leaves alone, and why: they answer with a stream that never ends while
#: the subscriber is live, which a request/response check cannot read to its end. Their error
#: answers are covered in tests/test_streams.py.
NOT_FUZZED = {("GET", "/v1/stream")}
#: Cases per operation: about 30 operations, a few hundred cases, a few tens of seconds.
EXAMPLES = 15


def hub_file(data_dir: Path, port: int) -> dict[str, Any]:
    """The config file the hub runs with `--demo` (which adds the vendor sections and the demo's rules)."""
    raw = raw_config(data_dir, server={"port": port})
    raw["sources"] = [{"name": "crm-hooks", "verify": "token", "secret": "hook-token-0123456789", "type": "crm.x"}]
    raw["webhooks"] = {"allow_hosts": ["127.0.0.1"]}  # a subscription may deliver to a loopback receiver
    # The demo's calls slowed a thousandfold: one starts ringing, then the hub is quiet while it is fuzzed.
    raw["demo"] = {"speed": 1000.0}
    return raw


def demo_config(data_dir: Path, port: int) -> Config:
    """What `serve --demo` builds from `hub_file`."""
    return config_from_dict(hub_file(data_dir, port), env={}, handler_sections=handler_sections(),
                            overrides=demo_overrides(port))


def openapi_path(path: str) -> str:
    return re.sub(r"\{(\w+)(:\w+)?\}", r"{\1}", path)


def served(routes: list[BaseRoute], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(METHOD, path) for every endpoint the app serves, found by walking Starlette's routes."""
    for route in routes:
        if isinstance(route, Route):
            for method in route.methods or ():
                if method != "HEAD":
                    yield method, openapi_path(prefix + route.path)
        elif isinstance(route, WebSocketRoute):
            yield "GET", openapi_path(prefix + route.path)
        elif isinstance(route, Mount) and operations_of(route) is not HIDDEN:
            yield from served(list(route.routes), prefix + route.path)


@pytest.fixture(scope="module")
def spec_and_routes(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], list[BaseRoute]]:
    app = create_app(demo_config(tmp_path_factory.mktemp("spec") / "data", free_port()))
    with TestClient(app) as client:
        answer = client.get("/openapi.json")
    assert answer.status_code == 200
    spec: dict[str, Any] = answer.json()
    return spec, app.routes


def undescribed(spec: dict[str, Any], routes: list[BaseRoute]) -> list[str]:
    """`METHOD /path` of every served endpoint that has no operation in `spec`."""
    return sorted(f"{m} {p}" for m, p in set(served(routes)) if m.lower() not in spec["paths"].get(p, {}))


def test_every_served_route_and_method_is_described(spec_and_routes: tuple[dict[str, Any], list[BaseRoute]]) -> None:
    """Each route and method the live app serves (hub, vendors, streams, webhooks) has an operation."""
    spec, routes = spec_and_routes
    missing = undescribed(spec, routes)
    assert missing == [], f"routes without an OpenAPI operation (describe them beside the route): {missing}"
    described = {(m.upper(), p) for p, item in spec["paths"].items() for m in item}
    assert described == set(served(routes))  # nothing described that is not served
    for vendor_path in ("/v1/calls/click-to-call", "/v1/recordings/{media}", "/v1/campaigns/{campaign_id}/contacts"):
        assert vendor_path in spec["paths"]


def test_a_route_added_without_its_operation_is_caught(
        spec_and_routes: tuple[dict[str, Any], list[BaseRoute]]) -> None:
    """A new route (a metrics endpoint, say) or a new method on a described one fails the check above."""
    spec, routes = spec_and_routes

    async def endpoint(request: Any) -> Any:
        raise AssertionError

    added = [Route("/v1/stats/agents", endpoint, methods=["GET"]), Route("/v1/whoami", endpoint, methods=["DELETE"])]
    assert undescribed(spec, [*routes, *added]) == ["DELETE /v1/whoami", "GET /v1/stats/agents"]


def test_the_description_is_valid_openapi_3_1(spec_and_routes: tuple[dict[str, Any], list[BaseRoute]]) -> None:
    """openapi-spec-validator accepts the document; it names the auth schemes and every operation has
    responses and security."""
    spec, _ = spec_and_routes
    validate(spec)
    assert spec["openapi"].startswith("3.1")
    schemes = spec["components"]["securitySchemes"]
    assert {"apiKey", "agentJwt", "queryToken", "webhookToken", "webhookSignature"} <= set(schemes)
    for path, item in spec["paths"].items():
        for method, op in item.items():
            assert op["responses"] and "security" in op, f"{method} {path}"
    assert spec["paths"]["/v1/subscribers"]["get"]["security"] == [{"apiKey": ["admin"]}]
    assert {"queryToken": list(("admin", "publisher", "subscriber"))} in spec["paths"]["/v1/stream"]["get"]["security"]


def test_plain_http_to_the_websocket_endpoint_is_426(client: TestClient) -> None:
    """GET /v1/ws without the Upgrade handshake answers 426 with a JSON error, not 404."""
    answer = client.get("/v1/ws", headers=ADMIN)
    assert answer.status_code == 426
    assert answer.json()["error"]["code"] == "upgrade_required"


# -- the live hub against its description -----------------------------------------------------------------


@pytest.fixture(scope="module")
def live_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    """`callhub serve --demo` as its own process (the fuzzer's generation runs undisturbed by the hub's threads)."""
    folder = tmp_path_factory.mktemp("fuzz")
    port = free_port()
    config = write_config(folder / "hub.toml", hub_file(folder / "data", port))
    hub = HubProcess(["--config", str(config), "--demo"], port, folder / "hub.log").wait_healthy()
    yield hub
    assert hub.stop() == 0, hub.output


@pytest.mark.parametrize("credential", [ADMIN, {"Authorization": f"Bearer {ALICE_KEY}"}], ids=["admin", "agent"])
def test_the_live_hub_keeps_to_its_description(live_hub: HubProcess, credential: dict[str, str]) -> None:
    """With admin credentials (everything allowed), then an agent's (most refused, some scoped): a few
    cases per operation, no 5xx but a documented 502/503, and the status, content type, headers and
    body of every answer as described."""
    spec = httpx.get(f"{live_hub.url}/openapi.json", timeout=WAIT).json()
    schema = schemathesis.openapi.from_dict(spec)
    failures: list[str] = []
    checks = [not_a_server_error, status_code_conformance, content_type_conformance,
              response_headers_conformance, response_schema_conformance]
    operations = 0
    calls: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if (operation.method.upper(), operation.path) in NOT_FUZZED:
            continue
        operations += 1

        @given(case=st.one_of(operation.as_strategy(GenerationMode.POSITIVE),
                              operation.as_strategy(GenerationMode.NEGATIVE)))
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        def fuzz(case: Any) -> None:
            calls.append(f"{case.method} {case.formatted_path}")
            case.call_and_validate(base_url=live_hub.url, headers=dict(credential), timeout=WAIT, checks=checks)

        try:
            fuzz()
        except (Exception, BaseExceptionGroup) as exc:  # one report per operation, then the next one
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}"[:3000])
    assert operations >= 25 and len(calls) >= 200, len(calls)
    assert failures == [], "\n\n".join(failures)


def conforms(spec: dict[str, Any], method: str, path: str, answer: httpx.Response) -> Any:
    """`answer`'s JSON body, after checking it against the schema `spec` gives for its status."""
    response = spec["paths"][path][method]["responses"][str(answer.status_code)]
    schema = response["content"]["application/json"]["schema"]
    body = answer.json()
    # The document is the root, so the schema's `#/components/...` references resolve.
    Draft202012Validator({**spec, **schema}).validate(body)
    return body


def test_answers_holding_data_match_their_schemas(live_hub: HubProcess) -> None:
    """Beyond the fuzzing (which mostly sees empty lists): a live subscriber, a subscription with a delivery,
    the demo's rules and upstreams, stored events; each answer matches its operation's schema."""
    spec = httpx.get(f"{live_hub.url}/openapi.json", timeout=WAIT).json()

    async def hook(request: Any) -> Response:
        return Response(status_code=204)

    with AppServer(Starlette(routes=[Route("/hook", hook, methods=["POST"])])) as receiver, \
            httpx.Client(base_url=live_hub.url, headers=ADMIN, timeout=WAIT) as client, \
            connect(f"{live_hub.ws_url}/v1/ws?token={ADMIN_KEY}"):
        created = conforms(spec, "post", "/v1/subscriptions",
                           client.post("/v1/subscriptions", json={"url": f"{receiver.url}/hook", "types": ["spec.*"]}))
        sub = created["id"]
        conforms(spec, "post", "/v1/events", client.post("/v1/events", json=event("spec.checked", agent="alice"),
                                                          headers=PUBLISHER))
        subscribers = conforms(spec, "get", "/v1/subscribers", client.get("/v1/subscribers"))
        assert subscribers["count"] >= 1
        log: dict[str, Any] = {}

        def delivered() -> bool:
            log.update(client.get(f"/v1/subscriptions/{sub}/deliveries").json())
            return bool(log["deliveries"])

        wait_until(delivered, what="a delivery")
        answer = client.get(f"/v1/subscriptions/{sub}/deliveries")
        assert conforms(spec, "get", "/v1/subscriptions/{id}/deliveries", answer)["deliveries"][0]["outcome"] == \
            "delivered"
        conforms(spec, "get", "/v1/subscriptions/{id}", client.get(f"/v1/subscriptions/{sub}"))
        conforms(spec, "get", "/v1/subscriptions", client.get("/v1/subscriptions"))
        assert conforms(spec, "get", "/v1/rules", client.get("/v1/rules"))["rules"]
        assert conforms(spec, "get", "/v1/events", client.get("/v1/events", params={"limit": 1000}))["events"]
        assert "antring" in conforms(spec, "get", "/readyz", client.get("/readyz"))["upstreams"]
        conforms(spec, "get", "/v1/whoami", client.get("/v1/whoami"))
        assert client.delete(f"/v1/subscriptions/{sub}").status_code == 204


# -- /docs ----------------------------------------------------------------------------------------------------


def test_docs_page_lists_the_endpoints_in_a_real_browser(live_hub: HubProcess) -> None:
    """Chromium opens /docs: every operation is listed, no script error, no request leaves loopback."""
    spec = httpx.get(f"{live_hub.url}/openapi.json", timeout=WAIT).json()
    operations = sum(len(item) for item in spec["paths"].values())
    requested: list[str] = []
    with chromium() as browser:
        page = browser.new_page()
        errors = PageErrors(page)
        page.on("request", lambda request: requested.append(request.url))
        page.goto(f"{live_hub.url}/docs")
        page.wait_for_selector(f"body[data-loaded='{operations}']", timeout=WAIT * 1000)
        text = page.inner_text("main")
        screenshot(page, "api-docs", full_page=False)
    assert "/v1/events" in text and "/v1/calls/click-to-call" in text and "Publish an event" in text
    assert errors.messages == []
    outside = [url for url in requested if not url.startswith(f"{live_hub.url}/")]
    assert outside == [], f"/docs fetched from outside loopback: {outside}"
