"""The operations kit in grafana/: the dashboard's queries against a real Prometheus scraping a real
hub, the alerting rules through promtool, and the exposition through `promtool check metrics`.

Needs Debian's `prometheus` package (`prometheus` and `promtool`; `.ci/run` installs it when
missing). Without it these tests fail, saying so; they never skip.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import ADMIN_KEY, TICK, WAIT, ServerThread, SSEReader, free_port, make_config

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "callhub.json"
#: Exported names in PromQL: the hub's own and the process collector's.
METRIC_NAME = re.compile(r"\b((?:callhub|process)_[a-z0-9_]+)\b")
#: Panels the supervisor reads first, and the operator's basics: each must return data once calls flowed.
MAIN_PANELS = (
    "Calls in progress", "Service level (15 min)", "Abandoned (15 min)", "Abandon rate (15 min)",
    "Median time to answer (15 min)", "Call outcomes (per 5 min)", "Calls in progress by direction",
    "Events stored per second, by type", "Subscribers connected", "Fan-out latency (publish to subscriber)",
    "Store commit latency",
)


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path is not None, f"{name} not found: install Debian's prometheus package (apt-get install prometheus)"
    return path


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def queries() -> dict[str, list[str]]:
    """Each panel's title -> its PromQL expressions."""
    return {p["title"]: [t["expr"] for t in p.get("targets", [])] for p in dashboard()["panels"] if p["type"] != "row"}


def exported_names(exposition: str) -> set[str]:
    """Every sample name a scrape can hold, from its TYPE lines (families without samples yet included)."""
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                        "summary": ("_sum", "_count", "_created")}.get(kind, ("",))
            names.update(name + s for s in suffixes)
            if kind == "counter" and name.endswith("_total"):
                names.add(name)
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


class Prometheus:
    """The real Prometheus binary scraping one target on loopback, with the repository's alerting rules."""

    def __init__(self, target: str, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = workdir / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"rule_files:\n  - {GRAFANA / 'alerts.yml'}\n"
            "scrape_configs:\n  - job_name: callhub\n    static_configs:\n"
            f"      - targets: ['{target}']\n"
        )
        self.process = subprocess.Popen(
            [tool("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.process.stderr.read().decode() if self.process.stderr else ""
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(TICK)
        raise AssertionError("prometheus did not become ready")

    def query(self, expr: str) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=WAIT)
        assert r.status_code == 200, f"{expr}: {r.text}"
        body = r.json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(WAIT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()


def values(result: list[dict[str, Any]]) -> list[float]:
    return [float(item["value"][1]) for item in result]


def call(type_: str, call_id: str, **data: Any) -> dict[str, Any]:
    return {"type": type_, "source": "pbx-1", "data": {"call_id": call_id, "direction": "inbound", **data}}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerThread, Prometheus]]:
    """A hub under uvicorn and a Prometheus scraping it every second; calls flow once it has scraped."""
    workdir = tmp_path_factory.mktemp("prometheus")
    contact = {"type": "campaign.contact.updated", "data": {}}
    with ServerThread(make_config(workdir / "hub")) as hub, httpx.Client(timeout=WAIT) as client, client.stream(
        "GET", f"{hub.url}/v1/stream?token={ADMIN_KEY}"
    ) as stream:
        hub.wait_subscribers(1)
        hub.publish(contact)  # its series exists before the first scrape, so its rate shows
        prometheus = Prometheus(f"127.0.0.1:{hub.port}", workdir)
        try:
            prometheus.wait_ready()
            deadline = time.monotonic() + WAIT
            while values(prometheus.query('up{job="callhub"}')) != [1.0]:
                assert time.monotonic() < deadline, "prometheus never scraped the hub"
                time.sleep(TICK)
            # One answered within the threshold, one abandoned, one ringing: service level 50%.
            hub.publish(call("call.ringing", "g1"), call("call.answered", "g1"),
                        call("call.ended", "g1", outcome="answered"),
                        call("call.ringing", "g2"), call("call.ended", "g2", outcome="cancelled"),
                        call("call.ringing", "g3"), contact)
            # The reader stays referenced: dropping it would close the stream (its line iterator's finally).
            reader = SSEReader(stream)
            assert len(reader.take(8)) == 8
            yield hub, prometheus
        finally:
            prometheus.stop()


def test_dashboard_uses_only_exported_metrics(stack: tuple[ServerThread, Prometheus]) -> None:
    """Every metric name in the dashboard's PromQL is in a live /metrics scrape (histograms by their series)."""
    hub, _ = stack
    exported = exported_names(httpx.get(f"{hub.url}/metrics", timeout=WAIT).text)
    used = {name for exprs in queries().values() for expr in exprs for name in METRIC_NAME.findall(expr)}
    assert len(used) > 20
    assert sorted(used - exported) == []


def test_dashboard_reads_the_provisioned_prometheus() -> None:
    """Every panel and query uses the datasource with uid `prometheus`; supervisor rows come first."""
    board = dashboard()
    rows = [p["title"] for p in board["panels"] if p["type"] == "row"]
    assert rows[0].endswith("(supervisor)") and rows[1].endswith("(supervisor)")
    assert all(r.endswith("(operator)") for r in rows[2:]) and len(rows) >= 5
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}, panel["title"]
            assert all(t["datasource"]["uid"] == "prometheus" for t in panel["targets"]), panel["title"]


def test_dashboard_queries_return_data_from_prometheus(stack: tuple[ServerThread, Prometheus]) -> None:
    """Through Prometheus's HTTP API every query is valid PromQL, and the main panels show the calls that flowed."""
    _, prometheus = stack
    panels = queries()
    deadline = time.monotonic() + WAIT
    while True:
        missing = [title for title in MAIN_PANELS
                   if not any(math.isfinite(v) and v > 0 for v in values(prometheus.query(panels[title][0])))]
        if not missing:
            break
        assert time.monotonic() < deadline, f"no data for {missing}"
        time.sleep(TICK * 4)
    for exprs in panels.values():
        for expr in exprs:
            prometheus.query(expr)  # valid PromQL (a 400 fails the test)
    deadline = time.monotonic() + WAIT
    while values(prometheus.query(panels["Service level (15 min)"][0])) != [0.5]:
        assert time.monotonic() < deadline, prometheus.query(panels["Service level (15 min)"][0])
        time.sleep(TICK * 4)
    in_progress = {item["metric"]["state"]: float(item["value"][1])
                   for item in prometheus.query(panels["Calls in progress"][0])}
    assert in_progress == {"ringing": 1.0, "answered": 0.0, "held": 0.0}


def test_prometheus_loads_the_alerting_rules(stack: tuple[ServerThread, Prometheus]) -> None:
    """The real Prometheus loads grafana/alerts.yml: the five alerts, none firing on a healthy hub."""
    _, prometheus = stack
    r = httpx.get(f"{prometheus.url}/api/v1/rules", timeout=WAIT).json()
    rules = {rule["name"]: rule for group in r["data"]["groups"] for rule in group["rules"]}
    assert set(rules) == {"CallhubUpstreamDown", "CallhubDeliveryBacklogGrowing", "CallhubWebhookRejectionsSpiking",
                          "CallhubStoreNotWritable", "CallhubServiceLevelLow"}
    assert all(rule["health"] in ("ok", "unknown") for rule in rules.values()), rules


def test_exposition_passes_promtool_check_metrics(stack: tuple[ServerThread, Prometheus]) -> None:
    """`promtool check metrics` finds nothing to say about the hub's /metrics."""
    hub, _ = stack
    exposition = httpx.get(f"{hub.url}/metrics", timeout=WAIT).content
    checked = subprocess.run([tool("promtool"), "check", "metrics"], input=exposition, capture_output=True,
                             timeout=WAIT)
    assert checked.returncode == 0 and not checked.stdout.strip(), checked.stdout.decode() + checked.stderr.decode()


def test_alerting_rules_pass_promtool() -> None:
    """`promtool check rules` accepts grafana/alerts.yml."""
    checked = subprocess.run([tool("promtool"), "check", "rules", str(GRAFANA / "alerts.yml")],
                             capture_output=True, text=True, timeout=WAIT)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 5 rules found" in checked.stdout


def test_alerting_rules_unit_tests_pass() -> None:
    """`promtool test rules grafana/alerts_test.yml`: each main alert fires when it should and not before."""
    checked = subprocess.run([tool("promtool"), "test", "rules", str(GRAFANA / "alerts_test.yml")],
                             capture_output=True, text=True, timeout=WAIT)
    assert checked.returncode == 0, checked.stdout + checked.stderr
