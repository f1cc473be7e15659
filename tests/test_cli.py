"""The `callhub` command line, run as a real subprocess: check, token, serve."""

from __future__ import annotations

import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient

from handlers import demo
from handlers.antcrm.simulator.app import SimState as CrmState
from handlers.antcrm.simulator.app import build_app as build_crm_app
from handlers.antring.simulator.http import Device
from handlers.antring.simulator.http import SimState as AntRingState
from handlers.antring.simulator.http import build_app as build_antring_app
from handlers.vbee.simulator.app import SimState as VbeeState
from handlers.vbee.simulator.app import build_app as build_vbee_app
from hub.config import load_config
from hub.http.app import create_app
from hub.plugin import demo_overrides
from tests.helpers import (
    JWT_SECRET,
    PUBLISHER,
    TICK,
    WAIT,
    AppServer,
    HubProcess,
    event,
    free_port,
    make_config,
    raw_config,
    run_cli,
    write_config,
)

#: Makes sure a `CALLHUB_CONFIG` from the developer's shell does not leak into a test.
NO_ENV_CONFIG = {"CALLHUB_CONFIG": ""}

BAD_TOML = """\
[server]
port = "eighty"
hots = "0.0.0.0"

[streams]
sse_heartbeat = "often"

[[auth.keys]]
key = "admin-key-0123456789abcdef"
role = "root"
"""
BAD_PATHS = ("server.port", "server.hots", "streams.sse_heartbeat", "auth.keys[0].role")


@pytest.fixture
def good_config(tmp_path: Path) -> Path:
    return write_config(tmp_path / "hub.toml", raw_config(tmp_path / "data"))


@pytest.fixture
def bad_config(tmp_path: Path) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(BAD_TOML)
    return path


def claims_of(token: str, secret: str = JWT_SECRET) -> dict[str, object]:
    decoded: dict[str, object] = jwt.decode(
        token, secret, algorithms=["HS256"], options={"require": ["exp", "sub"]}
    )
    return decoded


# -- help and check -------------------------------------------------------------------------------


def test_python_m_hub_help_lists_the_subcommands() -> None:
    """`python -m hub --help` exits 0 and names serve, check and token."""
    result = run_cli("--help", env=NO_ENV_CONFIG)
    assert result.returncode == 0, result.stderr
    for command in ("serve", "check", "token"):
        assert command in result.stdout


def test_check_good_file_prints_ok(good_config: Path) -> None:
    """`callhub check --config F` on a valid file prints ok and exits 0."""
    result = run_cli("check", "--config", str(good_config), env=NO_ENV_CONFIG)
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout
    assert str(good_config) in result.stdout


def test_check_bad_file_lists_every_problem_and_exits_1(bad_config: Path) -> None:
    """`callhub check` on a bad file exits 1 and prints every problem with its key path."""
    result = run_cli("check", "--config", str(bad_config), env=NO_ENV_CONFIG)
    assert result.returncode == 1
    output = result.stdout + result.stderr
    for key_path in BAD_PATHS:
        assert key_path in output
    assert "Traceback" not in output
    assert "ok" not in result.stdout


def test_check_reports_missing_env_var_and_unknown_section(tmp_path: Path) -> None:
    """`callhub check` names an unset `${VAR}` at its key and an unknown top-level section."""
    path = tmp_path / "hub.toml"
    path.write_text('[auth]\njwt_secret = "${CALLHUB_TEST_UNSET_SECRET}"\n\n[antrnig]\nurl = "x"\n')
    result = run_cli("check", "--config", str(path), env=NO_ENV_CONFIG)
    assert result.returncode == 1
    assert "auth.jwt_secret" in result.stderr
    assert "CALLHUB_TEST_UNSET_SECRET" in result.stderr
    assert "antrnig" in result.stderr


def test_check_substitutes_env_vars_from_the_environment(tmp_path: Path) -> None:
    """A `${VAR}` set in the environment makes the file valid."""
    path = tmp_path / "hub.toml"
    path.write_text('[auth]\njwt_secret = "${CALLHUB_TEST_SECRET}"\n')
    result = run_cli("check", "--config", str(path), env={**NO_ENV_CONFIG, "CALLHUB_TEST_SECRET": JWT_SECRET})
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_check_missing_file_exits_1(tmp_path: Path) -> None:
    """`callhub check` on a file that does not exist exits 1 with a message, no traceback."""
    result = run_cli("check", "--config", str(tmp_path / "nope.toml"), env=NO_ENV_CONFIG)
    assert result.returncode == 1
    assert "not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_callhub_config_env_is_honoured(tmp_path: Path, bad_config: Path) -> None:
    """Without --config, `CALLHUB_CONFIG` names the file that is checked."""
    good = write_config(tmp_path / "good.toml", raw_config(tmp_path / "data", server={"port": 9431}))
    result = run_cli("check", env={"CALLHUB_CONFIG": str(good)})
    assert result.returncode == 0, result.stderr
    assert "9431" in result.stdout

    result = run_cli("check", env={"CALLHUB_CONFIG": str(bad_config)})
    assert result.returncode == 1
    for key_path in BAD_PATHS:
        assert key_path in result.stderr


def test_check_refuses_auth_off_on_public_host(tmp_path: Path) -> None:
    """`callhub check` refuses `auth = false` with host 0.0.0.0, naming server.auth."""
    path = write_config(tmp_path / "open.toml", {"server": {"host": "0.0.0.0", "auth": False}})
    result = run_cli("check", "--config", str(path), env=NO_ENV_CONFIG)
    assert result.returncode == 1
    assert "server.auth" in result.stderr


# -- serve refusing to start ------------------------------------------------------------------------


def test_serve_refuses_auth_off_on_public_host_without_starting(tmp_path: Path) -> None:
    """`callhub serve` with auth = false on 0.0.0.0 exits 1 with a message and never listens."""
    data = tmp_path / "data"
    port = free_port()
    path = write_config(
        tmp_path / "open.toml",
        {"server": {"host": "0.0.0.0", "auth": False, "port": port, "data_dir": str(data)}},
    )
    result = run_cli("serve", "--config", str(path), env=NO_ENV_CONFIG, timeout=WAIT)
    assert result.returncode == 1
    assert "server.auth" in result.stderr
    assert "loopback" in result.stderr
    assert "listening" not in result.stderr
    assert not data.exists()


def test_serve_refuses_host_override_that_exposes_auth_off(tmp_path: Path) -> None:
    """`serve --host 0.0.0.0` over an auth-off loopback file is refused too."""
    data = tmp_path / "data"
    path = write_config(tmp_path / "local.toml", {"server": {"auth": False, "data_dir": str(data)}})
    assert load_config(path, env={}).server.auth is False
    result = run_cli("serve", "--config", str(path), "--host", "0.0.0.0", "--port", str(free_port()),
                     env=NO_ENV_CONFIG, timeout=WAIT)
    assert result.returncode == 1
    assert "server.auth" in result.stderr
    assert not data.exists()


def test_serve_with_bad_config_exits_1(bad_config: Path) -> None:
    """`callhub serve` with an invalid file prints its problems and exits 1."""
    result = run_cli("serve", "--config", str(bad_config), env=NO_ENV_CONFIG, timeout=WAIT)
    assert result.returncode == 1
    for key_path in BAD_PATHS:
        assert key_path in result.stderr


# -- token ----------------------------------------------------------------------------------------------


def test_token_prints_a_jwt_with_sub_agent_and_exp(good_config: Path) -> None:
    """`callhub token --agent alice --ttl 8h` prints an HS256 JWT for alice valid for 8 hours."""
    before = time.time()
    result = run_cli(
        "token", "--agent", "alice", "--ttl", "8h", "--config", str(good_config), env=NO_ENV_CONFIG
    )
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert token.count(".") == 2 and "\n" not in token
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    claims = claims_of(token)
    assert claims["sub"] == "alice"
    assert claims["agent"] == "alice"
    assert "types" not in claims
    exp = claims["exp"]
    assert isinstance(exp, int)
    assert before + 8 * 3600 - 5 <= exp <= time.time() + 8 * 3600 + 5


def test_token_types_option_puts_a_types_claim(good_config: Path) -> None:
    """`--types call.*` puts the patterns in a `types` claim."""
    result = run_cli(
        "token", "--agent", "alice", "--types", "call.*", "--ttl", "10m", "--config", str(good_config),
        env=NO_ENV_CONFIG,
    )
    assert result.returncode == 0, result.stderr
    claims = claims_of(result.stdout.strip())
    assert claims["types"] == ["call.*"]
    assert isinstance(claims["exp"], int) and claims["exp"] <= time.time() + 600 + 5


def test_token_is_accepted_and_scoped_by_the_hub(tmp_path: Path) -> None:
    """The hub accepts a CLI token and shows it only its agent's events of its allowed types."""
    data = tmp_path / "data"
    path = write_config(tmp_path / "hub.toml", raw_config(data))
    result = run_cli(
        "token", "--agent", "alice", "--types", "call.*", "--ttl", "8h", "--config", str(path),
        env=NO_ENV_CONFIG,
    )
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    with TestClient(create_app(make_config(data))) as client:
        for ev in (
            event("call.ringing", agent="alice"),
            event("call.ringing", agent="bob"),
            event("campaign.started", agent="alice"),
            event("call.ended", agent="alice"),
        ):
            assert client.post("/v1/events", json=ev, headers=PUBLISHER).status_code == 202
        r = client.get("/v1/events", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text
        got = [(e["type"], e["data"]["agent"]) for e in r.json()["events"]]
        assert got == [("call.ringing", "alice"), ("call.ended", "alice")]
        # A token signed with another secret is refused.
        forged = jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, "x" * 40, algorithm="HS256")
        assert client.get("/v1/events", headers={"Authorization": f"Bearer {forged}"}).status_code == 401


def test_token_without_configured_secret_uses_the_hubs_generated_secret(tmp_path: Path) -> None:
    """With no jwt_secret configured, the token is signed with the secret the hub itself will use."""
    data = tmp_path / "data"
    raw = raw_config(data)
    del raw["auth"]["jwt_secret"]
    path = write_config(tmp_path / "hub.toml", raw)
    result = run_cli("token", "--agent", "alice", "--config", str(path), env=NO_ENV_CONFIG)
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    secret_file = data / "jwt.secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert claims_of(token, secret_file.read_text().strip())["agent"] == "alice"
    with TestClient(create_app(load_config(path, env={}))) as client:
        assert client.get("/v1/events", headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_token_uses_callhub_config_env(good_config: Path) -> None:
    """`callhub token` without --config signs with the secret of the file in `CALLHUB_CONFIG`."""
    result = run_cli("token", "--agent", "bob", env={"CALLHUB_CONFIG": str(good_config)})
    assert result.returncode == 0, result.stderr
    assert claims_of(result.stdout.strip())["sub"] == "bob"


@pytest.mark.parametrize("ttl", ["soon", "0"])
def test_token_with_bad_ttl_exits_1(good_config: Path, ttl: str) -> None:
    """A ttl that is not a positive duration is refused with exit 1 and no token."""
    result = run_cli(
        "token", "--agent", "alice", "--ttl", ttl, "--config", str(good_config), env=NO_ENV_CONFIG
    )
    assert result.returncode == 1
    assert "ttl" in result.stderr
    assert result.stdout.strip() == ""


# -- first start with no config ---------------------------------------------------------------------


@pytest.fixture
def hub_processes() -> Iterator[list[HubProcess]]:
    started: list[HubProcess] = []
    try:
        yield started
    finally:
        for hub in started:
            if hub.proc.poll() is None:
                hub.proc.kill()
            hub.proc.wait()


def test_first_serve_creates_and_prints_an_admin_key_once(
    tmp_path: Path, hub_processes: list[HubProcess]
) -> None:
    """First `serve` without config creates callhub-data/admin.key (0600) and prints it once, with curl."""
    cwd = tmp_path / "fresh"
    cwd.mkdir()
    port = free_port()
    first = HubProcess(["--port", str(port)], port, tmp_path / "first.log", cwd=cwd)
    hub_processes.append(first)
    first.wait_healthy()

    key_file = cwd / "callhub-data" / "admin.key"
    assert key_file.is_file()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text().strip()
    assert len(key) >= 16

    r = httpx.post(f"{first.url}/v1/events", json=event("call.ringing", agent="alice"),
                   headers={"Authorization": f"Bearer {key}"}, timeout=WAIT)
    assert r.status_code == 202, r.text
    first_seq = r.json()["seq"]
    r = httpx.post(f"{first.url}/v1/events", json=event("call.ringing"),
                   headers={"Authorization": "Bearer not-the-admin-key-at-all"}, timeout=WAIT)
    assert r.status_code == 401
    first.stop()  # the exit status on SIGTERM is test_shutdown's business

    output = first.output
    assert output.count(key) == 2  # the key on its own line, and once in the curl line
    curl_lines = [line for line in output.splitlines() if "curl" in line]
    assert len(curl_lines) == 1
    assert key in curl_lines[0]
    assert f"127.0.0.1:{port}" in curl_lines[0]

    second = HubProcess(["--port", str(port)], port, tmp_path / "second.log", cwd=cwd)
    hub_processes.append(second)
    second.wait_healthy()
    assert key_file.read_text().strip() == key
    r = httpx.get(f"{second.url}/v1/events", headers={"Authorization": f"Bearer {key}"}, timeout=WAIT)
    assert r.status_code == 200
    assert [e["seq"] for e in r.json()["events"]] == [first_seq]
    second.stop()
    assert key not in second.output
    assert "curl" not in second.output


# -- check --online ---------------------------------------------------------------------------------------------


@dataclass
class Vendors:
    """The AntRing, AntCRM and Vbee simulators on one loopback port, with the demo's credentials."""

    server: AppServer
    antring: AntRingState
    antcrm: CrmState
    vbee: VbeeState

    def config(self, tmp_path: Path, **changes: dict[str, Any]) -> Path:
        """A config whose vendor sections point at the simulators (as the demo's do), with `changes` merged in."""
        raw = raw_config(tmp_path / "data")
        overrides = demo_overrides(self.server.port)
        for name in ("antring", "antcrm", "vbee"):
            raw[name] = {**overrides[name], **changes.get(name, {})}
        raw["antring"].pop("agents")  # nested tables the test writer does not need here
        return write_config(tmp_path / "hub.toml", raw)


@pytest.fixture(scope="module")
def vendors() -> Iterator[Vendors]:
    antring = AntRingState(app_id=demo.APP_ID, app_secret=demo.APP_SECRET, devices={"hub-device": Device("hub-pass")})
    antcrm = CrmState(api_keys={demo.CRM_API_KEY})
    vbee = VbeeState(apps={demo.VBEE_API_KEY: demo.VBEE_API_SECRET}, campaigns_known={demo.CALLBACK_CAMPAIGN})
    app = Starlette(routes=[Mount(demo.API_MOUNT, app=build_antring_app(antring)),
                            Mount(demo.CRM_MOUNT, app=build_crm_app(antcrm)),
                            Mount(demo.VBEE_MOUNT, app=build_vbee_app(vbee))])
    with AppServer(app) as server:
        yield Vendors(server, antring, antcrm, vbee)


def online_lines(stdout: str) -> dict[str, str]:
    """`online: NAME  STATE  DETAIL` lines by vendor name."""
    lines = {}
    for line in stdout.splitlines():
        if line.startswith("online: ") and not line.startswith("online: no vendor"):
            name, _, rest = line[len("online: "):].partition(" ")
            lines[name] = rest.strip()
    return lines


def test_check_online_asks_each_vendor_with_its_credentials(tmp_path: Path, vendors: Vendors) -> None:
    """With the right credentials every configured vendor answers ok, one line each, exit 0; nothing is added."""
    before = len(vendors.vbee.contacts)
    result = run_cli("check", "--online", "--config", str(vendors.config(tmp_path)), env=NO_ENV_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = online_lines(result.stdout)
    assert set(lines) == {"antring", "antcrm", "vbee"}, result.stdout
    assert all(line.startswith("ok ") for line in lines.values()), result.stdout
    assert "hub-device accepted" in lines["antring"]
    assert len(vendors.vbee.contacts) == before
    assert demo.APP_SECRET not in result.stdout and demo.VBEE_API_SECRET not in result.stdout


def test_check_online_names_each_vendor_that_refuses_its_credentials(tmp_path: Path, vendors: Vendors) -> None:
    """Wrong AntRing secret, AntCRM key and Vbee secret: three FAILED lines saying why, exit 1."""
    config = vendors.config(tmp_path, antring={"app_secret": "wrong-secret"}, antcrm={"api_key": "wrong-key"},
                            vbee={"api_secret": "wrong-secret-0123456789abcdef-0123456789"})
    result = run_cli("check", "--online", "--config", str(config), env=NO_ENV_CONFIG)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = online_lines(result.stdout)
    assert set(lines) == {"antring", "antcrm", "vbee"}, result.stdout
    assert all(line.startswith("FAILED ") for line in lines.values()), result.stdout
    assert "credentials" in lines["antring"] and "HASH_NOT_MATCH" in lines["antring"], lines["antring"]
    assert "3 of 3 vendor(s) failed" in result.stderr


def test_check_online_gives_each_vendor_a_timeout(tmp_path: Path, vendors: Vendors) -> None:
    """A vendor slower than `--timeout` fails with "no answer within"; the others are still reported ok."""
    vendors.antcrm.delay = 40 * TICK
    try:
        started = time.monotonic()
        result = run_cli("check", "--online", "--timeout", f"{10 * TICK}s", "--config", str(vendors.config(tmp_path)),
                         env=NO_ENV_CONFIG)
        took = time.monotonic() - started
    finally:
        vendors.antcrm.delay = 0.0
    assert result.returncode == 1
    lines = online_lines(result.stdout)
    assert lines["antcrm"].startswith("FAILED") and "no answer within" in lines["antcrm"], result.stdout
    assert lines["antring"].startswith("ok") and lines["vbee"].startswith("ok")
    assert took < 30 * TICK + 10  # the checks ran at once, each bounded (10 s: the interpreter's start)


def test_check_online_without_vendors_says_so(good_config: Path) -> None:
    """No vendor section: nothing to ask, exit 0."""
    result = run_cli("check", "--online", "--config", str(good_config), env=NO_ENV_CONFIG)
    assert result.returncode == 0 and "no vendor configured" in result.stdout
