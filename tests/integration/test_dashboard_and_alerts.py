"""monitoring/: the Grafana dashboard is importable, and its every query and every alert
rule's expression parses in a real Prometheus that scraped a real proxy after it served
traffic, naming only series the proxy exports (docs/operations.md, "Dashboard" and
"Alerts"; promtool's checks of the rules are in tests/unit/test_alert_rules.py)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from auth_setup import AuthSetupFactory
from jobs_client import finished, wait_for_job
from processes import LOOPBACK, free_port, http_client
from prometheus_server import Prometheus, start_prometheus
from token_gateway import Gateway

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "monitoring" / "grafana" / "model-proxy-dashboard.json"
ALERTS = ROOT / "monitoring" / "prometheus-alerts.yml"
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
# Grafana's own variables, as Grafana would fill them in for a 1-hour view.
BUILT_INS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}
# Series Prometheus makes itself for every target, not in the proxy's exposition.
PROMETHEUS_SERIES = {"up"}
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "and", "or", "unless", "offset", "inf", "nan",
}  # fmt: skip


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def all_panels() -> Iterator[dict[str, Any]]:
    for panel in dashboard()["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row holds its panels


def expressions() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query of every panel."""
    return [
        (panel["title"], target["expr"])
        for panel in all_panels()
        for target in panel.get("targets", [])
    ]


def variables() -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = dashboard()["templating"]["list"]
    return found


def substituted(expr: str) -> str:
    """``expr`` as Grafana sends it with every variable at "All"."""
    for name, value in BUILT_INS.items():
        expr = expr.replace(name, value)
    for variable in variables():
        expr = expr.replace(f"${variable['name']}", variable["allValue"])
    assert "$" not in expr, f"an unknown variable in {expr}"
    return expr


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects: identifiers outside label matchers,
    strings, ranges and grouping clauses that are not functions or keywords."""
    bare = re.sub(r'"[^"]*"', "", expr)
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", bare)
    bare = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", bare)
    names = set()
    for found in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", bare):
        word = found.group()
        follows = bare[found.end() :].lstrip()
        if follows.startswith("(") or word.lower() in PROMQL_WORDS:
            continue
        names.add(word)
    return names


def exposed_names(exposition: str) -> set[str]:
    """Sample names, and the family names of # TYPE lines (a family without samples)."""
    names = set()
    for line in exposition.splitlines():
        typed = re.match(r"# TYPE (\S+) ", line)
        if typed:
            names.add(typed.group(1))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


# --- structure: what Grafana's import needs -----------------------------------------


def test_the_dashboard_is_importable_with_a_prometheus_input() -> None:
    board = dashboard()
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    assert board["uid"] == "model-proxy" and board["title"] and board["id"] is None
    [source] = board["__inputs"]
    assert source == {
        "name": "DS_PROMETHEUS",
        "label": "Prometheus",
        "description": source["description"],
        "type": "datasource",
        "pluginId": "prometheus",
        "pluginName": "Prometheus",
    }
    required = {(entry["type"], entry["id"]) for entry in board["__requires"]}
    assert {("grafana", "grafana"), ("datasource", "prometheus")} <= required
    # Grafana checks that the panel plugins a dashboard uses are installed.
    panel_types = {panel["type"] for panel in all_panels() if panel["type"] != "row"}
    assert panel_types <= {id_ for kind, id_ in required if kind == "panel"}
    for variable in variables():
        assert variable["datasource"] == DATASOURCE, variable["name"]
        assert variable["query"]["query"].startswith("label_values(")


def test_every_panel_has_an_id_a_place_and_the_prometheus_input() -> None:
    panels = list(all_panels())
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        place = panel["gridPos"]
        assert place["x"] >= 0 and place["w"] > 0 and place["x"] + place["w"] <= 24, panel["title"]
        for x in range(place["x"], place["x"] + place["w"]):
            for y in range(place["y"], place["y"] + place["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
        if panel["type"] in ("row", "text"):
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert ref_ids and len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]


def test_the_dashboard_covers_what_issue_13_asks_for() -> None:
    used = set().union(*(metric_names(expr) for _, expr in expressions()))
    assert {
        "model_proxy_requests_total",
        "model_proxy_request_duration_seconds_bucket",
        "model_proxy_upstream_call_duration_seconds_bucket",
        "model_proxy_upstream_call_failures_total",
        "model_proxy_dicom_received_bytes_total",
        "model_proxy_model_request_bytes_total",
        "model_proxy_result_sent_bytes_total",
        "model_proxy_cache_lookups_total",
        "model_proxy_admission_rejections_total",
        "model_proxy_memory_budget_used_bytes",
        "model_proxy_memory_budget_bytes",
        "model_proxy_breaker_state",
        "model_proxy_pacs_token_refreshes_total",
        "model_proxy_pacs_token_refresh_failures_total",
        "model_proxy_cache_size_bytes",
        "model_proxy_cache_max_bytes",
        "model_proxy_jobs",
        "model_proxy_jobs_finished_total",
        "model_proxy_job_queue_wait_seconds_bucket",
        "model_proxy_job_run_duration_seconds_bucket",
    } <= used
    quantiles = {
        q for _, expr in expressions() for q in re.findall(r"histogram_quantile\(([\d.]+)", expr)
    }
    assert quantiles == {"0.5", "0.95", "0.99"}
    titles = [panel["title"] for panel in all_panels()]
    assert any(title.startswith("Jobs by state") for title in titles)


# --- every expression against a real Prometheus -------------------------------------


@pytest.fixture
def scraped(
    auth_setup: AuthSetupFactory, token_pacs: Gateway, tmp_path: Path
) -> Iterator[tuple[Prometheus, str]]:
    """A Prometheus that scraped a proxy (token PACS, example model) after it served a
    miss, a hit and a token renewal; and the proxy's exposition at that time."""
    metrics_port = free_port()
    setup = auth_setup(
        token_pacs.server_entry("token"), extra_args=["--metrics-port", str(metrics_port)]
    )
    key_file = tmp_path / "scrape.key"
    key_file.write_text("unused: the proxy has no access.json, /metrics is open")
    with start_prometheus(
        tmp_path / "prometheus", target=f"{LOOPBACK}:{metrics_port}", key_file=key_file
    ) as prometheus:
        prometheus.wait_for('up{job="model-proxy"}', 1)
        with setup.proxy.client() as client:
            assert client.get(setup.series_path).status_code == 200
            assert client.get(setup.series_path).status_code == 200
            assert client.get("/no-such-route").status_code == 404
            # A job, for the jobs row: its result is the cached one, so it ends at once.
            series = setup.study.series[0].series_uid
            submitted = client.post(
                "/jobs",
                json={"model": setup.model_id, "study": setup.study.study_uid, "series": series},
            )
            assert submitted.status_code == 202, submitted.text
            job = wait_for_job(client, submitted.json()["id"], finished)
            assert job["status"] == "succeeded", job
        prometheus.wait_for('model_proxy_cache_lookups_total{result="hit"}', 1)
        prometheus.wait_for("model_proxy_pacs_token_refreshes_total", 1)
        prometheus.wait_for('model_proxy_jobs_finished_total{status="succeeded"}', 1)
        prometheus.wait_for('model_proxy_requests_total{route="other",status="404"}', 1)
        # Two scrapes after the traffic: rate() and increase() need two samples of it.
        prometheus.wait_for(
            'count_over_time(model_proxy_requests_total{route="other",status="404"}[1m]) >= bool 2',
            1,
        )
        with http_client(timeout=30.0) as client:
            exposition = client.get(f"http://{LOOPBACK}:{metrics_port}/metrics").text
        yield prometheus, exposition


def query(prometheus: Prometheus, expr: str) -> dict[str, Any]:
    with http_client(timeout=30.0) as client:
        answer: dict[str, Any] = client.get(
            f"{prometheus.url}/api/v1/query", params={"query": expr}
        ).json()
    return answer


def test_every_query_runs_on_series_a_real_proxy_exports(
    scraped: tuple[Prometheus, str],
) -> None:
    # One Prometheus and one proxy for the three checks: each takes a minute to set up
    # on a loaded machine.
    prometheus, exposition = scraped
    exported = exposed_names(exposition) | PROMETHEUS_SERIES
    check_panels(prometheus, exported)
    check_variables(prometheus)
    check_alerts(prometheus, exported)


def check_panels(prometheus: Prometheus, exported: set[str]) -> None:
    empty = []
    for title, expr in expressions():
        names = metric_names(expr)
        assert names, f"{title}: no metric in {expr}"
        assert names <= exported, f"{title}: {names - exported} not in the exposition"
        answer = query(prometheus, substituted(expr))
        assert answer["status"] == "success", f"{title}: {answer}"
        assert not answer.get("warnings"), f"{title}: {answer['warnings']}"
        if not answer["data"]["result"]:
            empty.append(f"{title}: {expr}")
    # After a miss, a hit, a 404 and a token renewal every query has data: a figure of
    # something that did not happen (failures, rejections, open breakers) is 0, not
    # missing, so the panel shows 0 rather than "No data".
    assert not empty, "\n".join(empty)


def check_variables(prometheus: Prometheus) -> None:
    found: dict[str, list[str]] = {}
    for variable in variables():
        # label_values(selector, label) is Grafana's call of the series API.
        call = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"]["query"])
        assert call is not None, variable["query"]
        selector = substituted(call.group(1))
        with http_client(timeout=30.0) as client:
            answer = client.get(
                f"{prometheus.url}/api/v1/label/{call.group(2)}/values",
                params={"match[]": selector},
            ).json()
        assert answer["status"] == "success", answer
        found[variable["name"]] = answer["data"]
    assert found["job"] == ["model-proxy"]
    assert found["instance"] and found["model"]


def alert_expressions() -> list[tuple[str, str]]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [(rule["alert"], rule["expr"]) for group in rules["groups"] for rule in group["rules"]]


def check_alerts(prometheus: Prometheus, exported: set[str]) -> None:
    # promtool checks the syntax and fires the alerts on synthetic series; this checks
    # that those series are the ones a real proxy exports, under the same names.
    for alert, expr in alert_expressions():
        names = metric_names(expr)
        assert names and names <= exported, f"{alert}: {names - exported} not in the exposition"
        answer = query(prometheus, expr)
        assert answer["status"] == "success", f"{alert}: {answer}"
        assert not answer.get("warnings"), f"{alert}: {answer['warnings']}"
