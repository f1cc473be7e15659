"""Secrets never reach the logs, even when a browser passes its token in the URL."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from hub.ops.logs import redact
from tests.helpers import ADMIN_KEY, ALICE_KEY, TICK, WAIT, HubProcess, free_port, raw_config, write_config


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
