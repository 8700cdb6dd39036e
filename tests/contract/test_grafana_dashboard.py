"""`deploy/grafana/ttp-rulebus.json` queries only metrics the services really export.

Every PromQL expression of the dashboard (panel targets and template variable queries) is
tokenized, and the metric names it selects are picked out the way PromQL reads them: an
identifier followed by ``(`` is a function or aggregation, identifiers inside ``{...}`` are
label names, the lists after ``by``/``without``/``on``/``ignoring``/``group_left``/
``group_right`` are label names, strings and ``[5m]`` ranges name nothing. Each metric name
must be a sample name of a metric the services register in prometheus_client's registry
(which ``/metrics`` serves): ``_total`` of a counter, ``_bucket``/``_sum``/``_count`` of a
histogram, or one of the library's own process metrics. Label matchers must name the
metric's labels (or a label Prometheus attaches to every target), and a matched label value
must be one docs/operations.md lists for it. So a renamed metric, label or value fails here.

The dashboard also imports anywhere: its one datasource is the ``${DS_PROMETHEUS}`` input.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY, Counter, Gauge, Histogram

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "ttp-rulebus.json"
OPERATIONS = REPO / "docs" / "operations.md"
SERVICES = REPO / "services"

# Labels Prometheus (or the Prometheus Operator) attaches to every scraped series.
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "container", "endpoint"}
# Words of the language that look like identifiers but select nothing.
KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "atan2",
    "inf",
    "nan",
}
# Aggregation operators may be followed by `by (...)` before their arguments.
AGGREGATIONS = {
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
}
LABEL_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "unknown": ("",),
}

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<variable>\$\{[^}]*\}|\$\w+|\[\[\w+\]\])
  | (?P<duration>(?:\d+(?:ms|[smhdwy]))+(?![\w.]))
  | (?P<number>0x[0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<identifier>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<operator>=~|!~|!=|==|>=|<=|[-+*/%^=<>@:,])
  | (?P<open>[({\[])
  | (?P<close>[)}\]])
    """,
    re.VERBOSE,
)
_CLOSING = {"(": ")", "{": "}", "[": "]"}


@dataclass(frozen=True)
class Token:
    kind: str
    text: str


@dataclass
class Selector:
    """One vector selector: its metric name and its label matchers ``(name, op, value)``."""

    metric: str
    matchers: list[tuple[str, str, str]] = field(default_factory=list)


def tokenize(expression: str) -> list[Token]:
    tokens = []
    position = 0
    while position < len(expression):
        match = _TOKEN.match(expression, position)
        if match is None:
            raise ValueError(f"cannot read {expression[position:]!r} in {expression!r}")
        position = match.end()
        kind = match.lastgroup
        assert kind is not None
        if kind not in {"space", "comment"}:
            tokens.append(Token(kind, match.group()))
    return tokens


def _unquote(text: str) -> str:
    """The value of a PromQL string literal (Go escapes, which JSON's cover here)."""
    if text.startswith("`"):
        return text[1:-1]
    if text.startswith("'"):
        text = '"' + text[1:-1].replace("\\'", "'").replace('"', '\\"') + '"'
    return str(json.loads(text))


def _matchers(tokens: list[Token], start: int) -> tuple[list[tuple[str, str, str]], int]:
    """The matchers of the ``{...}`` opening at ``start``; the index after its ``}``."""
    matchers = []
    index = start + 1
    while tokens[index].text != "}":
        name, operator, value = tokens[index : index + 3]
        if name.kind not in {"identifier", "string"} or operator.text not in {
            "=",
            "!=",
            "=~",
            "!~",
        }:
            raise ValueError(f"not a label matcher: {name.text} {operator.text}")
        if value.kind != "string":
            raise ValueError(f"a label value must be a string, not {value.text}")
        label = name.text if name.kind == "identifier" else _unquote(name.text)
        matchers.append((label, operator.text, _unquote(value.text)))
        index += 3
        if tokens[index].text == ",":
            index += 1
    return matchers, index + 1


def _skip_group(tokens: list[Token], start: int) -> int:
    """The index after the bracket group opening at ``start``."""
    depth = 0
    for index in range(start, len(tokens)):
        if tokens[index].kind == "open":
            depth += 1
        elif tokens[index].kind == "close":
            depth -= 1
            if depth == 0:
                return index + 1
    raise ValueError("unbalanced brackets")


def selectors(expression: str) -> list[Selector]:
    """Every vector selector of a PromQL expression, in order."""
    tokens = tokenize(expression)
    depth = 0
    for token in tokens:
        if token.kind == "open":
            depth += 1
        elif token.kind == "close":
            depth -= 1
        if depth < 0:
            raise ValueError(f"unbalanced brackets in {expression!r}")
    if depth:
        raise ValueError(f"unbalanced brackets in {expression!r}")
    found: list[Selector] = []
    index = 0
    while index < len(tokens):
        token = tokens[index]
        following = tokens[index + 1] if index + 1 < len(tokens) else None
        if token.kind == "identifier" and token.text in LABEL_LIST_KEYWORDS:
            # `by (le, reason)`: label names, not metrics.
            index += 1
            if following is not None and following.text == "(":
                index = _skip_group(tokens, index)
            continue
        if token.kind == "identifier" and token.text.lower() in KEYWORDS | AGGREGATIONS:
            index += 1
            continue
        if token.kind == "identifier" and following is not None and following.text == "(":
            index += 1  # a function or an aggregation: its arguments are read next
            continue
        if token.text == "[":
            index = _skip_group(tokens, index)  # a range or a subquery's resolution
            continue
        if token.kind == "identifier":
            selector = Selector(token.text)
            index += 1
            if following is not None and following.text == "{":
                selector.matchers, index = _matchers(tokens, index)
            found.append(selector)
            continue
        if token.text == "{":
            # `{__name__="x"}`: the name is a matcher.
            matchers, index = _matchers(tokens, index)
            names = [value for label, op, value in matchers if label == "__name__" and op == "="]
            if len(names) != 1:
                raise ValueError(f"a selector without one exact metric name in {expression!r}")
            rest = [m for m in matchers if m[0] != "__name__"]
            found.append(Selector(names[0], rest))
            continue
        index += 1
    return found


def variable_expressions(query: str) -> list[str]:
    """The PromQL inside a Grafana Prometheus variable query."""
    match = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", query, re.S)
    if match:
        return [match.group(1)]
    if re.fullmatch(r"\s*label_values\(\s*\w+\s*\)\s*", query):
        return []
    match = re.fullmatch(r"\s*query_result\((.*)\)\s*", query, re.S)
    if match:
        return [match.group(1)]
    raise ValueError(f"unexpected variable query {query!r}")


# --------------------------------------------------------------------------------------------
# What the services export
# --------------------------------------------------------------------------------------------


def metrics_modules() -> list[str]:
    """Every service's metrics module (``services/<service>/metrics.py``)."""
    modules = sorted(f"{path.parent.name}.metrics" for path in SERVICES.glob("*/metrics.py"))
    assert {"ttp_master.metrics", "ttp_worker.metrics", "ttp_console.metrics"} <= set(modules)
    return modules


@dataclass(frozen=True)
class Exported:
    """The sample names a query may select, and each one's label names."""

    labels_by_sample: dict[str, frozenset[str]]


def exported() -> Exported:
    labelled: dict[str, frozenset[str]] = {}
    for module_name in metrics_modules():
        module = importlib.import_module(module_name)
        for value in vars(module).values():
            if isinstance(value, Counter | Gauge | Histogram):
                family = value.describe()[0].name
                labelled[family] = frozenset(getattr(value, "_labelnames", ()))
    assert any(labelled.values()), "no metric with labels found: the label scan is broken"
    # The registry /metrics serves: the modules' metrics plus the library's process metrics.
    samples: dict[str, frozenset[str]] = {}
    for family in REGISTRY.collect():
        labels = labelled.get(family.name, frozenset())
        for suffix in SAMPLE_SUFFIXES[family.type]:
            bucket = frozenset({"le"}) if suffix == "_bucket" else frozenset()
            samples[family.name + suffix] = labels | bucket
    return Exported(samples)


def documented_label_values() -> dict[tuple[str, str], set[str]]:
    """``(metric, label) -> values`` from the labels column of docs/operations.md's tables."""
    values: dict[tuple[str, str], set[str]] = {}
    for metric, labels in re.findall(
        r"^\| `(ttp_[a-z_]+)` \| [^|]+ \| [^|]+ \| ([^|]+) \|", OPERATIONS.read_text(), re.M
    ):
        for label, listed in re.findall(r"`(\w+)` \(([^)]*)\)", labels):
            names = set(re.findall(r"`([^`]+)`", listed))
            if names:
                values[(metric, label)] = names
    return values


# --------------------------------------------------------------------------------------------
# The dashboard
# --------------------------------------------------------------------------------------------


def load_dashboard() -> dict[str, Any]:
    document = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))  # collapsed rows hold their panels


def expressions(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """``(where, PromQL)`` of every panel target and variable query."""
    for panel in all_panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r} {target['refId']}", target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        for expression in variable_expressions(text):
            yield f"variable {variable['name']}", expression


def _base_name(metric: str) -> str:
    for suffix in ("_bucket", "_sum", "_count", "_total", "_created"):
        if metric.endswith(suffix):
            return metric.removesuffix(suffix)
    return metric


def test_the_extractor_reads_promql_as_prometheus_does() -> None:
    def names(expression: str) -> list[str]:
        return [s.metric for s in selectors(expression)]

    assert names(
        'histogram_quantile(0.99, sum by (le, reason) (rate(a_seconds_bucket{job=~"$j"}'
        "[$__rate_interval])))"
    ) == ["a_seconds_bucket"]
    assert names("sum without (instance) (rate(x_total[5m:30s] offset 1h))") == ["x_total"]
    assert names('scalar(max(a)) - on (instance) group_left (pod) b{c!="d"} > bool 0') == [
        "a",
        "b",
    ]
    assert names('label_replace(up, "dst", "$1", "src", "(by|sum).*")') == ["up"]
    assert names('{__name__="m", status="x"} or vector(0)') == ["m"]
    assert names("a and b unless c or d") == ["a", "b", "c", "d"]
    assert names("count(count by (job) (m)) / 1e3") == ["m"]
    (selector,) = selectors('m{status="rejected",job=~"$master_job|x"}')
    assert selector.matchers == [("status", "=", "rejected"), ("job", "=~", "$master_job|x")]
    assert variable_expressions('label_values(ttp_worker_ready{a="b"}, job)') == [
        'ttp_worker_ready{a="b"}'
    ]
    for broken in ("sum(rate(x[5m])", "m{a=}", "m{a=b}", "x ~ y"):
        with pytest.raises(ValueError):
            selectors(broken)


def test_every_queried_metric_is_exported_with_the_labels_and_values_it_matches() -> None:
    known = exported()
    documented = documented_label_values()
    checked = set()
    problems = []
    for where, expression in expressions(load_dashboard()):
        found = selectors(expression)
        if not found:
            problems.append(f"{where}: selects no metric: {expression}")
        for selector in found:
            labels = known.labels_by_sample.get(selector.metric)
            if labels is None:
                problems.append(f"{where}: {selector.metric} is not exported")
                continue
            checked.add(selector.metric)
            for label, operator, value in selector.matchers:
                if label not in labels | TARGET_LABELS:
                    problems.append(f"{where}: {selector.metric} has no label {label}")
                allowed = documented.get((_base_name(selector.metric), label))
                if allowed is not None and operator == "=" and value not in allowed:
                    problems.append(
                        f"{where}: {selector.metric}{{{label}={value!r}}}: not one of"
                        f" {sorted(allowed)} (docs/operations.md)"
                    )
    assert not problems, "\n".join(problems)
    assert len(checked) >= 20, f"only {len(checked)} metrics queried: {sorted(checked)}"


def test_the_dashboard_covers_what_an_operator_watches() -> None:
    queried = {
        _base_name(selector.metric)
        for _, expression in expressions(load_dashboard())
        for selector in selectors(expression)
    }
    for metric in (
        "ttp_master_rules",
        "ttp_master_is_leader",
        "ttp_master_publish_lag_seconds",
        "ttp_master_revision",
        "ttp_master_stream_usage_ratio",
        "ttp_master_stream_full",
        "ttp_worker_ready",
        "ttp_worker_revision",
        "ttp_worker_events",
        "ttp_worker_tags",
        "ttp_worker_dead_letters",
        "ttp_worker_evaluate_seconds",
        "ttp_worker_unusable_patterns",
        "ttp_worker_consumer_pending",
        "ttp_console_feed_caught_up",
        "ttp_console_tags_ingested",
        "ttp_console_tags_dropped",
        "ttp_console_live_streams",
        "ttp_console_logins",
    ):
        assert metric in queried, f"no panel shows {metric}"


def test_the_dashboard_imports_anywhere() -> None:
    dashboard = load_dashboard()
    (source,) = dashboard["__inputs"]
    assert (source["name"], source["type"], source["pluginId"]) == (
        "DS_PROMETHEUS",
        "datasource",
        "prometheus",
    )
    # No id of one Grafana instance; a fixed uid so links and re-imports find it.
    assert dashboard["id"] is None and dashboard["uid"] == "ttp-rulebus"
    expected = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    panels = [p for p in all_panels(dashboard["panels"]) if p["type"] != "row"]
    assert panels
    ids = [p["id"] for p in all_panels(dashboard["panels"])]
    assert len(ids) == len(set(ids)), "two panels share an id"
    for panel in panels:
        assert panel["datasource"] == expected, panel["title"]
        assert panel.get("description"), f"{panel['title']}: say what it shows"
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == expected, panel["title"]
    for variable in dashboard["templating"]["list"]:
        assert variable["datasource"] == expected, variable["name"]
    # Nothing else names a datasource of one installation.
    text = DASHBOARD.read_text(encoding="utf-8")
    uids = set(re.findall(r'"uid": "([^"]*)"', text))
    assert uids <= {"${DS_PROMETHEUS}", "ttp-rulebus", "-- Grafana --"}, uids


def test_operations_doc_points_at_the_dashboard() -> None:
    assert "deploy/grafana/ttp-rulebus.json" in OPERATIONS.read_text(encoding="utf-8")


def test_panels_fit_the_grid_without_overlapping() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in all_panels(load_dashboard()["panels"]):
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] >= 1 and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
