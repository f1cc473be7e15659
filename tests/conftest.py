from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from hub.http.app import create_app
from tests.helpers import AppServer, ServerThread, SwappableApp, make_config
from tests.redis_server import RedisServer

# The hub under test runs in a thread of this process, beside blocking test clients in others.
# With the default 5 ms GIL switch interval every request waits out a few switches.
sys.setswitchinterval(0.0002)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def client(data_dir: Path) -> Iterator[TestClient]:
    """The app through Starlette's TestClient: request/response tests."""
    with TestClient(create_app(make_config(data_dir))) as c:
        yield c


@pytest.fixture
def server(data_dir: Path) -> Iterator[ServerThread]:
    """The real hub under uvicorn on a free loopback port: stream tests."""
    with ServerThread(make_config(data_dir)) as s:
        yield s


@pytest.fixture
def anyio_backend() -> str:
    """Async tests (`@pytest.mark.anyio`) run on asyncio, as the hub does."""
    return "asyncio"


@pytest.fixture(scope="module")
def sim_server() -> Iterator[tuple[AppServer, SwappableApp]]:
    """One loopback server per test module; each test swaps in a fresh simulator (`swappable.app = ...`)."""
    swappable = SwappableApp(Starlette())
    with AppServer(swappable) as server:
        yield server, swappable


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real Redis server on a free loopback port for the whole run (tests keep apart by key prefix)."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()
