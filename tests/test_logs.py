"""Secrets never reach the logs, even when a browser passes its token in the URL."""

from __future__ import annotations

import logging
import re
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.testclient import TestClient
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from hub.ops.logs import JsonFormatter, RedactSecrets, mask_phones, redact
from hub.tracing import MAX_REQUEST_ID, request_id
from tests.helpers import (
    ADMIN,
    ADMIN_KEY,
    ALICE_KEY,
    TICK,
    WAIT,
    HubProcess,
    ServerThread,
    free_port,
    raw_config,
    write_config,
)


def test_redact_hides_token_parameters_and_bearer_values() -> None:
    """`?token=`, `&api_key=` and `Bearer …` values are replaced; the rest of the line stays."""
    line = 'GET /v1/stream?types=call.*&token=abc.def.ghi HTTP/1.1 Authorization: Bearer chk_123'
    assert redact(line) == "GET /v1/stream?types=call.*&token=REDACTED HTTP/1.1 Authorization: Bearer REDACTED"
    signed = "GET /oapi/v1/call/play_recording?appId=1&media=r.mp3&hash=9b11b9ff"
    assert redact(signed) == "GET /oapi/v1/call/play_recording?appId=1&media=r.mp3&hash=REDACTED"


def test_hub_logs_never_show_a_token_from_the_url(tmp_path: Path) -> None:
    """With info logging and the access log on, stream URLs carrying tokens are logged redacted."""
    port = free_port()
    raw = raw_config(tmp_path / "data", server={"port": port, "access_log": True, "log_level": "debug"})
    config = write_config(tmp_path / "hub.toml", raw)
    hub = HubProcess(["--config", str(config)], port, tmp_path / "hub.log").wait_healthy()
    try:
        with connect(f"{hub.ws_url}/v1/ws?token={ALICE_KEY}"):
            pass
        with httpx.Client(timeout=WAIT) as client, client.stream("GET", f"{hub.url}/v1/stream?token={ADMIN_KEY}"):
            pass
        httpx.get(f"{hub.url}/v1/events", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=WAIT)
    finally:
        hub.stop()
    output = hub.output
    assert "/v1/ws?token=REDACTED" in output and "/v1/stream?token=REDACTED" in output
    assert ALICE_KEY not in output and ADMIN_KEY not in output


def test_a_parameter_name_spelled_with_percent_escapes_is_redacted_too() -> None:
    """The hub decodes `?%74oken=` as `token`, so the log hides it as it would `token=`."""
    assert redact("GET /v1/stream?%74oken=chk_abc&types=call.* HTTP/1.1") == \
        "GET /v1/stream?%74oken=REDACTED&types=call.* HTTP/1.1"
    assert redact("GET /x?T%4fKEN=abc") == "GET /x?T%4fKEN=REDACTED"
    assert redact("GET /x?tokens=abc&a=1") == "GET /x?tokens=abc&a=1"  # a different name is left alone
    # Names the hub refuses but whose value may still be the real key, and values holding quotes.
    assert redact("GET /x?token%00=k1&token[]=k2 HTTP/1.1") == "GET /x?token%00=REDACTED&token[]=REDACTED HTTP/1.1"
    assert redact("GET /x?token=abc'def;ghi\"jkl HTTP/1.1") == "GET /x?token=REDACTED HTTP/1.1"


def test_the_access_log_stays_readable_and_nothing_ordinary_logs_an_error(tmp_path: Path) -> None:
    """With `access_log = true`: redacted lines, no traceback per request; a refused WebSocket, a client
    hanging up mid-body and an escaped token name log no ERROR and no traceback."""
    port = free_port()
    raw = raw_config(tmp_path / "data", server={"port": port, "access_log": True})
    raw["sources"] = [{"name": "tok", "verify": "token", "secret": "hook-token-0123456789", "type": "x"}]
    config = write_config(tmp_path / "hub.toml", raw)
    hub = HubProcess(["--config", str(config)], port, tmp_path / "hub.log").wait_healthy()
    try:
        with pytest.raises(InvalidStatus):
            connect(f"{hub.ws_url}/v1/ws?token=not-a-key")
        with httpx.Client(timeout=WAIT) as client, client.stream("GET", f"{hub.url}/v1/stream?%74oken={ADMIN_KEY}"):
            pass
        with socket.create_connection(("127.0.0.1", port)) as sock:  # declares 100 bytes, sends 6, hangs up
            sock.sendall(b"POST /v1/webhooks/tok?token=hook-token-0123456789 HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"a\":1")
            time.sleep(5 * TICK)
        for _ in range(3):  # pipelined requests for a large file, never read, then the client hangs up
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
                sock.sendall(b"GET /console/console.js HTTP/1.1\r\nHost: x\r\n\r\n" * 6)
                time.sleep(2 * TICK)
        time.sleep(5 * TICK)
        assert httpx.get(f"{hub.url}/healthz", timeout=WAIT).status_code == 200
    finally:
        hub.stop()
    output = hub.output
    assert "Traceback" not in output and "ERROR" not in output, output
    assert '"GET /v1/stream?%74oken=REDACTED HTTP/1.1" 200' in output
    assert ADMIN_KEY not in output


def test_the_demo_never_prints_an_admin_key_from_the_config_file(tmp_path: Path) -> None:
    """`serve --demo` with a configured admin key points at the console without putting the key on screen."""
    port = free_port()
    config = write_config(tmp_path / "hub.toml", raw_config(tmp_path / "data", server={"port": port}))
    hub = HubProcess(["--config", str(config), "--demo"], port, tmp_path / "hub.log").wait_healthy()
    hub.stop()
    assert f"http://127.0.0.1:{port}/" in hub.output
    assert ADMIN_KEY not in hub.output


# -- JSON lines and request ids -------------------------------------------------------------------------------


def json_lines(output: str) -> list[dict[str, Any]]:
    """Every line the hub wrote to stderr and stdout, each parsed as one JSON object (fails on any other)."""
    lines = []
    for line in output.splitlines():
        if not line.strip() or not line.startswith("{"):
            assert not line.strip() or line.startswith(("callhub listening", "  ", "admin key", "Demo:", "or as",
                                                        "An admin", "Try it", "auth is OFF")), line
            continue  # the banner (print, not logging) and its indented lines
        lines.append(orjson.loads(line))
    return lines


def test_json_logs_carry_the_request_id_into_the_vendor_call_and_back_in_the_header(tmp_path: Path) -> None:
    """`[log] format = "json"`: one object per log line with time, level, logger, message and request_id;
    a click-to-call's access line and its AntRing call share the client's X-Request-Id, which the
    answer echoes; no token in any line."""
    port = free_port()
    raw = raw_config(tmp_path / "data", server={"port": port}, log={"format": "json", "access": True})
    config = write_config(tmp_path / "hub.toml", raw)
    hub = HubProcess(["--config", str(config), "--demo"], port, tmp_path / "hub.log").wait_healthy()
    try:
        answer = httpx.post(f"{hub.url}/v1/calls/click-to-call", json={"agent": "alice", "number": "0901234567"},
                            headers={"Authorization": f"Bearer {ADMIN_KEY}", "X-Request-Id": "support-case-42"},
                            timeout=WAIT)
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-request-id"] == "support-case-42"
        httpx.get(f"{hub.url}/v1/events?token={ADMIN_KEY}", timeout=WAIT)
    finally:
        assert hub.stop() == 0
    lines = json_lines(hub.output)
    assert lines and all({"time", "level", "logger", "message", "request_id"} <= set(line) for line in lines)
    traced = [line for line in lines if line["request_id"] == "support-case-42"]
    vendor = [line for line in traced if line["logger"] == "callhub.vendor"]
    assert vendor and vendor[0]["vendor"] == "antring" and vendor[0]["status"] == 200, traced
    assert any(line["logger"] == "uvicorn.access" and line["path"] == "/v1/calls/click-to-call"
               and line["status"] == 200 for line in traced), traced
    # The simulator (mounted on the hub) received the id with the vendor call: its access line has it too.
    assert any(line["logger"] == "uvicorn.access" and line["path"].startswith("/_sim/") for line in traced), traced
    # The number is in AntRing's click-to-call path: masked in every line that shows it.
    assert "click-to-call/*******567" in vendor[0]["message"], vendor
    assert ADMIN_KEY not in hub.output and "0901234567" not in hub.output


def test_an_unsafe_or_long_request_id_is_replaced_by_a_generated_one(client: TestClient) -> None:
    """A client's id is adopted only when short and safe; otherwise, and when absent, the hub makes one."""
    for sent in ("x" * (MAX_REQUEST_ID + 1), "bad id", "evil\u00e9".encode("latin-1"), ""):
        got = client.get("/healthz", headers={"X-Request-Id": sent}).headers["x-request-id"]
        assert got != sent and re.fullmatch(r"[0-9a-f]{32}", got), (sent, got)
    assert re.fullmatch(r"[0-9a-f]{32}", client.get("/healthz").headers["x-request-id"])
    assert client.get("/healthz", headers={"X-Request-Id": "a1:b2/c3"}).headers["x-request-id"] == "a1:b2/c3"
    assert client.get("/nope", headers={"X-Request-Id": "r-404"}).headers["x-request-id"] == "r-404"
    # The ingest path answers with it too, stored or refused (it adds the header itself: bench/README.md).
    assert client.post("/v1/webhooks/nope", headers={"X-Request-Id": "wh-1"}).headers["x-request-id"] == "wh-1"


def test_streams_answer_with_the_request_id_too(server: ServerThread) -> None:
    """The SSE answer, the WebSocket handshake and a refused handshake carry X-Request-Id as well."""
    with httpx.Client(timeout=WAIT) as client, client.stream(
            "GET", f"{server.url}/v1/stream", headers={**ADMIN, "X-Request-Id": "sse-1"}) as answer:
        assert answer.headers["x-request-id"] == "sse-1"
    with connect(f"{server.ws_url}/v1/ws?token={ADMIN_KEY}", additional_headers={"X-Request-Id": "ws-1"}) as ws:
        assert ws.response.headers["x-request-id"] == "ws-1"
    with pytest.raises(InvalidStatus) as refused:
        connect(f"{server.ws_url}/v1/ws?token=not-a-key", additional_headers={"X-Request-Id": "ws-2"})
    assert refused.value.response.headers["x-request-id"] == "ws-2"


def test_json_formatter_redacts_masks_phones_and_keeps_extra_ids() -> None:
    """The formatter's line: redacted like text, phone numbers masked (unless `full`), extra ids kept."""
    record = logging.makeLogRecord({
        "name": "callhub.rules", "levelno": logging.WARNING, "levelname": "WARNING",
        "msg": "call from %s failed: GET %s", "args": ("+84901234567", "/x?token=secret-value"),
        "event_id": "ev-1", "seq": 7,
    })
    token = request_id.set("req-1")
    try:
        assert RedactSecrets().filter(record)
    finally:
        request_id.reset(token)
    line = orjson.loads(JsonFormatter().format(record))
    assert line["message"] == "call from +********567 failed: GET /x?token=REDACTED"
    assert (line["level"], line["logger"], line["request_id"]) == ("warning", "callhub.rules", "req-1")
    assert (line["event_id"], line["seq"]) == ("ev-1", 7)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])
    full = logging.makeLogRecord({"msg": "call from %s", "args": ("+84901234567",)})
    RedactSecrets(phone_numbers="full").filter(full)
    assert full.getMessage() == "call from +84901234567"


def test_mask_phones_keeps_ids_times_and_short_numbers() -> None:
    """Only phone-number-shaped digit runs are masked: not seqs, extensions, times or digits inside ids."""
    assert mask_phones("from 0912345678 to +84901234567") == "from *******678 to +********567"
    for kept in ("seq 41", "ext 101", "id abc0901234567", "at 2026-11-25T08:00:00Z", "1764115200.123"):
        assert mask_phones(kept) == kept
