"""Reads the committed Grafana files the way Grafana does, for tests/unit/test_grafana_build.py
and tests/integration/test_grafana_queries.py: the dashboards, their variables, annotations
and panel queries, the alert rules, and Grafana's macro and variable substitution for InfluxQL.

Substitution follows Grafana's InfluxDB datasource: `$timeFilter` is
`time >= <from>ms and time <= <to>ms`; a multi-value or include-all variable inside a regex is
its values regex-escaped and joined as `(a|b)`, a single value escaped alone, "All" its
`allValue` verbatim; a text box is its text verbatim.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from tests.conftest import ROOT

GRAFANA = ROOT / "grafana"
DASHBOARD_DIR = GRAFANA / "dashboards"
RULES_FILE = GRAFANA / "provisioning" / "alerting" / "rules.yaml"
DATASOURCE_FILES = sorted((GRAFANA / "datasources").glob("*.yaml"))

ALL = "$__all"


def dashboards() -> dict[str, dict[str, Any]]:
    """uid -> dashboard, from every committed JSON file."""
    out = {}
    for path in sorted(DASHBOARD_DIR.glob("*.json")):
        doc = json.loads(path.read_text())
        out[doc["uid"]] = doc
    return out


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES_FILE.read_text())
    return [r for group in doc["groups"] for r in group["rules"]]


@dataclass(frozen=True)
class Query:
    where: str  # "sinyal-overview: panel 'Worst 50 stations' A", "rule sinyal-station-critical A"
    text: str
    dashboard: str | None  # uid, None for alert rules
    panel: dict[str, Any] | None = None
    window_s: int | None = None  # alert rules: relativeTimeRange.from


def queries() -> Iterator[Query]:
    """Every InfluxQL text Grafana would send: panel targets, query variables, annotations
    (dashboards) and the datasource queries of alert rules."""
    for uid, d in dashboards().items():
        for p in d["panels"]:
            for t in p.get("targets", []):
                yield Query(f"{uid}: panel {p['title']!r} {t['refId']}", t["query"], uid, p)
        for v in d["templating"]["list"]:
            if v["type"] == "query":
                yield Query(f"{uid}: variable {v['name']}", v["query"], uid)
        for a in d["annotations"]["list"]:
            if "query" in a:
                yield Query(f"{uid}: annotation {a['name']!r}", a["query"], uid)
    for r in rules():
        for item in r["data"]:
            if item["datasourceUid"] != "__expr__":
                yield Query(
                    f"rule {r['uid']} {item['refId']}",
                    item["model"]["query"],
                    None,
                    window_s=item["relativeTimeRange"]["from"],
                )


def _escape_regex(value: str) -> str:
    # Grafana's escapeRegex: the characters special in a JavaScript regex.
    return re.sub(r"([\\^$.|?*+()\[\]{}/])", r"\\\1", value)


def interpolate(
    text: str,
    variables: Sequence[Mapping[str, Any]],
    chosen: Mapping[str, str | list[str]],
    from_ms: int,
    to_ms: int,
    interval: str = "1m",
) -> str:
    """The query as Grafana sends it for the chosen variable values (default: each
    variable's own default, i.e. "All" or the text box's text)."""
    out = text.replace("$timeFilter", f"time >= {from_ms}ms and time <= {to_ms}ms")
    out = out.replace("$__interval", interval)
    for v in sorted(variables, key=lambda v: -len(v["name"])):
        value = chosen.get(v["name"], v["current"]["value"])
        if v["type"] == "textbox":
            formatted = str(value)
        else:
            values = [value] if isinstance(value, str) else list(value)
            if ALL in values:
                formatted = v["allValue"]
            elif len(values) == 1:
                formatted = _escape_regex(values[0])
            else:
                formatted = "(" + "|".join(_escape_regex(x) for x in values) + ")"
        out = out.replace("${" + v["name"] + "}", formatted).replace("$" + v["name"], formatted)
    return out


RELATIVE = re.compile(r"now-(\d+)([smhd])")
SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def default_range_s(dashboard: Mapping[str, Any]) -> int:
    m = RELATIVE.fullmatch(dashboard["time"]["from"])
    assert m and dashboard["time"]["to"] == "now", dashboard["time"]
    return int(m.group(1)) * SECONDS[m.group(2)]


def outer(text: str) -> str:
    """The query with every parenthesised part removed: what its outermost SELECT does."""
    prev = None
    while prev != text:
        prev, text = text, re.sub(r"\([^()]*\)", "", text)
    return text
