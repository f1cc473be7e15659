"""Config loading: embedded defaults, `${NAME}` substitution, units, and every problem with its key path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError

from hub.config import Config, ConfigError, config_from_dict, load_config
from hub.service import build
from tests.helpers import ADMIN_KEY, JWT_SECRET, raw_config, write_config


def problems_of(raw: dict[str, Any], *, env: dict[str, str] | None = None, **kwargs: Any) -> dict[str, str]:
    """The problems `config_from_dict` reports, as {key path: its messages} (fails if it accepts `raw`)."""
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw, env={} if env is None else env, **kwargs)
    problems: dict[str, str] = {}
    for path, message in info.value.problems:
        problems[path] = f"{problems[path]}; {message}" if path in problems else message
    return problems


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# -- embedded defaults ---------------------------------------------------------------------------


def test_no_file_gives_the_embedded_defaults() -> None:
    """With no config file the hub listens on 127.0.0.1:8080 with local SQLite under ./callhub-data."""
    config = load_config(None, env={})
    assert config.server.host == "127.0.0.1"
    assert config.server.port == 8080
    assert config.server.auth is True
    assert config.server.data_dir == "./callhub-data"
    assert config.data_dir == Path("callhub-data")
    assert config.backend.url == "local"
    assert config.auth.keys == []


def test_defaults_for_buffers_heartbeats_and_body_limit() -> None:
    """Defaults: buffer 1000 events, SSE heartbeat 15 s, WS ping 20 s, body limit 1 MiB."""
    config = load_config(None, env={})
    assert config.streams.buffer == 1000
    assert config.streams.sse_heartbeat == 15.0
    assert config.streams.ws_ping_interval == 20.0
    assert config.server.max_body == 1024 * 1024


def test_empty_file_gives_the_same_defaults(tmp_path: Path) -> None:
    """An empty TOML file means the same as no file at all."""
    path = write_toml(tmp_path / "hub.toml", "")
    assert load_config(path, env={}) == load_config(None, env={})


def test_file_values_override_defaults_and_keep_the_rest(tmp_path: Path) -> None:
    """Keys in the file override the defaults; keys not mentioned keep their default."""
    path = write_toml(tmp_path / "hub.toml", '[server]\nport = 9123\n[streams]\nbuffer = 50\n')
    config = load_config(path, env={})
    assert config.server.port == 9123
    assert config.streams.buffer == 50
    assert config.server.host == "127.0.0.1"
    assert config.streams.sse_heartbeat == 15.0


def test_helper_written_config_round_trips(tmp_path: Path) -> None:
    """A file written by the test TOML writer loads to the same config as the dict it came from."""
    raw = raw_config(tmp_path / "data")
    path = write_config(tmp_path / "hub.toml", raw)
    assert load_config(path, env={}) == config_from_dict(raw, env={})
    config = load_config(path, env={})
    assert [k.role for k in config.auth.keys] == ["admin", "publisher", "subscriber", "subscriber"]
    assert config.auth.keys[3].agent == "alice"


# -- environment substitution -------------------------------------------------------------------


def test_env_reference_is_substituted(tmp_path: Path) -> None:
    """`${NAME}` in a string value is replaced by that environment variable."""
    path = write_toml(
        tmp_path / "hub.toml",
        '[auth]\njwt_secret = "${HUB_SECRET}"\n'
        '[[auth.keys]]\nkey = "${ADMIN}"\nrole = "admin"\n'
        '[server]\ndata_dir = "/srv/${SITE}/data"\n',
    )
    config = load_config(path, env={"HUB_SECRET": JWT_SECRET, "ADMIN": ADMIN_KEY, "SITE": "hanoi"})
    assert config.auth.jwt_secret == JWT_SECRET
    assert config.auth.keys[0].key == ADMIN_KEY
    assert config.server.data_dir == "/srv/hanoi/data"


def test_env_defaults_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an explicit env mapping, `${NAME}` is read from the process environment."""
    monkeypatch.setenv("CALLHUB_TEST_HOST", "::1")
    config = config_from_dict({"server": {"host": "${CALLHUB_TEST_HOST}"}})
    assert config.server.host == "::1"


def test_double_dollar_keeps_a_literal_reference() -> None:
    """`$${NAME}` stays the literal text `${NAME}` and needs no such variable."""
    config = config_from_dict({"server": {"data_dir": "/tmp/$${NOT_SET}/x"}}, env={})
    assert config.server.data_dir == "/tmp/${NOT_SET}/x"


def test_substituted_value_is_not_substituted_again() -> None:
    """A variable whose value itself contains `${...}` is taken literally."""
    config = config_from_dict({"server": {"data_dir": "${DIR}"}}, env={"DIR": "/x/${OTHER}"})
    assert config.server.data_dir == "/x/${OTHER}"


def test_missing_env_var_is_a_problem_at_its_key_path() -> None:
    """A `${NAME}` whose variable is not set is reported at the key that references it."""
    raw = {
        "auth": {
            "jwt_secret": "${NO_SUCH_SECRET}",
            "keys": [
                {"key": ADMIN_KEY, "role": "admin"},
                {"key": "${NO_SUCH_KEY}", "role": "publisher"},
            ],
        }
    }
    problems = problems_of(raw)
    assert "NO_SUCH_SECRET" in problems["auth.jwt_secret"]
    assert "NO_SUCH_KEY" in problems["auth.keys[1].key"]
    assert "auth.keys[0].key" not in problems


# -- units -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("15s", 15.0), ("10m", 600.0), ("8h", 28800.0), ("7d", 604800.0),
        ("250ms", 0.25), (30, 30.0), (1.5, 1.5),
    ],
)
def test_durations_parse(text: str | float, seconds: float) -> None:
    """Durations like "15s", "10m", "8h", "7d", "250ms" or plain seconds are understood."""
    config = config_from_dict({"streams": {"sse_heartbeat": text}}, env={})
    assert config.streams.sse_heartbeat == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "size"), [("64KiB", 65536), ("1MiB", 1048576), ("2MB", 2_000_000), ("512", 512), (4096, 4096)]
)
def test_sizes_parse(text: str | int, size: int) -> None:
    """Sizes like "64KiB", "1MiB", "2MB" or plain bytes are understood."""
    config = config_from_dict({"server": {"max_body": text}}, env={})
    assert config.server.max_body == size


def test_units_from_a_toml_file(tmp_path: Path) -> None:
    """Durations and sizes written as TOML strings load as seconds and bytes."""
    path = write_toml(
        tmp_path / "hub.toml",
        '[server]\nmax_body = "64KiB"\nshutdown_grace = "2s"\n'
        '[retention]\nage = "8h"\ninterval = "10m"\n'
        '[streams]\nws_ping_interval = "15s"\nws_max_message = "1MiB"\n',
    )
    config = load_config(path, env={})
    assert config.server.max_body == 65536
    assert config.server.shutdown_grace == 2.0
    assert config.retention.age == 8 * 3600
    assert config.retention.interval == 600
    assert config.streams.ws_ping_interval == 15.0
    assert config.streams.ws_max_message == 1024 * 1024


@pytest.mark.parametrize("bad", ["soon", "15 parsecs", "-5s", -3, True, {"s": 5}, ["5s"]])
def test_bad_duration_is_a_problem_at_its_key(bad: Any) -> None:
    """A value that is not a duration (a table or a list included) is reported at its key path."""
    problems = problems_of({"streams": {"sse_heartbeat": bad}})
    assert list(problems) == ["streams.sse_heartbeat"]


@pytest.mark.parametrize("bad", ["huge", "12 PB", -1, "1.5MiB", {"MiB": 1}, [1]])
def test_bad_size_is_a_problem_at_its_key(bad: Any) -> None:
    """A value that is not a size (a table or a list included) is reported at its key path."""
    problems = problems_of({"server": {"max_body": bad}})
    assert list(problems) == ["server.max_body"]


# -- unknown keys and wrong types ------------------------------------------------------------------


def test_unknown_key_is_reported_with_its_path() -> None:
    """A misspelt key is refused, named by its full key path."""
    problems = problems_of({"server": {"prot": 9000}})
    assert list(problems) == ["server.prot"]
    assert "unknown" in problems["server.prot"]


def test_a_broker_under_server_is_refused_with_where_redis_is_chosen() -> None:
    """`[server] broker` (where one might look for Redis) is refused, pointing at `[backend] url`."""
    problems = problems_of({"server": {"broker": "redis://10.0.0.5:6379/0"}})
    assert list(problems) == ["server.broker"]
    assert "[backend] url" in problems["server.broker"]


def test_unknown_key_inside_an_array_of_tables() -> None:
    """An unknown key in `[[auth.keys]]` is reported with the table's index."""
    problems = problems_of({"auth": {"keys": [{"key": ADMIN_KEY, "role": "admin", "agnet": "bob"}]}})
    assert list(problems) == ["auth.keys[0].agnet"]


def test_wrong_type_is_reported_with_its_path() -> None:
    """A value of the wrong type is reported at its key path."""
    assert list(problems_of({"server": {"port": "http"}})) == ["server.port"]
    assert list(problems_of({"server": {"port": 70000}})) == ["server.port"]
    assert list(problems_of({"streams": {"buffer": [1, 2]}})) == ["streams.buffer"]


def test_bad_role_is_reported_at_its_array_index() -> None:
    """A key with an unknown role is reported as `auth.keys[N].role`."""
    raw = {"auth": {"keys": [{"key": ADMIN_KEY, "role": "admin"}, {"key": "x" * 20, "role": "root"}]}}
    problems = problems_of(raw)
    assert list(problems) == ["auth.keys[1].role"]
    assert "admin" in problems["auth.keys[1].role"]


def test_short_api_key_and_jwt_secret_are_refused() -> None:
    """API keys shorter than 16 characters and JWT secrets shorter than 32 are refused."""
    problems = problems_of({"auth": {"jwt_secret": "short", "keys": [{"key": "tiny", "role": "admin"}]}})
    assert set(problems) == {"auth.jwt_secret", "auth.keys[0].key"}


def test_section_that_is_not_a_table_is_reported() -> None:
    """`server = 5` is reported at `server`."""
    assert list(problems_of({"server": 5})) == ["server"]


def test_unknown_backend_is_reported(tmp_path: Path) -> None:
    """An unknown backend URL scheme is refused at `backend.url` when the hub is built (as `check` does)."""
    config = config_from_dict({"backend": {"url": "mongodb://db/events"},
                               "server": {"data_dir": str(tmp_path)}}, env={})
    with pytest.raises(ConfigError) as info:
        build(config, check_only=True)
    ((where, message),) = info.value.problems
    assert where == "backend.url" and "local" in message


def test_every_problem_is_reported_at_once() -> None:
    """All problems in a file come back together, each with its own key path."""
    raw = {
        "server": {"port": "http", "bogus": 1, "data_dir": "${MISSING_DIR}"},
        "streams": {"sse_heartbeat": "often", "buffer": 0},
        "retention": {"count": -1},
        "auth": {"keys": [{"key": ADMIN_KEY, "role": "admin"}, {"key": ADMIN_KEY, "role": "root"}]},
    }
    problems = problems_of(raw)
    assert set(problems) == {
        "server.port",
        "server.bogus",
        "server.data_dir",
        "streams.sse_heartbeat",
        "streams.buffer",
        "retention.count",
        "auth.keys[1].role",
    }


def test_every_problem_is_reported_from_a_file(tmp_path: Path) -> None:
    """`load_config` on a bad file raises one error naming the file and listing every key path."""
    path = write_toml(
        tmp_path / "bad.toml",
        '[server]\nport = "eighty"\nhots = "x"\n[streams]\nws_max_message = "lots"\n'
        '[[auth.keys]]\nkey = "publisher-key-0123456789"\nrole = "owner"\n',
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert {p for p, _ in info.value.problems} == {
        "server.port",
        "server.hots",
        "streams.ws_max_message",
        "auth.keys[0].role",
    }
    text = str(info.value)
    assert str(path) in text
    for key_path in ("server.port", "server.hots", "streams.ws_max_message", "auth.keys[0].role"):
        assert key_path in text


def test_missing_file_and_invalid_toml_are_config_errors(tmp_path: Path) -> None:
    """A missing file or a file that is not TOML is a ConfigError, not a crash."""
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml", env={})
    path = write_toml(tmp_path / "broken.toml", "[server\nport = 1\n")
    with pytest.raises(ConfigError, match="TOML"):
        load_config(path, env={})


# -- auth = false ---------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "hub.example.com"])
def test_auth_off_is_refused_on_a_non_loopback_host(host: str) -> None:
    """`auth = false` on an address reachable from other machines is refused at `server.auth`."""
    problems = problems_of({"server": {"host": host, "auth": False}})
    assert list(problems) == ["server.auth"]
    assert "loopback" in problems["server.auth"]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_auth_off_is_allowed_on_loopback(host: str) -> None:
    """`auth = false` is accepted when the hub only listens on a loopback address."""
    config = config_from_dict({"server": {"host": host, "auth": False}}, env={})
    assert config.server.auth is False


def test_auth_off_with_public_host_override_is_refused() -> None:
    """A `--host 0.0.0.0` override on top of an auth-off loopback file is refused too."""
    with pytest.raises(ConfigError) as info:
        config_from_dict(
            {"server": {"host": "127.0.0.1", "auth": False}},
            env={},
            overrides={"server": {"host": "0.0.0.0"}},
        )
    assert [p for p, _ in info.value.problems] == ["server.auth"]


def test_auth_off_on_public_host_is_reported_alongside_other_problems() -> None:
    """The auth-off refusal is listed together with the file's other problems, not hidden by them."""
    problems = problems_of({"server": {"host": "0.0.0.0", "auth": False}, "streams": {"buffer": "many"}})
    assert set(problems) == {"server.auth", "streams.buffer"}


# -- sections --------------------------------------------------------------------------------------


class RingSection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    secret: str
    n: int = 1


def test_unknown_section_is_reported_when_handler_sections_are_known() -> None:
    """A top-level table that is neither core nor a handler's is reported by its name."""
    problems = problems_of({"servr": {"port": 1}, "antring": {"secret": "x"}}, handler_sections={"antring": RingSection})
    assert list(problems) == ["servr"]
    assert "unknown" in problems["servr"]


def test_handler_sections_are_validated_by_their_model() -> None:
    """A handler's section is validated by its model (env substituted) and kept as the model."""
    config = config_from_dict(
        {"antring": {"secret": "${RING}", "n": 3}}, env={"RING": "s3cr3t"}, handler_sections={"antring": RingSection}
    )
    assert config.handlers == {"antring": RingSection(secret="s3cr3t", n=3)}


def test_handler_section_problems_carry_the_section_in_their_key_path() -> None:
    """A bad vendor key is reported as `antring.n`, beside core problems."""
    problems = problems_of({"antring": {"secret": "x", "n": "many", "typo": 1}, "server": {"port": "x"}},
                           handler_sections={"antring": RingSection})
    assert set(problems) == {"antring.n", "antring.typo", "server.port"}


def test_unknown_section_listed_with_other_problems() -> None:
    """An unknown section is one more problem in the list, next to the key-level ones."""
    problems = problems_of({"sever": {}, "server": {"port": "x"}}, handler_sections={})
    assert set(problems) == {"sever", "server.port"}


def test_config_is_immutable() -> None:
    """The loaded config cannot be changed by accident at run time."""
    config = load_config(None, env={})
    assert isinstance(config, Config)
    with pytest.raises(ValidationError):
        config.server.port = 1  # type: ignore[misc]


def test_actions_section_problems_are_reported_at_their_keys() -> None:
    """`[actions]`: a bad allow-list entry, a secret that is not whsec_, a bad duration, each at its key."""
    problems = problems_of({"actions": {"allow_private": ["10.0.0.0/8", "not a host!"], "concurrency": 0,
                                        "timeouts": {"webhook.post": "soon"},
                                        "webhook": {"secret": "plain-secret"}}})
    assert set(problems) == {"actions.allow_private[1]", "actions.concurrency", "actions.timeouts.webhook.post",
                             "actions.webhook.secret"}
    assert "whsec_" in problems["actions.webhook.secret"]
