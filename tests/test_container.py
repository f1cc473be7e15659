"""The container files, checked without a container engine: the Dockerfile's properties, compose's
services and the files they mount, Prometheus' and Grafana's provisioning; and the image's own
entry command run as a real process here, stopped with SIGTERM.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.helpers import ADMIN, PUBLISHER, WAIT, event, free_port, raw_config, wait_until, write_config

ROOT = Path(__file__).resolve().parent.parent
#: Files compose mounts that the metrics half of issue 14 adds (the dashboards, the alert rules).
#: Their existence is that work's test; this list goes away when both halves are merged.


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile as (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = (ROOT / "Dockerfile").read_text()
    joined = re.sub(r"\\\n\s*", "", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def exec_form(args: str) -> list[str]:
    """`["a", "b"]` (exec form) as a list; the shell form is refused (no signal reaches the hub through sh)."""
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, args in final_stage():
        if word == "ENV":
            for item in shlex.split(args):
                name, _, value = item.partition("=")
                env[name] = value
    return env


def image_copies() -> dict[str, str]:
    """Path in the image -> path in the repository, for the final stage's COPY from the build context."""
    copies = {}
    for word, args in final_stage():
        if word == "COPY" and not args.startswith("--from"):
            source, target = args.split()
            copies[target] = source
    return copies


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return loaded


def test_dockerfile_is_multi_stage_slim_and_runs_as_a_non_root_user() -> None:
    """Two stages or more, the final one on a slim Python, a non-root USER, config and data as volumes."""
    steps = instructions()
    froms = [args for word, args in steps if word == "FROM"]
    assert len(froms) >= 2 and " AS " in froms[0].upper()
    assert re.fullmatch(r"python:3\.\d+-slim", froms[-1]), froms[-1]
    final = final_stage()
    users = [args for word, args in final if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    volumes = [v for word, args in final if word == "VOLUME" for v in exec_form(args)]
    env = image_env()
    assert os.path.dirname(env["CALLHUB_CONFIG"]) in volumes and env["CALLHUB_DATA_DIR"] in volumes
    assert any(word == "COPY" and args.startswith("--from=") for word, args in final)
    for source in image_copies().values():
        assert (ROOT / source).exists(), source


def test_dockerfile_healthcheck_asks_healthz_on_the_exposed_port() -> None:
    """HEALTHCHECK (exec form) requests /healthz on the port the image exposes and its config listens on."""
    final = final_stage()
    check = next(args for word, args in final if word == "HEALTHCHECK")
    command = exec_form(check[check.index("CMD") + 3:].strip())
    exposed = next(args for word, args in final if word == "EXPOSE")
    assert f"127.0.0.1:{exposed}/healthz" in " ".join(command)
    config = (ROOT / image_copies()[image_env()["CALLHUB_CONFIG"]]).read_text()
    assert re.search(rf"^port = {exposed}\b", config, re.M)


def test_dockerignore_keeps_local_state_out_of_the_build_context() -> None:
    """The virtualenv, the data directory and git never go into the image."""
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", "callhub-data"} <= ignored
    for source in image_copies().values():  # and nothing the image needs is ignored
        assert source.split("/")[0] not in ignored


def test_compose_runs_the_hub_redis_prometheus_and_grafana_with_existing_mounts() -> None:
    """Four services; every path compose mounts from the repository exists (the dashboard and the alert rules too)."""
    services = compose()["services"]
    assert {"hub", "redis", "prometheus", "grafana"} <= set(services)
    assert services["hub"]["build"] == "." and "8080:8080" in services["hub"]["ports"]
    mounted: dict[str, str] = {}
    for service in services.values():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("./"):
                mounted[target] = source[2:]
    assert {"grafana/dashboards", "grafana/alerts.yml"} <= set(mounted.values())
    for target, source in mounted.items():
        assert (ROOT / source).exists(), f"compose mounts ./{source} at {target}, which does not exist"


def test_prometheus_scrapes_the_hub_and_loads_the_mounted_alert_rules() -> None:
    """grafana/prometheus.yml: the hub's /metrics on its compose name and port; rule files where compose mounts them."""
    prometheus = yaml.safe_load((ROOT / "grafana/prometheus.yml").read_text())
    volumes = compose()["services"]["prometheus"]["volumes"]
    assert "./grafana/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in volumes
    assert prometheus["rule_files"] == ["/etc/prometheus/alerts.yml"]
    assert "./grafana/alerts.yml:/etc/prometheus/alerts.yml:ro" in volumes
    (job,) = prometheus["scrape_configs"]
    assert job["metrics_path"] == "/metrics" and job["static_configs"][0]["targets"] == ["hub:8080"]


def test_grafana_provisioning_points_at_prometheus_and_the_mounted_dashboards() -> None:
    """The datasource (uid prometheus) is compose's Prometheus; the dashboard provider reads the mounted folder."""
    services = compose()["services"]
    (source,) = yaml.safe_load((ROOT / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"]
    assert source["uid"] == "prometheus" and source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090" and "9090:9090" in services["prometheus"]["ports"]
    (provider,) = yaml.safe_load((ROOT / "grafana/provisioning/dashboards/callhub.yml").read_text())["providers"]
    assert provider["options"]["path"] == "/etc/grafana/dashboards"
    grafana = services["grafana"]["volumes"]
    assert "./grafana/dashboards:/etc/grafana/dashboards:ro" in grafana
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in grafana


def test_the_images_command_serves_answers_its_healthcheck_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    """ENTRYPOINT + CMD with the image's config and environment (here: the virtualenv's `callhub`, on
    loopback): healthy, and on SIGTERM it exits 0 with every acknowledged event stored."""
    final = final_stage()
    command = [*exec_form(next(a for w, a in final if w == "ENTRYPOINT")), *exec_form(next(a for w, a in final if w == "CMD"))]
    assert command[:2] == ["callhub", "serve"]
    env = image_env()
    config_in_image = env["CALLHUB_CONFIG"]
    port = free_port()
    # The image's config, as the test suite's keys need it: same [server]/[log], with the test credentials.
    image_config = (ROOT / image_copies()[config_in_image]).read_text()
    config = tmp_path / "callhub.toml"
    keys = write_config(tmp_path / "keys.toml", {"auth": raw_config(tmp_path)["auth"]}).read_text()
    config.write_text(image_config + "\n" + keys)
    data_dir = tmp_path / "data"
    process_env = {**os.environ, "CALLHUB_CONFIG": str(config), "CALLHUB_DATA_DIR": str(data_dir)}
    binary = Path(sys.executable).parent / command[0]
    log = tmp_path / "hub.log"

    def start() -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            # --host/--port: loopback and a free port here; the image listens on 0.0.0.0:8080.
            return subprocess.Popen([str(binary), *command[1:], "--host", "127.0.0.1", "--port", str(port)],
                                    env=process_env, stdout=out, stderr=out, stdin=subprocess.DEVNULL)

    url = f"http://127.0.0.1:{port}"
    check = next(args for word, args in final if word == "HEALTHCHECK")
    healthcheck = exec_form(check[check.index("CMD") + 3:].strip())
    healthcheck = [sys.executable if part == "python" else part.replace("127.0.0.1:8080", f"127.0.0.1:{port}")
                   for part in healthcheck]

    proc = start()
    try:
        wait_until(lambda: subprocess.run(healthcheck, capture_output=True).returncode == 0 or proc.poll() is not None,
                   what="the image's HEALTHCHECK command")
        assert proc.poll() is None, log.read_text()
        with httpx.Client(base_url=url, timeout=WAIT) as client:
            seqs = [client.post("/v1/events", json=event("call.ringing", n=i), headers=PUBLISHER).json()["seq"]
                    for i in range(20)]
        proc.send_signal(15)  # SIGTERM, what `docker stop` sends (STOPSIGNAL)
        assert proc.wait(WAIT) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (data_dir / "events.db").exists()
    lines = [line for line in log.read_text().splitlines() if line.startswith("{")]
    assert lines and all(json.loads(line)["level"] for line in lines)  # the image logs JSON lines
    proc = start()
    try:
        wait_until(lambda: _healthy(url) or proc.poll() is not None, what="restart")
        stored = httpx.get(f"{url}/v1/events", params={"limit": 1000}, headers=ADMIN, timeout=WAIT).json()["events"]
        assert [e["seq"] for e in stored if e["type"] == "call.ringing"] == seqs
    finally:
        proc.send_signal(15)
        assert proc.wait(WAIT) == 0


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=WAIT / 10).status_code == 200
    except httpx.TransportError:
        return False
