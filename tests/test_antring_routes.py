"""Click-to-call and recordings through the hub, against the AntRing simulator."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from handlers.antring.simulator.calls import inbound_answered
from hub.auth import issue_token
from tests.antring_env import ACCOUNT, ALICE, AntRingWorld, antring_world
from tests.helpers import ADMIN, JWT_SECRET, PUBLISHER, WAIT, wait_until


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AntRingWorld]:
    with antring_world(tmp_path_factory.mktemp("antring") / "data", "blackhole") as w:
        w.wait_connected()
        yield w


def bearer(agent: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(JWT_SECRET, sub=agent + '-ui', ttl=600, agent=agent)}"}


def click(world: AntRingWorld, body: object, headers: dict[str, str] = ADMIN) -> httpx.Response:
    return httpx.post(f"{world.hub.url}/v1/calls/click-to-call", json=body, headers=headers, timeout=WAIT)


def test_click_to_call_rings_the_agents_own_device_once(world: AntRingWorld) -> None:
    """An online device: 200 `ringing`, exactly one request to AntRing with the agent's SIP device."""
    before = len(world.state.clicks)
    r = click(world, {"number": "+84 912 345 678", "agent": "alice"})
    assert r.status_code == 200, r.text
    assert r.json()["outcome"] == "ringing" and r.json()["number"] == "0912345678"
    clicks = world.state.clicks[before:]
    assert len(clicks) == 1 and clicks[0]["sip_user"] == "alice-101" and clicks[0]["number"] == "0912345678"
    # Counted by route template: the number dialled is never a label.
    metrics = httpx.get(f"{world.hub.url}/metrics", timeout=WAIT).text
    assert ('callhub_vendor_requests_total{endpoint="/oapi/v1/call/click-to-call/:number",status="200",'
            'vendor="antring"}') in metrics
    assert "0912345678" not in metrics


@pytest.mark.parametrize(("number", "dialled"), [("101", "101"), ("123456", "123456"), ("84912345678", "0912345678"),
                                                 ("01693608879", "0393608879")])
def test_click_to_call_dials_an_extension_as_it_is_and_any_phone_form_nationally(
        world: AntRingWorld, number: str, dialled: str) -> None:
    """An internal extension (3 to 6 digits) is the vendor's `:number` as given; phone numbers in national format."""
    r = click(world, {"number": number, "agent": "alice"})
    assert r.status_code == 200 and r.json()["number"] == dialled
    assert world.state.clicks[-1]["number"] == dialled


def test_click_to_call_on_an_offline_device_is_409_with_the_vendors_message(world: AntRingWorld) -> None:
    """Bob's device is not registered: 409 `device_offline`, and nothing is retried."""
    before = len(world.state.requests)
    r = click(world, {"number": "0912345678", "agent": "bob"})
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "device_offline" and "offline" in r.json()["error"]["message"]
    assert len([q for q in world.state.requests[before:] if "click-to-call" in q["path"]]) == 1


@pytest.mark.parametrize("number", ["12", "1234567", "hello", "0112345678", ""])
def test_click_to_call_refuses_an_invalid_number_before_calling_out(world: AntRingWorld, number: str) -> None:
    """Neither a phone number nor a 3-6 digit extension is a 422; AntRing is not called."""
    before = len(world.state.clicks)
    r = click(world, {"number": number, "agent": "alice"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_phone_number"
    assert len(world.state.clicks) == before


def test_click_to_call_scoping(world: AntRingWorld) -> None:
    """An agent may ring only their own device; a publisher key may not; unknown agents are 404."""
    assert click(world, {"number": "0912345678", "agent": "alice"}, bearer("alice")).status_code == 200
    assert click(world, {"number": "0912345678", "agent": "alice"}, bearer("bob")).status_code == 403
    assert click(world, {"number": "0912345678", "agent": "alice"}, PUBLISHER).status_code == 403
    assert click(world, {"number": "0912345678", "agent": "carol"}).status_code == 404
    assert click(world, ["not", "an", "object"]).status_code == 422


def test_click_to_call_attempts_are_events(world: AntRingWorld) -> None:
    """Each attempt is the same `action.succeeded` / `action.failed` a rule's click-to-call gives (one path:
    the action runner), with who asked and the outcome, visible to that agent."""
    click(world, {"number": "0987654321", "agent": "alice"})
    wait_until(lambda: any(e["data"]["requested_by"] == "test-admin" and e["data"]["target"]["agent"] == "alice"
                           for e in world.history("action.succeeded")), what="the ring's outcome")
    wait_until(lambda: any(e["data"]["target"]["agent"] == "bob" and e["data"]["result"]["code"] == "device_offline"
                           for e in world.history("action.failed")), what="the offline device's outcome")
    outcomes = world.history("action.*")
    assert {e["data"]["action"] for e in outcomes} == {"antring.click_to_call"}
    assert all(e["data"]["rule"] is None for e in outcomes)
    mine = httpx.get(f"{world.hub.url}/v1/events?types=action.*", headers=bearer("alice"), timeout=WAIT).json()
    assert mine["events"] and all(e["data"]["agent"] == "alice" for e in mine["events"])


def test_recording_redirects_to_a_fresh_signed_url_for_its_agent_only(world: AntRingWorld) -> None:
    """The call's agent is redirected to a working signed URL; another agent gets 404; admin may fetch any."""
    call = inbound_answered(ALICE, "0912345678", account_id=ACCOUNT)
    media = call.record["recording"]
    world.state.recordings.add(media)
    world.play(call)
    wait_until(lambda: any(e["data"].get("recording") == media for e in world.history("call.ended")),
               what="the call with its recording")
    url = f"{world.hub.url}/v1/recordings/{media}"
    r = httpx.get(url, headers=bearer("alice"), timeout=WAIT)
    assert r.status_code == 307 and r.headers["cache-control"] == "no-store"
    audio = httpx.get(r.headers["location"], timeout=WAIT)
    assert audio.status_code == 200 and audio.content.startswith(b"ID3")
    assert httpx.get(url, headers=bearer("bob"), timeout=WAIT).status_code == 404
    assert httpx.get(url, headers=ADMIN, timeout=WAIT).status_code == 307
    assert httpx.get(url, timeout=WAIT).status_code == 401


def test_a_client_cannot_claim_a_recording_or_reach_one_its_types_claim_excludes(world: AntRingWorld) -> None:
    """An event a client publishes naming alice's recording for chi does not open it to chi (only AntRing's
    own calls count), and alice's own token without `call.*` in its types claim gets 404 as well."""
    call = inbound_answered(ALICE, "0912345679", account_id=ACCOUNT)
    media = call.record["recording"]
    world.state.recordings.add(media)
    world.play(call)
    wait_until(lambda: any(e["data"].get("recording") == media for e in world.history("call.ended")),
               what="the call with its recording")
    claim = {"type": "call.ended", "id": "claim-1", "data": {"agent": "chi", "recording": media}}
    forged = httpx.post(f"{world.hub.url}/v1/events", json={**claim, "source": "antring"}, headers=PUBLISHER,
                        timeout=WAIT)
    assert forged.status_code == 403
    assert httpx.post(f"{world.hub.url}/v1/events", json=claim, headers=PUBLISHER, timeout=WAIT).status_code == 202
    url = f"{world.hub.url}/v1/recordings/{media}"
    assert httpx.get(url, headers=bearer("chi"), timeout=WAIT).status_code == 404
    no_calls = issue_token(JWT_SECRET, sub="alice-ui", ttl=600, agent="alice", types=("action.*",))
    assert httpx.get(url, headers={"Authorization": f"Bearer {no_calls}"}, timeout=WAIT).status_code == 404
    assert httpx.get(url, headers=bearer("alice"), timeout=WAIT).status_code == 307
