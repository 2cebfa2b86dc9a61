"""The Grafana dashboard (`deploy/grafana/saga.json`) and the Prometheus alerting rules
(`deploy/prometheus/alerts.yaml`): each is a well-formed file of its kind, covers what an
operator watches, and names only metrics that a running server's `/metrics` really exposes.

The server is the real one in this process: an executing engine with a scripted participant
process, the Flask app on a loopback socket and the gRPC API; a few sagas run (one retried,
one compensated, one paused) so that the labelled series exist, then `/metrics` is scraped
over HTTP.
PromQL has no parser here, so metric names are read from each expression by its grammar:
strings, label matchers, range selectors and `by (...)`-style label lists taken out, what
stays is function names (followed by `(`), keywords, numbers and metric names.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.serving import make_server

from saga_grpc.gen.k1s0.system.saga.v1 import saga_pb2, saga_pb2_grpc
from saga_grpc.server import build_api
from saga_http.app import create_app
from tests.harness import ParticipantProcess, step, wait_until, workflow_file, write_config
from tests.services import REPO_ROOT
from workers.config import load_config
from workers.service.engine import Engine

DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "saga.json"
ALERTS = REPO_ROOT / "deploy" / "prometheus" / "alerts.yaml"

# ---------------------------------------------------------------- metric names in PromQL

_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_NAME = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
_KEYWORDS |= {"and", "or", "unless", "atan2", "inf", "nan"}
_LABEL_VALUES = re.compile(r"label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*,\s*\w+\s*\)")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana `label_values(metric, label)`
    variable query) reads."""
    found = set(_LABEL_VALUES.findall(expr))
    text = _LABEL_VALUES.sub(" ", expr)
    text = _STRING.sub('""', text)
    while _MATCHERS.search(text):
        text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _LABEL_LIST.sub(" ", text)
    for match in _NAME.finditer(text):
        before = text[match.start() - 1] if match.start() else " "
        after = text[match.end() :].lstrip()
        if before.isdigit() or before == "." or after.startswith("("):
            continue  # part of a number (1e3), or a function
        if match.group().lower() not in _KEYWORDS:
            found.add(match.group())
    return found


def test_metric_names_are_read_from_promql_as_written() -> None:
    """The reader finds the metrics of real PromQL shapes and nothing else: not functions,
    label names, label values, ranges, keywords or numbers."""
    assert metric_names(
        'histogram_quantile(0.99, sum by (le, step) (rate(x_seconds_bucket{job=~"$job", '
        'action="EXECUTE"}[$__rate_interval])))'
    ) == {"x_seconds_bucket"}
    assert metric_names(
        'sum by (job) (rate(a_total{code=~"A|B"}[5m])) / on (job) group_left b > 1e3 '
        "and min_over_time(c[1h:5m] offset 5m) unless d"
    ) == {"a_total", "b", "c", "d"}
    assert metric_names("label_values(saga_recovered_total, job)") == {"saga_recovered_total"}


# ---------------------------------------------------------------- the files


def dashboard() -> dict[str, Any]:
    loaded = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those nested in collapsed rows too."""
    out = []
    for panel in board["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def dashboard_exprs() -> list[str]:
    board = dashboard()
    exprs = [t["expr"] for p in panels(board) for t in p.get("targets", [])]
    for variable in board["templating"]["list"]:
        query = variable.get("query")
        if variable["type"] == "query":
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def alert_rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict) and set(loaded) == {"groups"}, "a rule file holds groups"
    rules = []
    for group in loaded["groups"]:
        assert isinstance(group["name"], str) and group["name"]
        assert isinstance(group["rules"], list) and group["rules"]
        rules.extend(group["rules"])
    return rules


def _balanced(expr: str) -> bool:
    depth: list[str] = []
    pairs = {")": "(", "]": "[", "}": "{"}
    for ch in _STRING.sub('""', expr):
        if ch in "([{":
            depth.append(ch)
        elif ch in pairs and (not depth or depth.pop() != pairs[ch]):
            return False
    return not depth


def test_the_dashboard_is_a_grafana_dashboard_with_its_data_source_as_a_variable() -> None:
    """saga.json is a Grafana dashboard: a title and uid, a `datasource` variable of type
    Prometheus that every panel and query uses (no data source of one installation baked
    in), unique panel ids, panels on the 24-column grid, and queries with unique refIds."""
    board = dashboard()
    assert board["title"] and re.fullmatch(r"[a-z0-9-]{1,40}", board["uid"])
    assert isinstance(board["schemaVersion"], int)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    source = {"type": "prometheus", "uid": "${datasource}"}
    every = panels(board)
    assert len({p["id"] for p in every}) == len(every)
    for panel in every:
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) for k in ("h", "w", "x", "y")), panel["title"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel["datasource"] == source, panel["title"]
        targets = panel["targets"]
        assert targets and len({t["refId"] for t in targets}) == len(targets), panel["title"]
        for target in targets:
            assert target["datasource"] == source and _balanced(target["expr"]), target
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["datasource"] == source


def test_the_dashboard_shows_what_an_operator_watches() -> None:
    """Throughput, step latency, retries, compensations, the outbox backlog and its oldest
    event, and lease take-overs each have a panel."""
    used = set().union(*(metric_names(e) for e in dashboard_exprs()))
    text = " ".join(dashboard_exprs())
    assert {
        "saga_started_total",
        "saga_ended_total",
        "saga_step_duration_seconds_bucket",
        "saga_step_retries_total",
        "saga_outbox_backlog",
        "saga_outbox_oldest_unpublished_seconds",
        "saga_lease_takeovers_total",
    } <= used
    assert 'action="COMPENSATE"' in text


def test_the_alerts_are_prometheus_rules_for_what_must_wake_someone() -> None:
    """alerts.yaml is a Prometheus rule file (groups of rules, each an alert with an
    expression, a `for` duration, a severity, a summary and a description) with alerts for a
    stuck outbox, a failed compensation, an executor loop down and the error rate."""
    rules = alert_rules()
    names = [r["alert"] for r in rules]
    assert len(set(names)) == len(names)
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}
        assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", rule["alert"])
        assert isinstance(rule["expr"], str) and _balanced(rule["expr"]), rule["alert"]
        assert re.fullmatch(r"\d+[smhdwy]", str(rule.get("for", "0s"))), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        for key in ("summary", "description"):
            text = rule["annotations"][key]
            assert text.strip() and text.count("{{") == text.count("}}"), (rule["alert"], key)
    exprs = {r["alert"]: r["expr"] for r in rules}
    uses = {alert: metric_names(expr) for alert, expr in exprs.items()}
    assert any("saga_outbox_oldest_unpublished_seconds" in u for u in uses.values())
    assert any(
        "saga_step_duration_seconds_count" in uses[a] and "COMPENSATE" in exprs[a] for a in uses
    )
    assert any("saga_executor_healthy" in u for u in uses.values())
    assert any("saga_http_requests_total" in u for u in uses.values())


# ---------------------------------------------------------------- against a live /metrics

STEPS = [
    step(
        "reserve",
        "inventory-service",
        "Stock.Reserve",
        "Stock.Release",
        retry={"max_attempts": 3, "initial_interval_ms": 20},
    ),
    step("charge", "payment-service", "Pay.Charge", "Pay.Refund", retry={"max_attempts": 1}),
]


class Server:
    """The REST app and the gRPC API over one executing engine, on loopback ports."""

    def __init__(self, engine: Engine) -> None:
        self.http = make_server("127.0.0.1", 0, create_app(engine.config, engine), threaded=True)
        self.url = f"http://127.0.0.1:{self.http.server_port}"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()
        self.grpc = build_api(engine.config, engine)
        self.grpc.server.start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc.port}")

    def close(self) -> None:
        self.channel.close()
        self.grpc.server.stop(grace=None).wait()
        self.http.shutdown()
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def exposed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[set[str]]:
    """The names of the series a live server's /metrics has after a few sagas."""
    tmp = tmp_path_factory.mktemp("dashboards")
    participant = ParticipantProcess(
        {
            "Stock.Reserve": {"fail_times": 1, "fail": "UNAVAILABLE"},
            "Pay.Charge": {
                "fail_if_payload": {"field": "card", "equals": "declined"},
                "fail": "FAILED_PRECONDITION",
            },
        },
        tmp,
    )
    workflow_file(tmp / "wf", "watched", STEPS)
    (tmp / "wf" / "held.yaml").write_text(  # a declined charge waits for an operator
        yaml.safe_dump({"name": "held", "on_failure": "pause", "steps": STEPS}, sort_keys=False)
    )
    path = write_config(
        tmp / "c.yaml",
        port=participant.port,
        workflow_dir=tmp / "wf",
        extra={
            "saga": {"retention_days": 30},
            "grpc": {"host": "127.0.0.1", "port": 0},
        },
    )
    try:
        engine = Engine.from_config(load_config(str(path), environ={}), execute=True)
    except BaseException:
        participant.stop()
        raise
    engine.start()
    server = None
    try:
        server = Server(engine)
        ids = []
        for workflow, card in (("watched", "ok"), ("watched", "declined"), ("held", "declined")):
            reply = requests.post(
                f"{server.url}/api/v1/sagas",
                json={"workflow_name": workflow, "payload": {"card": card}},
                timeout=10,
            )
            assert reply.status_code in (200, 201, 202), reply.text
            ids.append(reply.json()["saga_id"])
        stub = saga_pb2_grpc.SagaServiceStub(server.channel)
        stub.ListWorkflows(saga_pb2.ListWorkflowsRequest(), timeout=10)
        for saga_id in ids:
            wait_until(
                lambda s=saga_id: (
                    engine.get_saga(s)[0].status.value in ("COMPLETED", "FAILED", "PAUSED")
                ),
                20,
                what="sagas to end or pause",
            )
        requests.get(f"{server.url}/api/v1/sagas", timeout=10)
        text = requests.get(f"{server.url}/metrics", timeout=10).text
    finally:
        if server is not None:
            server.close()
        engine.close()
        participant.stop()
    yield {
        sample.name for family in text_string_to_metric_families(text) for sample in family.samples
    }


def test_every_metric_the_dashboard_names_is_exposed(exposed: set[str]) -> None:
    """Each metric a dashboard query (or variable) reads is a series of the live /metrics."""
    used = set().union(*(metric_names(e) for e in dashboard_exprs()))
    assert used and not used - exposed, sorted(used - exposed)


def test_every_metric_the_alerts_name_is_exposed(exposed: set[str]) -> None:
    """Each metric an alerting rule reads is a series of the live /metrics."""
    used = set().union(*(metric_names(r["expr"]) for r in alert_rules()))
    assert used and not used - exposed, sorted(used - exposed)


def test_paused_sagas_are_watched_once_the_server_counts_them(exposed: set[str]) -> None:
    """When /metrics has a `saga_paused` gauge, the dashboard shows it and an alert fires on
    sagas paused too long; until then neither names it."""
    in_dashboard = any("saga_paused" in metric_names(e) for e in dashboard_exprs())
    in_alerts = any("saga_paused" in metric_names(r["expr"]) for r in alert_rules())
    assert in_dashboard == in_alerts == ("saga_paused" in exposed), (
        "saga_paused is exposed: give it a panel in deploy/grafana/saga.json and an alert on "
        "sagas paused too long in deploy/prometheus/alerts.yaml"
        if "saga_paused" in exposed
        else "saga_paused is named but not exposed"
    )
