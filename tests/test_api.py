"""Request/response behaviour of the HTTP API through Starlette's TestClient over the real app."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient

from hub.auth import issue_token
from hub.http.app import create_app
from tests.helpers import (
    ADMIN,
    ADMIN_KEY,
    ALICE_KEY,
    JWT_SECRET,
    PUBLISHER,
    PUBLISHER_KEY,
    SUBSCRIBER_KEY,
    event,
    make_config,
)

SUBSCRIBER = {"Authorization": f"Bearer {SUBSCRIBER_KEY}"}
ALICE = {"Authorization": f"Bearer {ALICE_KEY}"}
JSON_CT = {"Content-Type": "application/json"}
MIB = 1024 * 1024


# -- helpers -----------------------------------------------------------------------------------


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


def post(client: TestClient, body: Any, headers: dict[str, str] = PUBLISHER) -> Any:
    return client.post("/v1/events", json=body, headers=headers)


def post_raw(client: TestClient, body: bytes, headers: dict[str, str] | None = None) -> Any:
    return client.post("/v1/events", content=body, headers={**PUBLISHER, **JSON_CT, **(headers or {})})


def publish(client: TestClient, *bodies: dict[str, Any]) -> list[int]:
    seqs = []
    for body in bodies:
        r = post(client, body)
        assert r.status_code == 202, r.text
        seqs.append(r.json()["seq"])
    return seqs


def history(client: TestClient, headers: dict[str, str] = ADMIN, **params: Any) -> dict[str, Any]:
    r = client.get("/v1/events", params=params, headers=headers)
    assert r.status_code == 200, r.text
    page: dict[str, Any] = r.json()
    return page


def all_events(client: TestClient, headers: dict[str, str] = ADMIN, **params: Any) -> list[dict[str, Any]]:
    """Every event visible to `headers`, following `next` until a page comes back empty."""
    events: list[dict[str, Any]] = []
    after = 0
    for _ in range(10_000):
        page = history(client, headers, after=after, **params)
        if not page["events"]:
            return events
        events.extend(page["events"])
        assert page["next"] > after
        after = page["next"]
    raise AssertionError("history never ended")


def assert_error(r: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """`r` is a JSON error with `status`: `{"error": {"code", "message"}}`, no traceback."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert isinstance(error["code"], str) and error["code"]
    assert isinstance(error["message"], str) and error["message"]
    assert "Traceback" not in r.text
    if code is not None:
        assert error["code"] == code
    return error


@pytest.fixture
def small_client(data_dir: Path) -> Iterator[TestClient]:
    """The app with `server.max_body` = 1024 bytes."""
    with TestClient(create_app(make_config(data_dir, server={"max_body": 1024}))) as c:
        yield c


# -- POST /v1/events: success ------------------------------------------------------------------


def test_publish_answers_202_with_id_and_seq(client: TestClient) -> None:
    """A valid event is accepted with 202 and its id and seq."""
    r = post(client, {"type": "call.ringing", "id": "evt-1", "data": {"agent": "alice"}})
    assert r.status_code == 202
    assert r.json() == {"id": "evt-1", "seq": 1}
    r = post(client, {"type": "call.answered", "id": "evt-2"})
    assert r.status_code == 202
    assert r.json() == {"id": "evt-2", "seq": 2}


def test_publish_answers_only_after_commit_to_disk(client: TestClient, data_dir: Path) -> None:
    """Once the 202 arrives, the event is already in the SQLite file, seen by another connection."""
    r = post(client, {"type": "call.ringing", "id": "durable-1", "data": {"n": 1}})
    assert r.status_code == 202
    seq = r.json()["seq"]
    conn = sqlite3.connect(f"file:{data_dir / 'events.db'}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT id, body FROM events WHERE seq = ?", (seq,)).fetchone()
    finally:
        conn.close()
    assert row is not None
    assert row[0] == "durable-1"
    assert orjson.loads(row[1])["seq"] == seq


def test_publish_fills_in_defaults(client: TestClient) -> None:
    """Without id, source and time, the hub generates an id, uses source "api" and the current time."""
    before = datetime.now(UTC)
    r = post(client, {"type": "call.ringing"})
    after = datetime.now(UTC)
    assert r.status_code == 202
    reply = r.json()
    assert uuid.UUID(reply["id"])  # a fresh unique id
    (stored,) = history(client)["events"]
    assert stored["id"] == reply["id"]
    assert stored["seq"] == reply["seq"]
    assert stored["source"] == "api"
    assert stored["specversion"] == "1.0"
    assert stored["datacontenttype"] == "application/json"
    assert stored["type"] == "call.ringing"
    assert stored["data"] == {}
    when = datetime.fromisoformat(stored["time"].replace("Z", "+00:00"))
    assert when.tzinfo is not None
    assert before - timedelta(seconds=1) <= when <= after + timedelta(seconds=1)


def test_generated_ids_are_unique(client: TestClient) -> None:
    """Two events without an id get different ids and are both stored."""
    a = post(client, {"type": "call.ringing"}).json()
    b = post(client, {"type": "call.ringing"}).json()
    assert a["id"] != b["id"]
    assert a["seq"] != b["seq"]
    assert len(history(client)["events"]) == 2


def test_publish_keeps_the_attributes_the_client_set(client: TestClient) -> None:
    """id, source, subject, time, extensions and data are stored as the client sent them."""
    sent = {
        "specversion": "1.0",
        "id": "abc-123",
        "source": "antring://pbx-7",
        "type": "call.leg.bridged",
        "subject": "call/42",
        "time": "2026-11-23T08:15:00.123456+07:00",
        "datacontenttype": "application/json",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "priority": 5,
        "urgent": True,
        "data": {"agent": "alice", "nested": {"list": [1, 2, 3]}, "text": "xin chào"},
    }
    seq = publish(client, sent)[0]
    (stored,) = history(client)["events"]
    assert stored == {**sent, "seq": seq}


def test_cloudevents_content_type_is_accepted(client: TestClient) -> None:
    """A body sent as application/cloudevents+json is accepted like application/json."""
    body = orjson.dumps({"type": "call.ringing", "id": "ce-1"})
    r = post_raw(client, body, {"Content-Type": "application/cloudevents+json; charset=utf-8"})
    assert r.status_code == 202, r.text
    assert r.json()["id"] == "ce-1"


def test_json_content_type_with_charset_and_case_is_accepted(client: TestClient) -> None:
    """Content-Type matching ignores case and parameters such as charset."""
    r = post_raw(client, b'{"type": "call.ringing"}', {"Content-Type": "Application/JSON; charset=UTF-8"})
    assert r.status_code == 202, r.text


def test_null_data_is_stored_as_empty_object(client: TestClient) -> None:
    """`data: null` is accepted and served as an empty object."""
    publish(client, {"type": "call.ringing", "data": None})
    (stored,) = history(client)["events"]
    assert stored["data"] == {}


def test_rfc3339_variants_are_accepted(client: TestClient) -> None:
    """RFC 3339 times with nanoseconds, offsets and lower-case separators are accepted as sent."""
    times = ["2026-11-23T08:15:00.123456789Z", "2026-11-23T08:15:00-05:30", "2026-11-23t08:15:00z"]
    publish(client, *({"type": "call.ringing", "time": t} for t in times))
    assert [e["time"] for e in history(client)["events"]] == times


# -- duplicates --------------------------------------------------------------------------------


def test_duplicate_answers_200_with_the_original_seq(client: TestClient) -> None:
    """A duplicate (same source and id) answers 200 with the original seq and duplicate: true."""
    first = post(client, {"type": "call.ringing", "id": "dup-1", "source": "pbx", "data": {"n": 1}})
    assert first.status_code == 202
    publish(client, {"type": "call.other"})
    again = post(client, {"type": "call.ringing", "id": "dup-1", "source": "pbx", "data": {"n": 2}})
    assert again.status_code == 200
    assert again.json() == {"id": "dup-1", "seq": first.json()["seq"], "duplicate": True}


def test_duplicate_is_not_stored_twice(client: TestClient) -> None:
    """History holds a duplicated event once, with the data of the first delivery."""
    for n in range(3):
        post(client, {"type": "call.ringing", "id": "dup-2", "data": {"n": n}})
    events = history(client)["events"]
    assert len(events) == 1
    assert events[0]["data"] == {"n": 0}
    # And the next new event is not given a seq burnt by the duplicates' attempts.
    seq = publish(client, {"type": "call.ended"})[0]
    assert seq > events[0]["seq"]


def test_duplicate_of_defaulted_source_is_detected(client: TestClient) -> None:
    """Two events with the same id and no source (both "api") are the same event."""
    a = post(client, {"type": "call.ringing", "id": "same"})
    b = post(client, {"type": "call.ringing", "id": "same", "source": "api"})
    assert a.status_code == 202
    assert b.status_code == 200
    assert b.json()["seq"] == a.json()["seq"]


def test_same_id_with_other_source_is_a_different_event(client: TestClient) -> None:
    """The same id from a different source is a new event with its own seq."""
    a = post(client, {"type": "call.ringing", "id": "shared", "source": "pbx-a"})
    b = post(client, {"type": "call.ringing", "id": "shared", "source": "pbx-b"})
    assert a.status_code == 202 and b.status_code == 202
    assert "duplicate" not in b.json()
    assert a.json()["seq"] != b.json()["seq"]
    assert sorted(e["source"] for e in history(client)["events"]) == ["pbx-a", "pbx-b"]


def test_duplicate_is_counted_in_metrics(client: TestClient) -> None:
    """Stored and duplicate events are counted separately in callhub_events_ingested_total."""
    post(client, {"type": "call.ringing", "id": "m-1"})
    post(client, {"type": "call.ringing", "id": "m-1"})
    text = client.get("/metrics").text
    assert 'callhub_events_ingested_total{outcome="stored"} 1.0' in text
    assert 'callhub_events_ingested_total{outcome="duplicate"} 1.0' in text


# -- POST /v1/events: bad input ----------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"not json", id="text"),
        pytest.param(b'{"type": "call.ringing"', id="truncated"),
        pytest.param(b"", id="empty"),
        pytest.param(b'{"type": "call.ringing", "data": {"a": NaN}}', id="nan"),
        pytest.param(b'{"type": "\xff\xfe"}', id="bad-utf8"),
        pytest.param(b"[" * 5000 + b"]" * 5000, id="too-deep"),
    ],
)
def test_non_json_body_is_400(client: TestClient, body: bytes) -> None:
    """A body that is not JSON is refused with 400 and a JSON error."""
    assert_error(post_raw(client, body), 400)
    assert history(client)["events"] == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param([{"type": "call.ringing"}], None, id="array"),
        pytest.param("call.ringing", None, id="string"),
        pytest.param(42, None, id="number"),
        pytest.param({"data": {}}, "type", id="missing-type"),
        pytest.param({"type": None}, "type", id="null-type"),
        pytest.param({"type": ""}, "type", id="empty-type"),
        pytest.param({"type": 7}, "type", id="type-number"),
        pytest.param({"type": ["call.ringing"]}, "type", id="type-list"),
        pytest.param({"type": "call ringing"}, "type", id="type-space"),
        pytest.param({"type": "call.ringing\n"}, "type", id="type-newline"),
        pytest.param({"type": "t" * 257}, "type", id="type-too-long"),
        pytest.param({"type": "call.ringing", "id": 5}, "id", id="id-number"),
        pytest.param({"type": "call.ringing", "id": ""}, "id", id="id-empty"),
        pytest.param({"type": "call.ringing", "source": {"a": 1}}, "source", id="source-object"),
        pytest.param({"type": "call.ringing", "subject": 3}, "subject", id="subject-number"),
        pytest.param({"type": "call.ringing", "data": [1, 2]}, "data", id="data-list"),
        pytest.param({"type": "call.ringing", "data": "text"}, "data", id="data-string"),
        pytest.param({"type": "call.ringing", "data": 1}, "data", id="data-number"),
        pytest.param({"type": "call.ringing", "time": "yesterday"}, "time", id="time-words"),
        pytest.param({"type": "call.ringing", "time": "2026-11-23T08:15:00"}, "time", id="time-no-offset"),
        pytest.param({"type": "call.ringing", "time": "2026-11-23"}, "time", id="time-date-only"),
        pytest.param({"type": "call.ringing", "time": "2026-13-45T08:15:00Z"}, "time", id="time-bad-month"),
        pytest.param({"type": "call.ringing", "time": 1763885700}, "time", id="time-epoch"),
        pytest.param({"type": "call.ringing", "specversion": "0.3"}, "specversion", id="specversion-0.3"),
        pytest.param({"type": "call.ringing", "specversion": 1.0}, "specversion", id="specversion-number"),
        pytest.param({"type": "call.ringing", "seq": 1}, "seq", id="seq-set"),
        pytest.param({"type": "call.ringing", "seq": None}, "seq", id="seq-null"),
        pytest.param({"type": "call.ringing", "Bad-Name": "x"}, "Bad-Name", id="ext-name-chars"),
        pytest.param({"type": "call.ringing", "UPPER": "x"}, "UPPER", id="ext-name-upper"),
        pytest.param({"type": "call.ringing", "a" * 21: "x"}, "a" * 21, id="ext-name-too-long"),
        pytest.param({"type": "call.ringing", "ext\n": "x"}, "ext\n", id="ext-name-newline"),
        pytest.param({"type": "call.ringing", "ext": {"a": 1}}, "ext", id="ext-value-object"),
        pytest.param({"type": "call.ringing", "ext": 1.5}, "ext", id="ext-value-float"),
        pytest.param({"type": "call.ringing", "data": {"agent": 7}}, "data.agent", id="agent-number"),
        pytest.param({"type": "call.ringing", "data": {"agent": ["alice"]}}, "data.agent", id="agent-list"),
        pytest.param({"type": "call.ringing", "datacontenttype": "text/plain"}, "datacontenttype", id="dct-text"),
        pytest.param({"type": "call.ringing", "data_base64": "AAAA"}, "data_base64", id="data-base64"),
    ],
)
def test_invalid_event_is_422(client: TestClient, body: Any, field: str | None) -> None:
    """JSON that is not a valid event is refused with 422 naming the field, and nothing is stored."""
    error = assert_error(post(client, body), 422, "invalid_event")
    if field is not None:
        assert error.get("field") == field
    assert history(client)["events"] == []


def test_json_null_body_is_422(client: TestClient) -> None:
    """A JSON `null` body is JSON but not an event: 422."""
    assert_error(post_raw(client, b"null"), 422, "invalid_event")


def test_extension_integer_outside_cloudevents_range_is_422(client: TestClient) -> None:
    """An extension integer beyond CloudEvents' 32-bit Integer range is refused with 422."""
    for value in (2**31, -(2**31) - 1, 2**64 - 1):
        assert_error(post(client, {"type": "call.ringing", "ext": value}), 422)
    assert history(client)["events"] == []


def test_body_over_configured_limit_is_413(small_client: TestClient) -> None:
    """A body larger than server.max_body is refused with 413 and not stored."""
    body = orjson.dumps({"type": "call.ringing", "data": {"pad": "x" * 2000}})
    assert_error(post_raw(small_client, body), 413, "payload_too_large")
    assert history(small_client)["events"] == []


def test_body_exactly_at_configured_limit_is_accepted(small_client: TestClient) -> None:
    """A body of exactly server.max_body bytes is accepted."""
    skeleton = orjson.dumps({"type": "call.ringing", "data": {"pad": ""}})
    body = orjson.dumps({"type": "call.ringing", "data": {"pad": "x" * (1024 - len(skeleton))}})
    assert len(body) == 1024
    assert post_raw(small_client, body).status_code == 202
    assert_error(post_raw(small_client, body[:-1] + b" }"), 413)


def test_streamed_body_over_limit_is_413(small_client: TestClient) -> None:
    """A body sent in chunks without Content-Length is cut off at the limit with 413."""
    chunks = [b'{"type": "call.ringing", "data": {"pad": "', *([b"x" * 512] * 8), b'"}}']
    r = small_client.post("/v1/events", content=iter(chunks), headers={**PUBLISHER, **JSON_CT})
    assert_error(r, 413)
    assert history(small_client)["events"] == []


def test_body_over_one_mib_default_is_413(client: TestClient) -> None:
    """With the default configuration, a body over 1 MiB is refused with 413."""
    body = orjson.dumps({"type": "call.ringing", "data": {"pad": "x" * MIB}})
    assert len(body) > MIB
    assert_error(post_raw(client, body), 413)
    # Just under the limit is fine.
    skeleton = orjson.dumps({"type": "call.ringing", "data": {"pad": ""}})
    fits = orjson.dumps({"type": "call.ringing", "data": {"pad": "x" * (MIB - len(skeleton))}})
    assert len(fits) == MIB
    assert post_raw(client, fits).status_code == 202


def test_invalid_content_length_is_400(client: TestClient) -> None:
    """A Content-Length that is not a number is refused with 400."""
    assert_error(post_raw(client, b'{"type": "call.ringing"}', {"Content-Length": "abc"}), 400)


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "application/xml", "multipart/form-data; boundary=x", None],
)
def test_wrong_content_type_is_415(client: TestClient, content_type: str | None) -> None:
    """A body that is not declared as JSON is refused with 415, even if it parses as JSON."""
    headers = dict(PUBLISHER)
    if content_type is not None:
        headers["Content-Type"] = content_type
    r = client.post("/v1/events", content=b'{"type": "call.ringing"}', headers=headers)
    assert_error(r, 415, "unsupported_media_type")
    assert history(client)["events"] == []


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="none"),
        pytest.param({"Authorization": "Bearer"}, id="empty-bearer"),
        pytest.param({"Authorization": "Bearer wrong-key-0123456789abcdef"}, id="unknown-key"),
        pytest.param({"Authorization": f"Basic {ADMIN_KEY}"}, id="basic-scheme"),
        pytest.param({"Authorization": ADMIN_KEY}, id="no-scheme"),
        pytest.param({"Authorization": f"Bearer {PUBLISHER_KEY}x"}, id="key-plus-char"),
        pytest.param({"Authorization": f"Bearer {PUBLISHER_KEY[:-1]}"}, id="key-prefix"),
        pytest.param({"Authorization": "Bearer a.b.c"}, id="garbage-jwt"),
        pytest.param({"Authorization": "Bearer " + "k" * 10_000}, id="huge"),
    ],
)
def test_missing_or_bad_credentials_are_401(client: TestClient, headers: dict[str, str]) -> None:
    """No or bad credentials get 401 with WWW-Authenticate: Bearer, and nothing is stored."""
    r = client.post("/v1/events", json=event(), headers=headers)
    assert_error(r, 401)
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert history(client)["events"] == []


def test_jwt_signed_with_other_secret_is_401(client: TestClient) -> None:
    """A token signed with another secret is refused with 401."""
    token = issue_token("another-secret-0123456789abcdef-0123456789", sub="mallory", ttl=3600)
    r = client.get("/v1/events", headers=bearer(token))
    assert_error(r, 401)
    assert "www-authenticate" in r.headers


def test_bearer_scheme_is_case_insensitive(client: TestClient) -> None:
    """`bearer` in lower case is accepted like `Bearer`."""
    r = client.post("/v1/events", json=event(), headers={"Authorization": f"bearer {PUBLISHER_KEY}"})
    assert r.status_code == 202


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(SUBSCRIBER, id="subscriber-key"),
        pytest.param(ALICE, id="agent-key"),
        pytest.param(bearer(issue_token(JWT_SECRET, sub="bob", ttl=3600, agent="bob")), id="jwt"),
    ],
)
def test_subscriber_cannot_publish(client: TestClient, headers: dict[str, str]) -> None:
    """A subscriber credential posting an event gets 403 and nothing is stored."""
    assert_error(client.post("/v1/events", json=event(), headers=headers), 403, "forbidden")
    assert history(client)["events"] == []


def test_admin_can_publish(client: TestClient) -> None:
    """The admin role may publish."""
    assert client.post("/v1/events", json=event(), headers=ADMIN).status_code == 202


def test_credentials_are_checked_before_the_body(client: TestClient) -> None:
    """Without credentials, a bad body still gets 401, not a hint about the body."""
    r = client.post("/v1/events", content=b"not json", headers={"Content-Type": "text/plain"})
    assert_error(r, 401)


def test_rejections_are_counted_in_metrics(client: TestClient) -> None:
    """Refused publishes are counted by status in callhub_events_rejected_total."""
    post(client, {"data": {}})
    post(client, {"data": {}})
    post_raw(client, b"nope")
    text = client.get("/metrics").text
    assert 'callhub_events_rejected_total{status="422"} 2.0' in text
    assert 'callhub_events_rejected_total{status="400"} 1.0' in text


# -- GET /v1/events ----------------------------------------------------------------------------


def test_history_is_oldest_first_with_next(client: TestClient) -> None:
    """History lists events oldest first; `next` is the last seq returned."""
    seqs = publish(client, *(event("call.ringing", n=i) for i in range(5)))
    page = history(client)
    assert [e["seq"] for e in page["events"]] == seqs
    assert [e["data"]["n"] for e in page["events"]] == list(range(5))
    assert page["next"] == seqs[-1]


def test_history_pages_have_no_gap_and_no_duplicate(client: TestClient) -> None:
    """Following `next` page by page returns every event exactly once, in order."""
    seqs = publish(client, *(event("call.ringing", n=i) for i in range(23)))
    seen: list[int] = []
    after = 0
    pages = 0
    while True:
        page = history(client, after=after, limit=5)
        if not page["events"]:
            break
        assert len(page["events"]) <= 5
        seen.extend(e["seq"] for e in page["events"])
        after = page["next"]
        pages += 1
    assert pages == 5
    assert seen == seqs


def test_history_after_returns_only_newer(client: TestClient) -> None:
    """`after=SEQ` returns only events with a higher seq."""
    seqs = publish(client, *(event() for _ in range(6)))
    page = history(client, after=seqs[3])
    assert [e["seq"] for e in page["events"]] == seqs[4:]


def test_history_of_empty_hub(client: TestClient) -> None:
    """An empty hub answers an empty page."""
    page = history(client)
    assert page["events"] == []
    assert page["next"] == 0


def test_history_after_head_is_empty(client: TestClient) -> None:
    """Asking after the newest seq returns no events and a `next` that is not behind."""
    (seq,) = publish(client, event())
    page = history(client, after=seq)
    assert page["events"] == []
    assert page["next"] >= seq


def test_history_limit_defaults_to_100(client: TestClient) -> None:
    """Without `limit`, a page holds at most 100 events."""
    seqs = publish(client, *(event(n=i) for i in range(130)))
    page = history(client)
    assert [e["seq"] for e in page["events"]] == seqs[:100]
    assert page["next"] == seqs[99]
    rest = history(client, after=page["next"])
    assert [e["seq"] for e in rest["events"]] == seqs[100:]


def test_history_limit_1000_is_accepted(client: TestClient) -> None:
    """`limit=1000` is the maximum and is accepted."""
    publish(client, *(event(n=i) for i in range(3)))
    assert len(history(client, limit=1000)["events"]) == 3


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "1001"},
        {"limit": "0"},
        {"limit": "-1"},
        {"limit": "ten"},
        {"limit": "1.5"},
        {"after": "abc"},
        {"after": "-1"},
        {"after": "1e3"},
        {"after": "0x10"},
        {"types": "call ringing"},
        {"types": "call.ringing;drop"},
    ],
)
def test_bad_history_parameters_are_400(client: TestClient, params: dict[str, str]) -> None:
    """A bad `after`, `limit` or `types` is refused with 400 and a JSON error."""
    assert_error(client.get("/v1/events", params=params, headers=ADMIN), 400)


def test_history_after_beyond_64_bits_is_400(client: TestClient) -> None:
    """An `after` too large for a seq is refused with 400, not a 500."""
    for value in ("9223372036854775808", "99999999999999999999"):
        r = client.get("/v1/events", params={"after": value}, headers=ADMIN)
        assert 400 <= r.status_code < 500, r.text
        assert_error(r, r.status_code)


def test_history_types_filter_with_globs(client: TestClient) -> None:
    """`types=call.*` returns call events only; several patterns are comma-separated."""
    publish(
        client,
        event("call.ringing"),
        event("campaign.started"),
        event("call.leg.bridged"),
        event("agent.status"),
        event("callback.requested"),
    )
    assert [e["type"] for e in history(client, types="call.*")["events"]] == ["call.ringing", "call.leg.bridged"]
    both = history(client, types="call.*,campaign.*")["events"]
    assert [e["type"] for e in both] == ["call.ringing", "campaign.started", "call.leg.bridged"]
    assert [e["type"] for e in history(client, types="agent.status")["events"]] == ["agent.status"]
    assert [e["type"] for e in history(client, types="call?back.*")["events"]] == []
    assert len(history(client, types="*")["events"]) == 5


def test_history_types_filter_pages_without_gap(client: TestClient) -> None:
    """Paging through a filtered history returns every matching event once."""
    want = []
    for i in range(30):
        (seq,) = publish(client, event("call.ringing" if i % 3 == 0 else "agent.status", n=i))
        if i % 3 == 0:
            want.append(seq)
    seen: list[int] = []
    after = 0
    while True:
        page = history(client, after=after, limit=3, types="call.*")
        if not page["events"]:
            break
        seen.extend(e["seq"] for e in page["events"])
        after = page["next"]
    assert seen == want


def test_agent_scoped_key_sees_only_its_agent(client: TestClient) -> None:
    """A key with agent "alice" sees only events whose data.agent is "alice"."""
    publish(
        client,
        event("call.ringing", agent="alice", n=1),
        event("call.ringing", agent="bob", n=2),
        event("call.ringing", n=3),
        event("call.answered", agent="alice", n=4),
        event("call.ringing", agent="Alice", n=5),
    )
    events = all_events(client, ALICE)
    assert [e["data"]["n"] for e in events] == [1, 4]
    assert all(e["data"]["agent"] == "alice" for e in events)
    # Even when it asks for a filter, the agent scope still applies.
    assert [e["data"]["n"] for e in all_events(client, ALICE, types="call.answered")] == [4]


def test_agent_scoped_pages_have_no_gap(client: TestClient) -> None:
    """An agent-scoped client paging with small limits gets each of its events once."""
    want = []
    for i in range(20):
        agent = "alice" if i % 4 == 0 else "bob"
        (seq,) = publish(client, event("call.ringing", agent=agent))
        if agent == "alice":
            want.append(seq)
    seen: list[int] = []
    after = 0
    while True:
        page = history(client, ALICE, after=after, limit=2)
        if not page["events"]:
            break
        seen.extend(e["seq"] for e in page["events"])
        after = page["next"]
    assert seen == want


def test_unscoped_subscriber_sees_everything(client: TestClient) -> None:
    """A subscriber key without an agent sees every event."""
    publish(client, event(agent="alice"), event(agent="bob"), event())
    assert len(all_events(client, SUBSCRIBER)) == 3


def test_jwt_types_claim_limits_history(client: TestClient) -> None:
    """A subscriber JWT with a `types` claim sees only the allowed types, whatever it asks for."""
    publish(client, event("call.ringing"), event("campaign.started"), event("call.ended"), event("agent.status"))
    token = bearer(issue_token(JWT_SECRET, sub="dash", ttl=3600, types=("call.*",)))
    assert [e["type"] for e in all_events(client, token)] == ["call.ringing", "call.ended"]
    assert [e["type"] for e in all_events(client, token, types="campaign.*")] == []
    assert [e["type"] for e in all_events(client, token, types="call.ended,agent.*")] == ["call.ended"]


def test_jwt_agent_claim_limits_history(client: TestClient) -> None:
    """A subscriber JWT with an `agent` claim sees only that agent's events."""
    publish(client, event(agent="alice", n=1), event(agent="bob", n=2), event(agent="bob", n=3))
    token = bearer(issue_token(JWT_SECRET, sub="bob-ui", ttl=3600, agent="bob"))
    assert [e["data"]["n"] for e in all_events(client, token)] == [2, 3]


def test_expired_jwt_is_401(client: TestClient) -> None:
    """An expired subscriber token is refused with 401 and says so."""
    token = issue_token(JWT_SECRET, sub="late", ttl=-10, agent="alice")
    r = client.get("/v1/events", headers=bearer(token))
    error = assert_error(r, 401, "token_expired")
    assert "expired" in error["message"]
    assert r.headers["www-authenticate"].startswith("Bearer")


def test_history_requires_credentials(client: TestClient) -> None:
    """History without credentials is 401."""
    r = client.get("/v1/events")
    assert_error(r, 401)
    assert "www-authenticate" in r.headers


def test_history_token_in_query_is_not_accepted(client: TestClient) -> None:
    """`?token=` is only for the stream endpoints; history needs the Authorization header."""
    assert_error(client.get("/v1/events", params={"token": ADMIN_KEY}), 401)


def test_history_serves_what_was_stored_byte_for_byte(client: TestClient) -> None:
    """The history response is valid JSON whose events match what publishers got acknowledged."""
    seq = publish(client, {"type": "call.ringing", "id": "x-1", "data": {"agent": "alice", "u": "ü\u2028"}})[0]
    r = client.get("/v1/events", headers=ADMIN)
    assert r.headers["content-type"].startswith("application/json")
    (stored,) = orjson.loads(r.content)["events"]
    assert stored["seq"] == seq and stored["id"] == "x-1"
    assert stored["data"] == {"agent": "alice", "u": "ü\u2028"}


# -- GET /v1/subscribers -----------------------------------------------------------------------


def test_subscribers_lists_for_admin(client: TestClient) -> None:
    """The admin gets the list of connected subscribers (none here)."""
    r = client.get("/v1/subscribers", headers=ADMIN)
    assert r.status_code == 200
    body = r.json()
    assert body["subscribers"] == []
    assert body["count"] == 0


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(PUBLISHER, id="publisher"),
        pytest.param(SUBSCRIBER, id="subscriber"),
        pytest.param(ALICE, id="agent"),
        pytest.param(bearer(issue_token(JWT_SECRET, sub="s", ttl=3600)), id="jwt"),
    ],
)
def test_subscribers_is_admin_only(client: TestClient, headers: dict[str, str]) -> None:
    """Any role but admin gets 403 from /v1/subscribers."""
    assert_error(client.get("/v1/subscribers", headers=headers), 403, "forbidden")


def test_subscribers_without_credentials_is_401(client: TestClient) -> None:
    """/v1/subscribers without credentials is 401."""
    assert_error(client.get("/v1/subscribers"), 401)


# -- GET /v1/whoami ----------------------------------------------------------------------------


def test_whoami_tells_an_agent_token_its_agent_and_types(client: TestClient) -> None:
    """A subscriber JWT: role, agent, types and expiry, plus the head seq a UI resumes from."""
    client.post("/v1/events", json=event(agent="alice"), headers=PUBLISHER)
    token = issue_token(JWT_SECRET, sub="alice-ui", ttl=3600, agent="alice", types=("call.*",))
    r = client.get("/v1/whoami", headers=bearer(token))
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    body = r.json()
    assert {k: body[k] for k in ("name", "role", "agent", "types", "head")} == {
        "name": "alice-ui", "role": "subscriber", "agent": "alice", "types": ["call.*"], "head": 1}
    assert body["expires_at"].endswith("Z")


def test_whoami_tells_an_api_key_its_role(client: TestClient) -> None:
    """An admin key: role admin, no agent, no expiry; an agent-scoped key names its agent."""
    admin = client.get("/v1/whoami", headers=ADMIN).json()
    assert (admin["role"], admin["agent"], admin["expires_at"]) == ("admin", None, None)
    assert client.get("/v1/whoami", headers=ALICE).json()["agent"] == "alice"


def test_whoami_without_good_credentials_is_401(client: TestClient) -> None:
    """No credential, or a wrong one, is 401 (a query token is not accepted here)."""
    assert_error(client.get("/v1/whoami"), 401)
    assert_error(client.get(f"/v1/whoami?token={ADMIN_KEY}"), 401)
    assert_error(client.get("/v1/whoami", headers=bearer("nope")), 401)


# -- health, readiness, metrics ----------------------------------------------------------------


def test_healthz_is_200(client: TestClient) -> None:
    """/healthz answers 200 without credentials."""
    r = client.get("/healthz")
    assert r.status_code == 200
    assert r.json()["status"] == "ok"


def test_readyz_is_200(client: TestClient) -> None:
    """/readyz answers 200 when the store is writable."""
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.json()["status"] == "ready"


def test_metrics_is_prometheus_text(client: TestClient) -> None:
    """/metrics is Prometheus text with the hub's families and counts what was ingested."""
    publish(client, event(), event())
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    types = {line.split()[2]: line.split()[3] for line in text.splitlines() if line.startswith("# TYPE ")}
    assert types["callhub_events_ingested_total"] == "counter"
    assert types["callhub_subscribers"] == "gauge"
    assert types["callhub_events_delivered_total"] == "counter"
    assert types["callhub_subscribers_dropped_total"] == "counter"
    assert types["callhub_fanout_latency_seconds"] == "histogram"
    assert 'callhub_events_ingested_total{outcome="stored"} 2.0' in text
    assert "callhub_fanout_latency_seconds_bucket" in text


def test_metrics_never_show_credentials(client: TestClient) -> None:
    """Failed logins are counted in metrics without the presented credential."""
    client.get("/v1/events", headers=bearer("leaky-secret-key-0123456789"))
    text = client.get("/metrics").text
    assert "callhub_auth_failures_total" in text
    assert "leaky-secret" not in text


# -- routing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/nope", "/v1", "/v1/event", "/v2/events", "/v1/events/1"])
def test_unknown_path_is_404_json(client: TestClient, path: str) -> None:
    """An unknown path is a JSON 404."""
    assert_error(client.get(path, headers=ADMIN), 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path"),
    [("DELETE", "/v1/events"), ("PUT", "/v1/events"), ("POST", "/healthz"), ("POST", "/v1/subscribers")],
)
def test_wrong_method_is_405_json(client: TestClient, method: str, path: str) -> None:
    """A known path with the wrong method is a JSON 405 with an Allow header."""
    r = client.request(method, path, headers=ADMIN)
    assert_error(r, 405, "method_not_allowed")
    assert "allow" in r.headers


def test_405_on_events_allows_get_and_post(client: TestClient) -> None:
    """The 405 for /v1/events lists both GET and POST in Allow."""
    r = client.request("DELETE", "/v1/events", headers=ADMIN)
    assert r.status_code == 405
    allowed = {m.strip() for m in r.headers["allow"].split(",")}
    assert {"GET", "POST"} <= allowed


def test_the_console_can_be_turned_off_and_the_api_stays(data_dir: Path) -> None:
    with TestClient(create_app(make_config(data_dir, server={"console": False}))) as client:
        page = client.get("/")
        assert page.status_code == 404 and page.json()["error"]["code"] == "not_found"
        assert client.get("/console/console.js").status_code == 404
        assert client.get("/v1/events", headers=ADMIN).status_code == 200
