"""monitoring/prometheus-alerts.yml: promtool accepts it, and its alerts fire on the
series the proxy exports (``promtool test rules``, Prometheus's own rule evaluator on
synthetic series: no Prometheus server needed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is not installed (Debian/Ubuntu package: prometheus)")
    return found


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120)


def test_promtool_checks_the_alert_rules() -> None:
    checked = run("check", "rules", str(MONITORING / "prometheus-alerts.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 9 rules found" in checked.stdout


def test_the_alerts_fire_on_the_proxy_series() -> None:
    # Each alert against series named and labelled exactly as /metrics writes them.
    tested = run("test", "rules", str(MONITORING / "prometheus-alerts.test.yml"))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_is_shown_firing_in_the_rule_tests() -> None:
    rules = yaml.safe_load((MONITORING / "prometheus-alerts.yml").read_text())
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    cases = yaml.safe_load((MONITORING / "prometheus-alerts.test.yml").read_text())
    fired = {
        check["alertname"]
        for case in cases["tests"]
        for check in case["alert_rule_test"]
        if check["exp_alerts"]
    }
    assert fired == alerts
    assert {
        "ModelProxyUpstreamDown",
        "ModelProxyErrorRate",
        "ModelProxySlowInferences",
        "ModelProxyTokenRefreshFailing",
        "ModelProxyCacheDiskShort",
    } <= alerts
