"""contrib/grafana/resolverd.json: every metric it queries is one the exporter writes.

The exporter's output is rendered the way the daemon renders it (Daemon.collect_metrics): the
status tree around an unstarted DnsServer's part and a started Breakout's own status (fake
kernel, every section there), collected and rendered. A metric renamed or dropped there, or
misspelt in the dashboard, fails here.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any, cast

import pytest

from policy.matcher import Matcher
from resolver.config import parse_config
from resolver.dns.server import DnsServer
from resolver.hooks import NullHook
from resolver.metrics import render
from resolver.metricset import collect
from resolver.statusmodel import BreakoutStatus
from tests.unit.breakout_fakes import (
    Clock,
    answer,
    make_breakout,
    tagged,
)
from tests.unit.test_metrics import status_tree

pytestmark = pytest.mark.unit

DASHBOARD = Path(__file__).resolve().parents[2] / "contrib" / "grafana" / "resolverd.json"

# PromQL's functions and aggregations (Prometheus 3), and the words of its grammar.
FUNCTIONS = frozenset((
    "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh",
    "avg_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh",
    "count_over_time", "day_of_month", "day_of_week", "day_of_year", "days_in_month", "deg",
    "delta", "deriv", "double_exponential_smoothing", "end", "exp", "floor", "histogram_avg",
    "histogram_count", "histogram_fraction", "histogram_quantile", "histogram_stddev",
    "histogram_stdvar", "histogram_sum", "holt_winters", "hour", "idelta", "increase", "info",
    "irate", "label_join", "label_replace", "last_over_time", "ln", "log10", "log2",
    "mad_over_time", "max_over_time", "min_over_time", "minute", "month", "pi", "predict_linear",
    "present_over_time", "quantile_over_time", "rad", "rate", "resets", "round", "scalar", "sgn",
    "sin", "sinh", "sort", "sort_by_label", "sort_by_label_desc", "sort_desc", "sqrt", "start",
    "stddev_over_time", "stdvar_over_time", "sum_over_time", "tan", "tanh", "time", "timestamp",
    "vector", "year", "avg", "bottomk", "count", "count_values", "group", "limit_ratio", "limitk",
    "max", "min", "quantile", "stddev", "stdvar", "sum", "topk",
))  # fmt: skip
KEYWORDS = frozenset((
    "and", "or", "unless", "bool", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "atan2", "inf", "nan",
))  # fmt: skip
METRIC = re.compile(r"resolverd_[a-z0-9_]+\Z")

_STRING = re.compile(r""""(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`""")
_VARIABLE = re.compile(r"\$(?:\{[^}]*\}|\w+)")  # Grafana's: $instance, ${datasource}
_MATCHERS = re.compile(r"\{[^{}]*\}")  # label names and values, not metrics
_RANGE = re.compile(r"\[[^\[\]]*\]")  # [5m], [1h:1m]
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
# An identifier not glued to a number (1h, 1e3) or a variable; `:` is legal in metric names.
_IDENTIFIER = re.compile(r"(?<![\w.$:])[A-Za-z_:][\w:]*")
_LABEL_VALUES = re.compile(r"\s*label_values\((.*),\s*[A-Za-z_]\w*\s*\)\s*\Z", re.S)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads. Raises ValueError for any identifier that is
    neither a function nor a keyword nor a resolverd_ metric: another exporter's metric, a
    typo'd function, a label name outside a matcher or a `by (...)`."""
    if "__name__" in expr:
        raise ValueError(f"a metric named through __name__ is not checked: {expr}")
    text = _STRING.sub(" ", expr)
    text = _VARIABLE.sub(" ", text)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _LABEL_LIST.sub(" ", text)
    names = set()
    for m in _IDENTIFIER.finditer(text):
        word = m.group()
        called = text[m.end() :].lstrip().startswith("(")
        if METRIC.match(word) and not called:
            names.add(word)
        elif not (word in KEYWORDS or (called and word in FUNCTIONS)):
            raise ValueError(f"{word!r} is no PromQL function or keyword nor a resolverd metric")
    return names


def template_names(query: str) -> set[str]:
    """The metrics of a Grafana variable query: label_values(EXPR, LABEL), or plain PromQL."""
    m = _LABEL_VALUES.match(query)
    return metric_names(m.group(1) if m else query)


def load() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return dashboard


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside (collapsed) rows included."""
    out: list[dict[str, Any]] = []
    for p in dashboard["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def queried(dashboard: dict[str, Any]) -> dict[str, set[str]]:
    """Each metric the dashboard reads, with where: panel titles and variable names."""
    where: dict[str, set[str]] = {}
    for p in panels(dashboard):
        for t in p.get("targets", []):
            for name in metric_names(t["expr"]):
                where.setdefault(name, set()).add(p["title"])
    for v in dashboard["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]
            for name in template_names(q["query"] if isinstance(q, dict) else q):
                where.setdefault(name, set()).add("$" + v["name"])
    return where


def exporter_output(tmp_path: Path) -> str:
    """What GET /metrics serves with breakout on, as Daemon.collect_metrics renders it."""
    config = parse_config(
        {
            "upstreams": ["198.51.100.53"],
            "forward_zones": {"corp.example": ["192.0.2.53:5353"]},
            "breakout": {"interface": "wan0", "resolvers": ["203.0.113.53"]},
        }
    )
    dns = DnsServer(config, Matcher([]), NullHook())  # not started: no sockets
    dns.handler.forwarder.default.upstreams[0].answered(0.0125)
    dns.tagged_by_row[1] = 3

    async def breakout() -> tuple[dict[str, Any], tuple[int, float]]:
        clock = Clock()
        b = make_breakout(tmp_path, clock=clock)
        await b.start()
        try:
            await answer(b, tagged("outlook.office.com", "203.0.113.10", "2001:db8:365::10"), 60)
            return b.status(), b.latency()
        finally:
            await b.stop()

    part, latency = asyncio.run(breakout())
    status = status_tree(dns, cast(BreakoutStatus, part))
    return render(collect(status, dns.tagged_by_row, latency))


def exported(text: str) -> set[str]:
    """The metric names of an exposition: its TYPE lines and its samples."""
    names = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    samples = {re.split(r"[{ ]", line, maxsplit=1)[0] for line in text.splitlines()}
    return names | {s for s in samples if s and not s.startswith("#")}


def test_every_metric_the_dashboard_queries_is_exported(tmp_path: Path) -> None:
    where = queried(load())
    assert len(where) >= 10, sorted(where)
    names = exported(exporter_output(tmp_path))
    missing = {name: sorted(w) for name, w in where.items() if name not in names}
    assert not missing, f"queried by the dashboard, not exported: {missing}"


def test_the_dashboard_is_one_grafana_imports() -> None:
    d = load()
    assert d["id"] is None and d["uid"] and d["title"] and 36 <= d["schemaVersion"] <= 41
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    branch = variables["instance"]
    assert branch["type"] == "query" and branch["multi"] is True
    assert branch["datasource"]["uid"] == "${datasource}"
    assert branch["query"]["query"].startswith("label_values(resolverd_")
    assert branch["query"]["query"].endswith(", instance)")
    ids = [p["id"] for p in panels(d)]
    assert len(ids) == len(set(ids)), ids
    queries = 0
    for p in panels(d):
        x, w = p["gridPos"]["x"], p["gridPos"]["w"]
        assert x >= 0 and w > 0 and x + w <= 24 and p["gridPos"]["h"] > 0, p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            queries += 1
            assert t["expr"].strip() and t["refId"], p["title"]
            assert t.get("datasource", p["datasource"]) == p["datasource"], p["title"]
            assert '{instance=~"$instance"}' in t["expr"], p["title"]  # every selector filtered
            assert "rate(" not in t["expr"] or "[$__rate_interval]" in t["expr"], p["title"]
    assert queries >= 10


def test_no_two_panels_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for p in panels(load()):
        g = p["gridPos"]
        for y in range(g["y"], g["y"] + g["h"]):
            for x in range(g["x"], g["x"] + g["w"]):
                assert (x, y) not in cells, (p["title"], cells[(x, y)])
                cells[(x, y)] = p["title"]


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'sum by (row, category) (rate(resolverd_x_total{instance=~"$i", a="b{c}"}[5m]))',
            {"resolverd_x_total"},
        ),
        ("resolverd_a / on (instance) group_left (link) resolverd_b offset 1h > bool 1e3", None),
        ("count(sum(resolverd_a) without (x) == 0) or vector(0)", {"resolverd_a"}),
        ("max_over_time(resolverd_a[$__range:1m]) unless resolverd_b", None),
    ],
)
def test_metric_names_reads_promql(expr: str, names: set[str] | None) -> None:
    assert metric_names(expr) == (names or {"resolverd_a", "resolverd_b"})


@pytest.mark.parametrize(
    "expr",
    [
        "rate(node_network_transmit_bytes_total[5m])",  # not ours
        "sum by (instance) (rates(resolverd_a[5m]))",  # no such function
        "sum(resolverd_a) by instance",  # a label name outside its parentheses
        '{__name__="resolverd_a"}',
    ],
)
def test_metric_names_refuses_what_it_cannot_check(expr: str) -> None:
    with pytest.raises(ValueError):
        metric_names(expr)


def test_template_queries() -> None:
    assert template_names("label_values(resolverd_queries_total, instance)") == {
        "resolverd_queries_total"
    }
    assert template_names('label_values(resolverd_a{role="x"}, row)') == {"resolverd_a"}
