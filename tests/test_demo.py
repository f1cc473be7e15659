"""`callhub serve --demo`: a newcomer sees calls flowing."""

from __future__ import annotations

from pathlib import Path

import orjson
from websockets.sync.client import connect

from hub.config import config_from_dict
from tests.helpers import ADMIN_KEY, WAIT, ServerThread, raw_config


def test_demo_publishes_a_call_lifecycle(tmp_path: Path) -> None:
    """With the demo on, a ringing call arrives at once and is answered or ended soon after."""
    config = config_from_dict(raw_config(tmp_path / "data", demo={"enabled": True}), env={})
    with ServerThread(config) as server, \
            connect(f"{server.ws_url}/v1/ws?token={ADMIN_KEY}&after=0&types=call.*") as ws:
        first = orjson.loads(ws.recv(timeout=WAIT))
        assert first["type"] == "call.ringing" and first["source"] == "demo"
        assert first["data"]["agent"] in ("alice", "bob", "chi")
        call_id = first["data"]["call_id"]
        while True:
            nxt = orjson.loads(ws.recv(timeout=WAIT))
            if nxt["data"]["call_id"] == call_id:
                break
        assert nxt["type"] in ("call.answered", "call.ended")
