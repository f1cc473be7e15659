"""`callhub serve --demo`: a newcomer sees calls flowing from the simulated AntRing."""

from __future__ import annotations

from pathlib import Path

import orjson
from websockets.sync.client import connect

from hub.config import config_from_dict
from hub.plugins import demo_overrides, handler_sections
from tests.helpers import ADMIN_KEY, WAIT, ServerThread, free_port, raw_config


def test_demo_streams_antring_calls_through_the_whole_pipeline(tmp_path: Path) -> None:
    """With --demo, the AntRing simulators are mounted, the hub connects to them, and call events flow."""
    port = free_port()
    raw = raw_config(tmp_path / "data")
    raw.update(demo_overrides(port))
    raw["demo"]["speed"] = 0.05
    config = config_from_dict(raw, env={}, handler_sections=handler_sections())
    with ServerThread(config, port=port) as server, \
            connect(f"{server.ws_url}/v1/ws?token={ADMIN_KEY}&after=0&types=call.*") as ws:
        first = orjson.loads(ws.recv(timeout=WAIT))
        while first["type"] != "call.ringing":  # skip calls already under way when the socket came up
            first = orjson.loads(ws.recv(timeout=WAIT))
        assert first["source"] == "antring" and first["data"]["agent"] in ("alice", "bob", "chi")
        call_id = first["data"]["call_id"]
        types = [first["type"]]
        while "call.ended" not in types:
            event = orjson.loads(ws.recv(timeout=WAIT))
            if event["data"]["call_id"] == call_id:
                types.append(event["type"])
        assert types[0] == "call.ringing" and types[-1] == "call.ended"
