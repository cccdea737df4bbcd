"""The monitoring stack agrees with itself and with the code: the Grafana dashboard asks
only for metrics and labels Pausepoint serves, Prometheus scrapes the ports the
compose file gives the workers and the API, Grafana's provisioning names the data
source the dashboard uses, and the services' own shell commands do what they say.

The metric names are read at test time from what the code registers (the workers'
metrics and the store's gauges on a real SQLite store), never from a list kept here.
There is no Docker engine on these machines: the compose commands' shell is run with
``sh``, and the Prometheus file is checked by ``promtool`` (Debian's `prometheus`
package, which .ci/install-promtool installs in CI).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

from pausepoint.persistence.store import Store
from pausepoint.tasks import metrics
from pausepoint.worker.metrics import StoreCollector

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "worker" / "monitoring"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "pausepoint.json"
SUFFIXES = ("_bucket", "_count", "_sum", "_created", "_total")


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def served(tmp_path: Path) -> dict[str, set[str]]:
    """Every pausepoint metric family the code serves, with its labels."""
    metrics.metrics()
    families: dict[str, set[str]] = {}
    store = Store.from_url(f"sqlite:///{tmp_path / 's.db'}")
    try:
        collected = [*REGISTRY.collect(), *StoreCollector(store).collect()]
    finally:
        store.close()
    for family in collected:
        if not family.name.startswith("pausepoint_"):
            continue
        labels = families.setdefault(family.name, set())
        for s in family.samples:
            labels |= set(s.labels) - {"le"}
        # A family with no samples yet: its declared labels.
        labels |= set(getattr(family, "_labelnames", ()) or ())
    for m in metrics.metrics().__dict__.values():
        families.setdefault(m._name, set()).update(m._labelnames)
    return families


def family_of(name: str, known: dict[str, set[str]]) -> str | None:
    if name in known:
        return name
    for suffix in SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in known:
            return name[: -len(suffix)]
    return None


def expressions() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p["targets"]]


def test_every_panel_has_a_title_and_a_query(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "pausepoint"
    assert len(dashboard["panels"]) >= 10
    for panel in dashboard["panels"]:
        assert panel["title"] and panel["targets"], panel
        assert all(t["expr"].strip() for t in panel["targets"]), panel["title"]
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("runs", "waits", "step duration", "resume", "sweeper", "lease", "model"):
        assert topic in titles, topic


def test_the_dashboard_asks_only_for_metrics_and_labels_that_exist(tmp_path: Path) -> None:
    known = served(tmp_path)
    # The list: each is served.
    for name in (
        "pausepoint_runs",
        "pausepoint_waits_pending",
        "pausepoint_wait_oldest_age_seconds",
        "pausepoint_step_duration_seconds",
        "pausepoint_resume_latency_seconds",
        "pausepoint_sweep_duration_seconds",
        "pausepoint_lease_expiries",
        "pausepoint_model_call_duration_seconds",
    ):
        assert family_of(name, known), (name, sorted(known))
    used = set()
    for title, expr in expressions():
        for name in re.findall(r"\bpausepoint_[a-z_]+", expr):
            family = family_of(name, known)
            assert family is not None, f"{title}: {name} is not a metric Pausepoint serves"
            used.add(family)
            # Labels filtered on ({x="..."}) right after this metric.
            for selector in re.findall(rf"\b{name}\{{([^}}]*)\}}", expr):
                for label in re.findall(r"(\w+)\s*=~?", selector):
                    assert label in known[family] | {"le"}, (title, name, label)
        for group in re.findall(r"\bby \(([^)]*)\)", expr):
            labels = {g.strip() for g in group.split(",")} - {"le"}
            names = {family_of(n, known) for n in re.findall(r"\bpausepoint_[a-z_]+", expr)}
            have = set().union(*(known[n] for n in names if n))
            assert labels <= have, (title, labels, have)
    # Every family the code serves has a panel.
    assert used == set(known), set(known) - used


def test_prometheus_scrapes_the_ports_compose_gives(tmp_path: Path) -> None:
    services = compose()["services"]
    prom = services["prometheus"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in prom["volumes"] if v.startswith("./")}
    source = ROOT / mounts["/etc/prometheus/prometheus.yml"]
    assert source == MONITORING / "prometheus.yml" and source.exists()
    config = yaml.safe_load(source.read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}

    worker_env = services["worker"]["environment"]
    workers = jobs["pausepoint-workers"]["dns_sd_configs"][0]
    assert workers["names"] == ["worker"]
    assert workers["port"] == int(worker_env["PAUSEPOINT_METRICS_PORT"])
    assert worker_env["PAUSEPOINT_METRICS_HOST"] == "0.0.0.0"  # reachable on the network
    # The shared environment still reaches the workers (the merge kept it).
    assert worker_env["PAUSEPOINT_STORE_URL"].startswith("postgresql://")
    assert "ports" not in services["worker"]  # scaled: no host port

    api = jobs["pausepoint-api"]
    assert api["metrics_path"] == "/metrics"
    api_port = services["api"]["command"][services["api"]["command"].index("--port") + 1]
    assert api["static_configs"][0]["targets"] == [f"api:{api_port}"]
    assert api["authorization"]["credentials_file"] in " ".join(prom["command"])

    for name in ("prometheus", "grafana"):
        for port in services[name]["ports"]:
            assert str(port).startswith("127.0.0.1:"), (name, port)


def test_grafana_provisions_the_source_and_folder_the_dashboard_uses() -> None:
    grafana = compose()["services"]["grafana"]
    mounts = {v.split(":")[1]: ROOT / v.split(":")[0] for v in grafana["volumes"]}
    provisioning = mounts["/etc/grafana/provisioning"]
    assert provisioning == MONITORING / "grafana" / "provisioning"
    source = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    uid = source["datasources"][0]["uid"]
    assert source["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((provisioning / "dashboards" / "pausepoint.yml").read_text())
    folder = provider["providers"][0]["options"]["path"]
    assert mounts[folder] == DASHBOARD.parent
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == uid
        assert all(t["datasource"]["uid"] == uid for t in panel["targets"])


def shell_of(service: dict[str, Any]) -> str:
    """The service's ``sh -c`` script, with compose's ``$$`` unescaped."""
    assert service["entrypoint"] == ["/bin/sh", "-c"]
    return str(service["command"][0]).replace("$$", "$")


def test_grafana_refuses_to_start_without_a_password() -> None:
    grafana = compose()["services"]["grafana"]
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "${GRAFANA_ADMIN_PASSWORD:-}"
    script = shell_of(grafana).replace("exec /run.sh", "echo started")
    refused = subprocess.run(
        ["sh", "-c", script], env={"GF_SECURITY_ADMIN_PASSWORD": ""}, capture_output=True, text=True
    )
    assert refused.returncode == 1 and "GRAFANA_ADMIN_PASSWORD" in refused.stderr
    ok = subprocess.run(
        ["sh", "-c", script],
        env={"GF_SECURITY_ADMIN_PASSWORD": "pw"},
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0 and ok.stdout.strip() == "started"


def test_prometheus_writes_the_api_key_where_its_config_reads_it(tmp_path: Path) -> None:
    prom = compose()["services"]["prometheus"]
    script = shell_of(prom)
    key_file = tmp_path / "api_key"
    script = script.replace("/tmp/api_key", str(key_file)).replace(
        "exec /bin/prometheus", "echo prometheus"
    )
    done = subprocess.run(
        ["sh", "-c", script],
        env={"PAUSEPOINT_METRICS_KEY": "k-123"},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("prometheus --config.file=/etc/prometheus/prometheus.yml")
    assert key_file.read_text() == "k-123"  # no newline: the bearer token is exact


def test_promtool_accepts_the_config(tmp_path: Path) -> None:
    if shutil.which("promtool") is None:
        if os.environ.get("PAUSEPOINT_REQUIRE_SERVICES"):
            pytest.fail("promtool is missing (bash .ci/install-promtool installs it)")
        pytest.skip("promtool not installed (bash .ci/install-promtool)")
    text = (MONITORING / "prometheus.yml").read_text()
    key_file = tmp_path / "api_key"
    key_file.write_text("k")
    config = tmp_path / "prometheus.yml"
    config.write_text(text.replace("/tmp/api_key", str(key_file)))
    checked = subprocess.run(
        ["promtool", "check", "config", str(config)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
