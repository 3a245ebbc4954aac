"""The monitoring manifests (packaging/kubernetes/monitoring), checked offline: the PodMonitor and
PrometheusRule against the required shape of the Prometheus Operator's CRDs (a minimal schema written
here from those CRDs), the PodMonitor against the DaemonSet it scrapes, the dashboard against what
Grafana needs; every PromQL expression, the rules' and the dashboard panels', parsed by promtool
and evaluated by it over the series rewarm's exporter really serves after real events, and the
alerts fired (or not) by promtool's rule tests."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from typing import Any

import jsonschema
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from runtime.observe import metrics
from test_metrics import EVENTS, commit_entry, record   # real events, a real store entry

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KUBE = os.path.join(TOP, "packaging", "kubernetes")
MONITORING = os.path.join(KUBE, "monitoring")
# What Grafana puts in for its variables when it runs a panel's query.
GRAFANA = {"$__rate_interval": "5m", "$__range": "1h", "$__interval": "1m", "$job": ".*", "$node": ".*"}
TARGET = {"job": "rewarm-node-installer", "instance": "10.0.0.7:9808", "node": "gpu-1"}   # what a scrape adds

DURATION = "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
METADATA = {"type": "object", "required": ["name", "namespace"],
            "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}, "labels": STRINGS}}
# The parts of monitoring.coreos.com/v1's CRDs these manifests use, with their required fields and
# types; a field they do not know (a typo the API server would prune without a word) is refused.


def strict(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "additionalProperties": False, "properties": properties}


def array_of(item: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "minItems": 1, "items": item}


def resource(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return strict(["apiVersion", "kind", "metadata", "spec"], apiVersion={"const": "monitoring.coreos.com/v1"},
                  kind={"const": kind}, metadata=METADATA, spec=spec)


TEXT, DURATION_TEXT = {"type": "string"}, {"type": "string", "pattern": DURATION}
RELABELING = strict([], sourceLabels=array_of({"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"}),
                    targetLabel=TEXT, regex=TEXT, replacement=TEXT,
                    action={"enum": ["replace", "keep", "drop", "labelmap", "labeldrop", "labelkeep"]})
ENDPOINT = strict([], port=TEXT, path=TEXT, scheme={"enum": ["http", "https"]}, interval=DURATION_TEXT,
                  scrapeTimeout=DURATION_TEXT, honorLabels={"type": "boolean"}, relabelings=array_of(RELABELING))
PODMONITOR = resource("PodMonitor", strict(
    ["selector", "podMetricsEndpoints"], jobLabel=TEXT,
    namespaceSelector=strict([], any={"type": "boolean"}, matchNames=array_of(TEXT)),
    selector=strict([], matchLabels=STRINGS, matchExpressions={"type": "array"}),
    podMetricsEndpoints=array_of(ENDPOINT)))
RULE = strict(["expr"], alert=TEXT, record=TEXT, expr=TEXT, labels=STRINGS, annotations=STRINGS,
              **{"for": DURATION_TEXT})
PROMETHEUSRULE = resource("PrometheusRule", strict(
    ["groups"], groups=array_of(strict(["name", "rules"], name={"type": "string", "minLength": 1},
                                       interval=DURATION_TEXT, rules=array_of(RULE)))))

def document(name: str) -> dict[str, Any]:
    with open(os.path.join(MONITORING, name)) as f:
        (doc,) = [d for d in yaml.safe_load_all(f) if d]
    return doc


def dashboard() -> dict[str, Any]:
    with open(os.path.join(MONITORING, "dashboard.json")) as f:
        loaded: dict[str, Any] = json.load(f)
    return loaded


def alerts() -> list[dict[str, Any]]:
    return [rule for group in document("prometheusrule.yaml")["spec"]["groups"] for rule in group["rules"]]


def panel_exprs() -> list[tuple[str, str]]:
    """(panel title, its expression as Grafana sends it to Prometheus) for every target."""
    found = []
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA.items():
                expr = expr.replace(variable, value)
            found.append((panel["title"], expr))
    return found


def promtool_path() -> str:
    """promtool on PATH, else where packaging/setup.sh unpacks it (its PROMTOOL_DIR)."""
    on_path = shutil.which("promtool")
    if on_path:
        return on_path
    with open(os.path.join(TOP, "packaging", "setup.sh")) as f:
        found = re.search(r"^PROMTOOL_DIR=(\S+)$", f.read(), re.MULTILINE)
    assert found, "packaging/setup.sh names no PROMTOOL_DIR"
    return os.path.join(found.group(1), "promtool")


def promtool(*args: str, cwd: str) -> subprocess.CompletedProcess[str]:
    path = promtool_path()
    assert os.access(path, os.X_OK), f"no promtool at {path}: run packaging/setup.sh"
    return subprocess.run([path, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_the_podmonitor_has_the_crds_shape_and_scrapes_the_daemonsets_metrics_port():
    monitor = document("podmonitor.yaml")
    jsonschema.validate(monitor, PODMONITOR)
    with open(os.path.join(KUBE, "daemonset.yaml")) as f:
        (daemonset,) = [d for d in yaml.safe_load_all(f) if d]
    pod = daemonset["spec"]["template"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [daemonset["metadata"]["namespace"]]
    ports = {p["name"]: p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in ports and endpoint["path"] == "/metrics"
    assert monitor["spec"]["jobLabel"] in pod["metadata"]["labels"]
    assert endpoint["honorLabels"] is True   # rewarm's `namespace` label stays the snapshot's


def test_the_prometheusrule_has_the_crds_shape_and_every_alert_says_how_bad_what_and_why():
    rule = document("prometheusrule.yaml")
    jsonschema.validate(rule, PROMETHEUSRULE)
    names = {a["alert"] for a in alerts()}
    assert names == {"RewarmRestoreFailureRatioHigh", "RewarmColdStartRatioHigh", "RewarmStoreNearlyFull",
                     "RewarmStoreFull"}
    for a in alerts():
        assert re.fullmatch(DURATION, a["for"]) and a["for"] != "0", a["alert"]
        assert a["labels"]["severity"] in ("critical", "warning", "info"), a["alert"]
        assert {"summary", "description"} <= set(a["annotations"]), a["alert"]


def test_the_monitoring_is_a_kustomization_of_its_own_that_the_base_does_not_include():
    """Clusters without the Prometheus Operator's CRDs install the base alone."""
    kustomization = document("kustomization.yaml")
    for name in kustomization["resources"]:
        assert document(name)["metadata"]["namespace"] == kustomization["namespace"]
    (generated,) = kustomization["configMapGenerator"]
    assert generated["files"] == ["rewarm.json=dashboard.json"] and generated["options"]["labels"] == {
        "grafana_dashboard": "1"}
    with open(os.path.join(KUBE, "kustomization.yaml")) as f:
        base = yaml.safe_load(f)
    assert not [r for r in base["resources"] if "monitoring" in r] and "components" not in base
    for name in base["resources"]:
        with open(os.path.join(KUBE, name)) as f:
            assert not [d for d in yaml.safe_load_all(f) if d and "coreos.com" in d["apiVersion"]], name


def test_the_dashboard_has_what_grafana_needs():
    d = dashboard()
    assert d["uid"] and d["title"] and isinstance(d["schemaVersion"], int)
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for panel in d["panels"]:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]) and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)) and all(t["expr"].strip() for t in panel["targets"]), panel["title"]
    text = json.dumps(d["panels"]) + json.dumps(d["templating"])
    used = set(re.findall(r"\$\{?([a-z_]+)", text)) - {"__rate_interval", "__range", "__interval", "__all"}
    assert used <= set(variables), used - set(variables)
    for _, expr in panel_exprs():
        assert "$" not in expr, expr   # every variable has its stand-in above


def test_promtool_parses_every_rule_and_every_dashboard_expression(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(document("prometheusrule.yaml")["spec"]))
    checked = promtool("check", "rules", str(rules), cwd=str(tmp_path))
    assert checked.returncode == 0 and "SUCCESS: 4 rules found" in checked.stdout, checked.stdout + checked.stderr
    panels = tmp_path / "dashboard-rules.yaml"
    recorded = [{"record": f"rewarm:dashboard:panel_{i}", "expr": expr} for i, (_, expr) in enumerate(panel_exprs())]
    panels.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recorded}]}))
    checked = promtool("check", "rules", str(panels), cwd=str(tmp_path))
    assert checked.returncode == 0 and f"SUCCESS: {len(recorded)} rules found" in checked.stdout, (
        checked.stdout + checked.stderr)


def served_samples(tmp_path) -> dict[tuple[str, tuple[tuple[str, str], ...]], tuple[str, float]]:
    """Every sample rewarm's exporter serves after the real events of test_metrics (and a store with
    an entry): (name, labels) -> (its family's type, value)."""
    log = str(tmp_path / "events.jsonl")
    for kind, fields in EVENTS:
        record(log, kind, fields)
    root = str(tmp_path / "store")
    commit_entry(root, "w", {"checkpoint/inventory.img": 100})
    path = str(tmp_path / "rewarm.prom")
    metrics.write(path, metrics.served(log, root))
    with open(path) as f:
        return {(s.name, tuple(sorted(s.labels.items()))): (family.type, s.value)
                for family in text_string_to_metric_families(f.read()) for s in family.samples}


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: what is left once strings, label matchers, ranges,
    grouping clauses, functions and keywords are taken out."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"(?<![A-Za-z0-9_:])[0-9][A-Za-z0-9_.]*", " ", expr)   # numbers, durations (offset 5m)
    names = {m.group(1) for m in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", expr) if not m.group(2)}
    return names - {"and", "or", "unless", "bool", "offset", "by", "without", "inf", "nan"}


def test_every_expression_selects_only_metrics_rewarm_serves_and_groups_by_labels_they_have(tmp_path):
    samples = served_samples(tmp_path)
    served = {name for name, _ in samples}
    exprs = [a["expr"] for a in alerts()] + [e for _, e in panel_exprs()]
    used = set().union(*map(metric_names, exprs))
    assert used and used <= served, sorted(used - served)
    labels = {label for _, pairs in samples for label, _ in pairs} | set(TARGET)
    grouped = {label.strip() for expr in exprs for clause in re.findall(r"\bby\s*\(([^)]*)\)", expr)
               for label in clause.split(",")}
    assert grouped <= labels, sorted(grouped - labels)
    assert {"rewarm_restore_seconds_bucket", "rewarm_cold_starts_total", "rewarm_restore_failures_total",
            "rewarm_pull_bytes_total", "rewarm_store_free_bytes"} <= used


def series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    inside = ",".join(f"{k}={json.dumps(v)}" for k, v in sorted(labels.items()))
    return {"series": f"{name}{{{inside}}}", "values": values}


def run_promtool_tests(tmp_path, tests: list[dict[str, Any]]) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(document("prometheusrule.yaml")["spec"]))
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m",
                                                         "tests": tests}))
    ran = promtool("test", "rules", "tests.yaml", cwd=str(tmp_path))
    assert ran.returncode == 0, ran.stdout[-6000:] + ran.stderr[-3000:]


def test_every_dashboard_panel_shows_data_from_what_rewarm_serves(tmp_path):
    """promtool evaluates each panel's expression over an hour of the series the exporter served
    (every counter growing by its served value each minute): each returns something. A misspelt
    metric or label, or a histogram without its _bucket, would come back empty."""
    inputs = [series(name, {**dict(labels), **TARGET},
                     f"{value:g}x60" if kind == "gauge" else f"0+{value:g}x60")
              for (name, labels), (kind, value) in served_samples(tmp_path).items()]
    exprs = [{"expr": f"count(({expr})) > bool 0", "eval_time": "50m", "exp_samples": [{"labels": "{}", "value": 1}]}
             for _, expr in panel_exprs()]
    run_promtool_tests(tmp_path, [{"interval": "1m", "input_series": inputs, "promql_expr_test": exprs}])


def alert_case(inputs: list[dict[str, str]], alert: str, at: str, fired: list[dict[str, Any]]) -> dict[str, Any]:
    return {"interval": "1m", "input_series": inputs,
            "alert_rule_test": [{"eval_time": at, "alertname": alert, "exp_alerts": fired}]}


def test_the_alerts_fire_on_failing_restores_cold_starts_and_a_full_store_and_not_otherwise(tmp_path):
    snap = {**TARGET, "namespace": "team-a", "snapshot": "llama"}
    node = {k: TARGET[k] for k in ("job", "instance", "node")}
    restores = series("rewarm_restores_total", snap, "0+1x120")
    failures = series("rewarm_restore_failures_total", {**snap, "code": "restore_failed"}, "0+3x120")
    cold = series("rewarm_cold_starts_total", {**snap, "code": "no_snapshot"}, "0+3x120")

    def store(free: int) -> list[dict[str, str]]:
        return [series("rewarm_store_free_bytes", TARGET, f"{free}x60"), series("rewarm_store_size_bytes", TARGET, "100x60")]

    def failing(share: str) -> dict[str, Any]:
        return {"exp_labels": {**node, "severity": "warning"}, "exp_annotations": {
            "summary": "rewarm restores fail on node gpu-1",
            "description": f"{share} of the restores tried on node gpu-1 (10.0.0.7:9808) in the last 15 minutes failed "
                           "and started cold. rewarm_restore_failures_total's code label says why; on the node, "
                           "`rewarm events` has each reason."}}

    def full(severity: str, share: str, summary: str, description: str) -> dict[str, Any]:
        return {"exp_labels": {**node, "severity": severity}, "exp_annotations": {
            "summary": f"rewarm's snapshot store on node gpu-1 is {summary}",
            "description": f"The filesystem of rewarm's store on node gpu-1 (10.0.0.7:9808) has {share} free: "
                           f"{description} Run `rewarm gc --max-bytes N` or `rewarm rm` there, or give the store "
                           "more room."}}
    nearly = "captures and pulls that do not fit are refused."
    cold_started = {"exp_labels": {"job": TARGET["job"], "namespace": "team-a", "snapshot": "llama", "severity": "warning"},
                    "exp_annotations": {
                        "summary": "Pods of snapshot team-a/llama mostly start cold",
                        "description": "75% of the annotated containers of snapshot team-a/llama started cold in the "
                                       "last 30 minutes. rewarm_cold_starts_total's code label says why (no_snapshot: "
                                       "nothing captured or pulled yet; not_fitting: the pods run another image, "
                                       "command or environment than the capture)."}}
    run_promtool_tests(tmp_path, [
        alert_case([restores, failures], "RewarmRestoreFailureRatioHigh", "10m", []),   # pending: not for 15m yet
        alert_case([restores, failures], "RewarmRestoreFailureRatioHigh", "40m", [failing("75%")]),
        alert_case([failures], "RewarmRestoreFailureRatioHigh", "40m", [failing("100%")]),   # never a restore
        alert_case([restores], "RewarmRestoreFailureRatioHigh", "40m", []),
        alert_case([restores, cold], "RewarmColdStartRatioHigh", "70m", [cold_started]),
        alert_case([restores], "RewarmColdStartRatioHigh", "70m", []),
        alert_case(store(5), "RewarmStoreNearlyFull", "30m", [full("warning", "5%", "nearly full", nearly)]),
        alert_case(store(5), "RewarmStoreFull", "30m", []),
        alert_case(store(2), "RewarmStoreFull", "30m", [full(
            "critical", "2%", "full", "new snapshots cannot be captured or pulled there.")]),
        alert_case(store(50), "RewarmStoreNearlyFull", "30m", []),
    ])


@pytest.mark.parametrize("expr, names", [
    ('sum by (le, stage) (rate(a_bucket{job=~".*", x="by (b)"}[5m])) / on (x) group_left (y) b_total or vector(0)',
     {"a_bucket", "b_total"}),
    ("histogram_quantile(0.9, c) > bool 1 unless d offset 5m", {"c", "d"}),
])
def test_the_metric_name_reader_takes_names_and_nothing_else(expr, names):
    assert metric_names(expr) == names
