"""Vbee result webhooks through the real hub: verification, normalisation, dedup, bad input."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.datastructures import Headers, QueryParams

from handlers.vbee import VbeeConfig
from handlers.vbee.normalize import Normalizer
from hub.config import ConfigError, config_from_dict
from hub.plugin import handler_sections
from hub.webhooks.inbound import Delivery
from tests.helpers import ADMIN, WAIT, ServerThread, raw_config
from tests.vbee_env import WEBHOOK_TOKEN, vbee_hub

MAX_BODY = 16 * 1024


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """One hub for the module (webhook receiving needs no Vbee API); tests use fresh ids."""
    with vbee_hub(tmp_path_factory.mktemp("vbee") / "data", None, server={"max_body": MAX_BODY}) as h:
        yield h


def post(hub: ServerThread, body: Any, *, token: str | None = WEBHOOK_TOKEN, bearer: bool = False,
         content_type: str = "application/json") -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    headers = {"Content-Type": content_type}
    query = ""
    if token is not None and bearer:
        headers["Authorization"] = f"Bearer {token}"
    elif token is not None:
        query = f"?token={token}"
    return httpx.post(f"{hub.url}/v1/webhooks/vbee{query}", content=content, headers=headers, timeout=WAIT)


def stored(hub: ServerThread, campaign_id: str | None, types: str = "*") -> list[dict[str, Any]]:
    r = httpx.get(f"{hub.url}/v1/events", params={"after": 0, "limit": 1000, "types": types}, headers=ADMIN,
                  timeout=WAIT)
    return [e for e in r.json()["events"] if e["data"].get("campaign_id") == campaign_id]


def report(campaign_id: str, status: str = "answered", **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "campaign_id": campaign_id,
        "contact_id": "f95c4831-bc9d-4626-8713-a0a161cee01e",
        "phone_number": "+84987654321",
        "call_status": status,
        "duration": 35,
        "recording_url": "https://aicall.vbee.ai/rec/1.mp3",
        "call_id": "call-1",
        "ho_ten": "David Thiêm",
        "danh_xung": "Anh",
    }
    body.update(fields)
    return {k: v for k, v in body.items() if v is not None}


def campaign() -> str:
    return "camp-" + uuid.uuid4().hex[:8]


# -- verification --------------------------------------------------------------------------------


def test_missing_token_is_401_and_counted(hub: ServerThread) -> None:
    """No token: 401, counted under source vbee, reason missing."""
    before = hub.metric("callhub_webhooks_rejected_total", source="vbee", reason="missing")
    r = post(hub, report(campaign()), token=None)
    assert r.status_code == 401 and r.json()["error"]["code"] == "bad_signature"
    assert hub.metric("callhub_webhooks_rejected_total", source="vbee", reason="missing") == before + 1


def test_wrong_token_is_401_and_counted(hub: ServerThread) -> None:
    """A wrong token: 401, counted under source vbee, reason mismatch; nothing stored."""
    cid = campaign()
    before = hub.metric("callhub_webhooks_rejected_total", source="vbee", reason="mismatch")
    r = post(hub, report(cid), token="wrong-token-0123456789abcdef")
    assert r.status_code == 401 and WEBHOOK_TOKEN not in r.text
    assert hub.metric("callhub_webhooks_rejected_total", source="vbee", reason="mismatch") == before + 1
    assert stored(hub, cid) == []


def test_bearer_token_is_accepted(hub: ServerThread) -> None:
    """The token may come as Authorization: Bearer instead of ?token=."""
    r = post(hub, report(campaign()), bearer=True)
    assert r.status_code == 200 and r.json()["duplicate"] is False


# -- normalisation -------------------------------------------------------------------------------


def test_finished_call_becomes_call_ended(hub: ServerThread) -> None:
    """A finished call is call.ended from vbee with the call, the parties, outcome, duration, recording, tags, raw."""
    cid = campaign()
    body = report(cid, phone_number="84987654321")
    r = post(hub, body)
    assert r.status_code == 200
    (event,) = stored(hub, cid)
    assert event["type"] == "call.ended" and event["source"] == "vbee"
    assert event["id"] == r.json()["id"] and event["seq"] == r.json()["seq"] and event["subject"] == "call-1"
    assert event["data"] == {
        "call_id": "call-1",
        "direction": "outbound",
        "agent": None,
        "from": {"number": None, "as_sent": None, "name": None},
        "to": {"number": "0987654321", "as_sent": "84987654321", "name": "David Thiêm"},
        "campaign_id": cid,
        "contact_id": "f95c4831-bc9d-4626-8713-a0a161cee01e",
        "status": "answered",
        "outcome": "answered",
        "duration_s": 35,
        "recording": "https://aicall.vbee.ai/rec/1.mp3",
        "tags": {"ho_ten": "David Thiêm", "danh_xung": "Anh"},
        "raw": body,
    }


def test_progress_report_becomes_contact_updated(hub: ServerThread) -> None:
    """A report of a call still going on is campaign.contact.updated with the status, tags and the number's normal form."""
    cid = campaign()
    body = report(cid, "calling", duration=None, recording_url=None)
    assert post(hub, body).status_code == 200
    (event,) = stored(hub, cid)
    assert event["type"] == "campaign.contact.updated" and event["source"] == "vbee"
    assert event["data"] == {"campaign_id": cid, "contact_id": body["contact_id"], "phone_number": "0987654321",
                             "status": "calling", "tags": {"ho_ten": "David Thiêm", "danh_xung": "Anh"},
                             "raw": body}


def test_redelivery_is_one_event_with_the_same_seq(hub: ServerThread) -> None:
    """The same report twice: one event; the second answer is 200, the same seq, duplicate true."""
    cid = campaign()
    first, second = post(hub, report(cid)), post(hub, report(cid))
    assert first.status_code == second.status_code == 200
    assert second.json() == {**first.json(), "duplicate": True}
    assert len(stored(hub, cid)) == 1


def test_retry_with_changed_details_is_still_one_event(hub: ServerThread) -> None:
    """A resend of the same call with other fields (a send time, say) is the same call: one event."""
    cid = campaign()
    assert post(hub, report(cid, sent_at="2026-01-01T00:00:00Z")).json()["duplicate"] is False
    assert post(hub, report(cid, sent_at="2026-01-01T00:00:05Z")).json()["duplicate"] is True


def test_second_call_attempt_is_another_event(hub: ServerThread) -> None:
    """A redial of the same contact (a new call id) is a second call.ended."""
    cid = campaign()
    post(hub, report(cid, "busy", call_id="call-1"))
    post(hub, report(cid, "answered", call_id="call-2"))
    assert [(e["data"]["call_id"], e["data"]["outcome"]) for e in stored(hub, cid)] == [
        ("call-1", "busy"), ("call-2", "answered")]


def test_progress_then_final_both_kept(hub: ServerThread) -> None:
    """A progress report does not hide the final one for the same call (their keys differ)."""
    cid = campaign()
    post(hub, report(cid, "calling"))
    post(hub, report(cid, "no_answer"))
    assert [e["type"] for e in stored(hub, cid)] == ["campaign.contact.updated", "call.ended"]


def test_out_of_order_reports_yield_the_same_events(hub: ServerThread) -> None:
    """Final before progress: still one call.ended with the right outcome, and the progress update."""
    cid = campaign()
    post(hub, report(cid, "busy"))
    post(hub, report(cid, "calling"))
    post(hub, report(cid, "busy"))
    events = stored(hub, cid)
    assert [e["type"] for e in events] == ["call.ended", "campaign.contact.updated"]
    assert events[0]["data"]["outcome"] == "busy"


@pytest.mark.parametrize(("status", "outcome"), [
    ("answered", "answered"), ("SUCCESS", "answered"), ("busy", "busy"), ("No-Answer", "no_answer"),
    ("voice_mail", "no_answer"), ("CANCELED", "cancelled"), ("failed", "failed"), ("blue-moon", "unknown"),
])
def test_status_maps_to_outcome(hub: ServerThread, status: str, outcome: str) -> None:
    """Vendor statuses map to callhub outcomes, case-insensitively; an unmapped one is `unknown`."""
    cid = campaign()
    assert post(hub, report(cid, status)).status_code == 200
    (event,) = stored(hub, cid)
    assert event["type"] == "call.ended"
    assert event["data"]["outcome"] == outcome and event["data"]["status"] == status


def test_without_call_id_the_call_id_is_composed(hub: ServerThread) -> None:
    """No Vbee call id: call_id is campaign:contact:attempt, and attempts are still told apart."""
    cid = campaign()
    post(hub, report(cid, "busy", call_id=None, attempt=1))
    post(hub, report(cid, "busy", call_id=None, attempt=1))
    post(hub, report(cid, "answered", call_id=None, attempt=2))
    events = stored(hub, cid)
    contact = report(cid)["contact_id"]
    assert [e["data"]["call_id"] for e in events] == [f"{cid}:{contact}:1", f"{cid}:{contact}:2"]


@pytest.mark.parametrize("where", ["tags", "contact"])
def test_tags_nested_under_tags_or_contact(hub: ServerThread, where: str) -> None:
    """Personalization tags under `tags` or `contact` are found, and the name comes from ho_ten."""
    cid = campaign()
    body = report(cid, ho_ten=None, danh_xung=None)
    body[where] = {"ho_ten": "Chị Lan", "ma_kh": 42} | ({"contact_id": body["contact_id"]} if where == "contact" else {})
    post(hub, body)
    (event,) = stored(hub, cid)
    assert event["data"]["tags"] == {"ho_ten": "Chị Lan", "ma_kh": 42}
    assert event["data"]["to"]["name"] == "Chị Lan"


# -- bad input -----------------------------------------------------------------------------------


def test_non_json_is_400(hub: ServerThread) -> None:
    """A body that is not JSON is 400 invalid_json."""
    r = post(hub, b"call_status=answered", content_type="application/x-www-form-urlencoded")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


def test_oversized_is_413(hub: ServerThread) -> None:
    """A body over server.max_body is 413."""
    r = post(hub, report(campaign(), note="x" * (MAX_BODY + 1)))
    assert r.status_code == 413


def test_json_that_is_not_an_object_is_422(hub: ServerThread) -> None:
    """A JSON array or string is 422 with a message saying what Vbee bodies look like."""
    r = post(hub, [report(campaign())])
    assert r.status_code == 422 and "JSON object" in r.json()["error"]["message"]


def test_missing_ids_are_stored_keyed_by_body_hash(hub: ServerThread) -> None:
    """No campaign_id/contact_id: stored anyway (lossless), keyed by the body hash, so a resend is one event."""
    marker = uuid.uuid4().hex
    body = {"call_status": "answered", "marker": marker}
    first, second = post(hub, body), post(hub, body)
    assert first.status_code == 200 and second.json()["duplicate"] is True
    events = [e for e in stored(hub, None) if e["data"]["raw"].get("marker") == marker]
    assert len(events) == 1 and events[0]["data"]["key"] == "body-hash"
    assert events[0]["id"].startswith("ended:sha256:") and events[0]["data"]["campaign_id"] is None


@pytest.mark.parametrize("body", [
    {},
    {"campaign_id": {"a": 1}, "contact_id": [1], "call_status": 7},
    {"campaign_id": "c", "contact_id": "k", "call_status": "answered", "duration": "abc", "recording_url": 5,
     "ho_ten": {"x": 1}, "call_id": True},
    {"campaign_id": "c", "contact_id": "k" * 600, "call_status": "busy", "call_id": "z" * 2000},
    {"campaign_id": None, "status": None, "tags": "not-an-object", "contact": 3},
])
def test_odd_bodies_never_500(hub: ServerThread, body: dict[str, Any]) -> None:
    """Wrong types, nulls and huge ids are read as missing or hashed: 200, never 500."""
    r = post(hub, body)
    assert r.status_code == 200, r.text


# -- configuration -------------------------------------------------------------------------------


def normalize(body: Any, **section: Any) -> dict[str, Any]:
    config = VbeeConfig.model_validate({"webhook_token": WEBHOOK_TOKEN, **section})
    raw = orjson.dumps(body)
    return Normalizer(config)(Delivery("vbee", raw, Headers(), QueryParams(), payload=body))


def test_mapping_status_map_and_key_are_configurable() -> None:
    """Field paths, the status map, the progress statuses and the key fields come from [vbee]."""
    section = {
        "mapping": {"campaign_id": "campaign.code", "contact_id": ["lead.id"], "status": "result.state",
                    "duration": "result.secs", "name": "lead.fullname", "tags": ["lead"]},
        "status_map": {"XONG": "answered"},
        "progress_statuses": ["DANG-GOI"],
        "key": ["campaign_id", "contact_id", "$.result.try"],
    }
    body = {"campaign": {"code": "C1"}, "lead": {"id": "L1", "fullname": "An"},
            "result": {"state": "xong", "secs": "12.4", "try": 3}}
    event = normalize(body, **section)
    assert event["type"] == "call.ended" and event["id"] == "ended:C1:L1:3"
    assert event["data"]["outcome"] == "answered" and event["data"]["duration_s"] == 12
    assert event["data"]["to"]["name"] == "An" and event["data"]["tags"]["fullname"] == "An"
    progress = normalize({**body, "result": {"state": "Dang Goi"}}, **section)
    assert progress["type"] == "campaign.contact.updated" and progress["id"] == "status:dang_goi:C1:L1"


def test_no_status_is_a_contact_update() -> None:
    """A report without any status is campaign.contact.updated with status null."""
    event = normalize({"campaign_id": "c", "contact_id": "k"})
    assert event["type"] == "campaign.contact.updated" and event["data"]["status"] is None


@pytest.mark.parametrize(("section", "message"), [
    ({"webhook_token": "short"}, "webhook_token"),
    ({"webhook_token": WEBHOOK_TOKEN, "api_key": "k"}, "api_key and api_secret"),
    ({"webhook_token": WEBHOOK_TOKEN, "key": ["contact_id", "whatever"]}, "whatever"),
    ({"webhook_token": WEBHOOK_TOKEN, "status_map": {"x": "won"}}, "status_map"),
    ({"webhook_token": WEBHOOK_TOKEN, "progress_statuses": ["busy"]}, "busy"),
    ({"webhook_token": WEBHOOK_TOKEN, "mapping": {"campain_id": "x"}}, "unknown key"),
    ({"webhook_token": WEBHOOK_TOKEN, "base_url": "ftp://x"}, "http"),
])
def test_bad_config_is_refused(tmp_path: Path, section: dict[str, Any], message: str) -> None:
    """A bad [vbee] section is a config error naming the problem."""
    raw = raw_config(tmp_path)
    raw["vbee"] = section
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw, env={}, handler_sections=handler_sections())
    assert message in str(info.value)
