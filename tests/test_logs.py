"""Secrets never reach the logs, even when a browser passes its token in the URL."""

from __future__ import annotations

from pathlib import Path

import httpx
from websockets.sync.client import connect

from hub.logs import redact
from tests.helpers import ADMIN_KEY, ALICE_KEY, WAIT, HubProcess, free_port, raw_config, write_config


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
