"""deploy/prometheus/alerts.yaml and deploy/grafana/sluice-dashboard.json: valid, firing, and true to /metrics.

promtool (Debian's prometheus package) checks the rules, runs their unit tests
(alerts_test.yaml), and checks every Grafana query as PromQL. Every metric and label value they
name must be one Sluice exports, so a renamed metric fails here instead of in a silent panel.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from prometheus_client.metrics import MetricWrapperBase

from server.metrics import Metrics
from tests.support.processes import ROOT

PROMTOOL = "/usr/bin/promtool"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
ALERTS_TEST = ROOT / "deploy" / "prometheus" / "alerts_test.yaml"
GRAFANA = ROOT / "deploy" / "grafana" / "sluice-dashboard.json"
METRIC_NAME = re.compile(r"\bsluice_[a-z_]+\b")
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
# Grafana's variables, replaced by values PromQL accepts before promtool reads the queries.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$instance": ".*"}


def exported_series() -> set[str]:
    """Every series name Sluice's /metrics can carry."""
    names: set[str] = set()
    metrics = Metrics()
    metrics.redis_reachability()  # registered only with Redis configured
    for family in metrics.registry.collect():
        names.update(family.name + suffix for suffix in SUFFIXES[family.type])
    return names


def exported_labels() -> set[str]:
    """Every label Sluice's series carry, and those Prometheus adds (le on buckets, scrape labels)."""
    metrics = Metrics()
    labels = {"le", "instance", "job"}
    for metric in vars(metrics).values():
        if isinstance(metric, MetricWrapperBase):
            labels.update(metric._labelnames)
    return labels


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=60, cwd=ALERTS.parent)


def grafana_queries() -> list[str]:
    dashboard = json.loads(GRAFANA.read_text())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            queries.append(variable["definition"])
    return queries


def test_the_alert_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", ALERTS)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 6 rules found" in result.stdout


def test_each_alert_fires_on_its_series_and_stays_quiet_on_healthy_traffic() -> None:
    result = promtool("test", "rules", ALERTS_TEST)

    assert result.returncode == 0, result.stdout + result.stderr


def test_the_alert_rules_name_only_series_sluice_exports() -> None:
    named = set(METRIC_NAME.findall(ALERTS.read_text()))

    assert named
    assert named <= exported_series(), named - exported_series()


def test_the_alert_rules_and_grafana_queries_use_only_labels_sluice_sets() -> None:
    text = ALERTS.read_text() + "\n".join(grafana_queries())
    matched = set(re.findall(r"([a-z_]+)(?:=~?|!=|!~)\"", text))
    grouped = {label.strip() for group in re.findall(r"by \(([a-z_, ]+)\)", text) for label in group.split(",")}

    assert grouped >= {"upstream", "le", "status", "code", "outcome"}
    assert matched | grouped <= exported_labels(), (matched | grouped) - exported_labels()


def test_the_grafana_queries_name_only_series_sluice_exports() -> None:
    named = {name for query in grafana_queries() for name in METRIC_NAME.findall(query)}

    assert len(named) >= 8
    assert named <= exported_series(), named - exported_series()


def test_the_grafana_queries_are_valid_promql(tmp_path: Path) -> None:
    rules = []
    for number, query in enumerate(grafana_queries()):
        if query.startswith("label_values("):
            continue  # a Grafana function, not PromQL
        for variable, value in GRAFANA_VARIABLES.items():
            query = query.replace(variable, value)
        rules.append({"record": f"grafana:query_{number}", "expr": query})
    # JSON is YAML: promtool reads the rule file as written.
    rule_file = tmp_path / "grafana_rules.yaml"
    rule_file.write_text(json.dumps({"groups": [{"name": "grafana", "rules": rules}]}))

    result = promtool("check", "rules", rule_file)

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout
