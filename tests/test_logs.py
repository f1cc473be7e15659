"""Secrets never reach the logs, even when a browser passes its token in the URL."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from websockets.sync.client import connect

from hub.logs import redact
from tests.helpers import ADMIN_KEY, ALICE_KEY, WAIT, TICK, free_port, raw_config, write_config


def test_redact_hides_token_parameters_and_bearer_values() -> None:
    """`?token=`, `&api_key=` and `Bearer …` values are replaced; the rest of the line stays."""
    line = 'GET /v1/stream?types=call.*&token=abc.def.ghi HTTP/1.1 Authorization: Bearer chk_123'
    assert redact(line) == "GET /v1/stream?types=call.*&token=REDACTED HTTP/1.1 Authorization: Bearer REDACTED"


def test_hub_logs_never_show_a_token_from_the_url(tmp_path: Path) -> None:
    """With info logging and the access log on, stream URLs carrying tokens are logged redacted."""
    port = free_port()
    raw = raw_config(tmp_path / "data", server={"port": port, "access_log": True, "log_level": "debug"})
    config = write_config(tmp_path / "hub.toml", raw)
    proc = subprocess.Popen(
        [sys.executable, "-m", "hub", "serve", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + WAIT
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=WAIT).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "hub did not start"
            time.sleep(TICK)
        with connect(f"ws://127.0.0.1:{port}/v1/ws?token={ALICE_KEY}"):
            pass
        with httpx.Client(timeout=WAIT) as client, client.stream("GET", f"{url}/v1/stream?token={ADMIN_KEY}"):
            pass
        httpx.get(f"{url}/v1/events", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=WAIT)
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=WAIT)
    assert "/v1/ws?token=REDACTED" in output and "/v1/stream?token=REDACTED" in output
    assert ALICE_KEY not in output and ADMIN_KEY not in output
