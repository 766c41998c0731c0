"""The Grafana dashboards of deploy/grafana/dashboards, as Grafana's provisioning reads them.

No Grafana runs here: the checks are what provisioning needs (a uid, a title, panels of known
types on a 24-column grid, data sources by the uids that deploy/grafana/provisioning gives
them) and that every PromQL expression parses, by promtool, which parses PromQL with
Prometheus's own parser. That every expression also returns series from the product's real
metrics is tests/test_stack.py's live test.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))

# Grafana's built-in panel types (public/app/plugins/panel) that these dashboards may use.
PANEL_TYPES = {"row", "timeseries", "stat", "gauge", "bargauge", "table", "traces", "text"}
# What a variable of Grafana's Prometheus data source may ask: label_values(metric, label).
LABEL_VALUES = re.compile(r"^label_values\((?P<metric>[^,]+),\s*(?P<label>[a-zA-Z_]\w*)\)$")
# Grafana's built-in interval variables, replaced by a duration before Prometheus sees them.
BUILTIN_INTERVALS = ("$__rate_interval", "$__interval", "$__range")


def load(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return document


def datasources() -> dict[str, str]:
    """The provisioned data sources: uid -> type."""
    provisioning = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "datasources.yaml").read_text()
    )
    return {source["uid"]: source["type"] for source in provisioning["datasources"]}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row holds its panels


def prometheus_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expression) of every Prometheus target of the dashboard."""
    uids = {uid for uid, kind in datasources().items() if kind == "prometheus"}
    return [
        (panel["title"], target["expr"])
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
        if target["datasource"]["uid"] in uids
    ]


def variables(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [v for v in dashboard["templating"]["list"] if v["type"] == "query"]


def label_values(variable: dict[str, Any]) -> tuple[str, str]:
    """The (metric selector, label) a `label_values` variable asks Prometheus for."""
    query = variable["query"]
    text = query["query"] if isinstance(query, dict) else query
    match = LABEL_VALUES.match(text)
    assert match, f"variable {variable['name']}: {text!r} is not label_values(metric, label)"
    return match["metric"].strip(), match["label"]


def substitute(expr: str, values: dict[str, str], interval: str) -> str:
    """`expr` as Grafana sends it: built-in intervals and the dashboard's variables replaced."""
    for builtin in BUILTIN_INTERVALS:
        expr = expr.replace(builtin, interval)
    for name, value in values.items():
        expr = expr.replace(f"${name}", value)
    assert "$" not in expr, f"a variable left in {expr!r}"
    return expr


def test_there_is_a_dashboard_for_each_part_of_the_stack() -> None:
    titles = {load(path)["uid"]: load(path)["title"] for path in DASHBOARDS}
    assert set(titles) == {
        "edgetwin-fleet",
        "edgetwin-telemetry",
        "edgetwin-agents",
        "edgetwin-engine",
        "edgetwin-traces",
    }
    assert len(set(titles.values())) == len(titles)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_a_dashboard_is_what_grafana_provisioning_loads(path: Path) -> None:
    dashboard = load(path)
    sources = datasources()
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", dashboard["uid"])
    assert dashboard["title"]
    assert dashboard["schemaVersion"] >= 36
    assert "id" not in dashboard or dashboard["id"] is None  # provisioning assigns ids
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in panels(dashboard):
        where = f"{path.name}: panel {panel['title']!r}"
        assert panel["type"] in PANEL_TYPES, where
        grid = panel["gridPos"]
        assert min(grid["w"], grid["h"]) >= 1, where
        assert min(grid["x"], grid["y"]) >= 0, where
        assert grid["x"] + grid["w"] <= 24, f"{where} is wider than the grid"
        if panel["type"] == "row":
            continue
        assert panel.get("description"), f"{where} says nothing of what it shows"
        source = panel["datasource"]
        assert sources.get(source["uid"]) == source["type"], f"{where}: {source}"
        assert panel["targets"], f"{where} has no query"
        for target in panel["targets"]:
            assert target["datasource"] == source, where
            if source["type"] == "prometheus":
                assert target["expr"].strip(), where
            else:
                assert target["queryType"] == "traceql", where
                assert target["query"].strip(), where
    for variable in variables(dashboard):
        assert sources.get(variable["datasource"]["uid"]) == "prometheus"
        label_values(variable)


def test_panels_sit_side_by_side_without_overlapping() -> None:
    for path in DASHBOARDS:
        taken: set[tuple[int, int]] = set()
        for panel in panels(load(path)):
            grid = panel["gridPos"]
            cells = {
                (x, y)
                for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])
            }
            assert not cells & taken, f"{path.name}: {panel['title']!r} overlaps another panel"
            taken |= cells


def test_every_promql_expression_parses_in_prometheus(tmp_path: Path) -> None:
    """Each expression, variables substituted, as a recording rule: `promtool check rules`
    parses each with Prometheus's PromQL parser and names the rule of any that fails."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian's prometheus package; .ci/run installs it)")
    rules = []
    for path in DASHBOARDS:
        dashboard = load(path)
        values = {
            variable["name"]: "(greenhouse-01|greenhouse-02)" for variable in variables(dashboard)
        }
        for number, (_title, expr) in enumerate(prometheus_queries(dashboard)):
            rules.append(
                {
                    "record": f"dashboard:{path.stem}:{number}",
                    "expr": substitute(expr, values, "1m"),
                }
            )
        for variable in variables(dashboard):
            metric, _label = label_values(variable)
            rules.append({"record": f"dashboard:{path.stem}:{variable['name']}", "expr": metric})
    assert len(rules) > 40
    file = tmp_path / "dashboards.rules.yml"
    file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(file)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_promtool_refuses_what_is_not_promql(tmp_path: Path) -> None:
    """The check above can fail: a broken expression is refused by the same command."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian's prometheus package; .ci/run installs it)")
    file = tmp_path / "bad.rules.yml"
    bad = {"record": "dashboard:bad", "expr": "sum by (le (rate(edgetwin_handovers_total[1m]))"}
    file.write_text(yaml.safe_dump({"groups": [{"name": "bad", "rules": [bad]}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(file)], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0


def test_trace_queries_name_the_spans_and_services_the_product_emits() -> None:
    """TraceQL is not PromQL and no Tempo runs here: the span names the trace dashboard asks
    for must be those the gateway and agent code start, and the service names those of the
    stack's configs."""
    traces = load(GRAFANA / "dashboards" / "traces.json")
    queries = " ".join(
        target["query"]
        for panel in panels(traces)
        for target in panel.get("targets", [])
        if target["datasource"]["type"] == "tempo"
    )
    spans = set(re.findall(r'(?<![.\w])name = "([^"]+)"', queries))
    services = set(re.findall(r'resource\.service\.name = "([^"]+)"', queries))
    assert spans == {"config.push", "config.apply"}
    assert '"config.push"' in (ROOT / "gateway" / "service.py").read_text()
    assert '"config.apply"' in (ROOT / "agent" / "runtime.py").read_text()
    configured = {
        re.search(r'service_name = "([^"]+)"', path.read_text())[1]  # type: ignore[index]
        for path in (ROOT / "deploy" / "edgetwin").glob("*.toml")
    }
    assert services == configured == {"edgetwin-gateway", "edgetwin-agent"}
