"""The queued writer: what every ASGI server other than uvicorn (and Starlette's TestClient) gets."""

from __future__ import annotations

import orjson
from starlette.testclient import TestClient

from tests.helpers import ADMIN, ADMIN_KEY, PUBLISHER, event


def test_ws_under_testclient_uses_the_queued_writer_and_delivers_in_order(client: TestClient) -> None:
    """Without uvicorn's transport the hub falls back to a bounded queue; events still arrive in order."""
    with client.websocket_connect(f"/v1/ws?token={ADMIN_KEY}") as ws:
        (sub,) = client.get("/v1/subscribers", headers=ADMIN).json()["subscribers"]
        assert sub["writer"] == "queued"
        seqs = [client.post("/v1/events", json=event("call.ringing", n=i), headers=PUBLISHER).json()["seq"]
                for i in range(5)]
        assert [orjson.loads(ws.receive_text())["seq"] for _ in seqs] == seqs
        ws.send_text('{"op":"ping"}')
        assert orjson.loads(ws.receive_text())["op"] == "pong"


def test_ws_resume_under_testclient_replays_history(client: TestClient) -> None:
    """`after=` replays from the store through the queued writer too."""
    seqs = [client.post("/v1/events", json=event("call.ringing", n=i), headers=PUBLISHER).json()["seq"]
            for i in range(3)]
    with client.websocket_connect(f"/v1/ws?token={ADMIN_KEY}&after={seqs[0]}") as ws:
        assert [orjson.loads(ws.receive_text())["seq"] for _ in range(2)] == seqs[1:]
