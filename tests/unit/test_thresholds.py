"""agent.contract.thresholds: the shipped file, grading at and around each limit, invalid files."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent import cli
from agent.config import ConfigError
from agent.contract import thresholds as agent_thresholds
from agent.contract.thresholds import Grade, Threshold
from tests.conftest import ROOT, base_config, write_config

SHIPPED = ROOT / "config" / "thresholds.yaml"


@pytest.fixture(scope="module")
def shipped() -> agent_thresholds.Thresholds:
    return agent_thresholds.load(SHIPPED)


def metric(th: agent_thresholds.Thresholds, name: str) -> Threshold:
    (m,) = [m for m in th.metrics if m.name == name]
    return m


def test_shipped_file_loads(shipped: agent_thresholds.Thresholds) -> None:
    names = [m.name for m in shipped.metrics]
    assert len(names) == len(set(names))
    assert {"latency", "jitter", "loss", "mos", "dns_time", "http_ttfb", "http_total"} <= set(names)


def test_every_metric_has_a_source(shipped: agent_thresholds.Thresholds) -> None:
    for m in shipped.metrics:
        assert m.source.strip(), m.name
        assert m.unit, m.name


def test_a_field_is_graded_by_one_metric(shipped: agent_thresholds.Thresholds) -> None:
    fields = [f for m in shipped.metrics for f in m.fields]
    assert len(fields) == len(set(fields))


# The defaults are the table in /work/shared/reference/standards.md, section 0. Hard-coded here
# on purpose: changing config/thresholds.yaml must be a deliberate act that updates this test.
STANDARDS = {
    # name: (field, higher_is_worse, good, warn, alert, inclusive)
    "latency": ("icmp.rtt_p50_ms", True, 100.0, 150.0, 400.0, False),  # <=100, >150, >400 ms
    "jitter": ("icmp.jitter_ms", True, 20.0, 30.0, 50.0, False),  # <=20, >30, >50 ms
    "loss": ("icmp.loss_pct", True, 0.4, 1.0, 2.0, True),  # <0.4, >=1, >=2 %
    "mos": ("icmp.mos", False, 4.0, 3.6, 3.1, False),  # >=4.0, <3.6, <3.1
}


@pytest.mark.parametrize("name", sorted(STANDARDS))
def test_defaults_match_the_standards(shipped: agent_thresholds.Thresholds, name: str) -> None:
    field, higher, good, warn, alert, inclusive = STANDARDS[name]
    m = metric(shipped, name)
    assert field in m.fields
    assert (m.higher_is_worse, m.good, m.warn, m.alert, m.inclusive) == (
        higher,
        good,
        warn,
        alert,
        inclusive,
    )


@pytest.mark.parametrize(
    ("name", "value", "grade"),
    [
        ("latency", 0, Grade.GOOD),
        ("latency", 100, Grade.GOOD),
        ("latency", 120, Grade.FAIR),
        ("latency", 150, Grade.FAIR),  # strict: warn only above 150
        ("latency", 151, Grade.WARN),
        ("latency", 400, Grade.WARN),
        ("latency", 401, Grade.ALERT),
        ("jitter", 20, Grade.GOOD),
        ("jitter", 31, Grade.WARN),
        ("jitter", 51, Grade.ALERT),
        ("loss", 0.0, Grade.GOOD),
        ("loss", 0.39, Grade.GOOD),
        ("loss", 0.4, Grade.FAIR),  # inclusive: good only below 0.4 %
        ("loss", 0.5, Grade.FAIR),
        ("loss", 0.99, Grade.FAIR),
        ("loss", 1.0, Grade.WARN),  # inclusive: warn at 1 %
        ("loss", 2.0, Grade.ALERT),  # inclusive: alert at 2 %
        ("loss", 100.0, Grade.ALERT),
        ("mos", 4.1, Grade.GOOD),
        ("mos", 4.0, Grade.GOOD),
        ("mos", 3.8, Grade.FAIR),
        ("mos", 3.6, Grade.FAIR),  # strict: warn only below 3.6
        ("mos", 3.5, Grade.WARN),
        ("mos", 3.1, Grade.WARN),
        ("mos", 3.0, Grade.ALERT),
        ("mos", 1.0, Grade.ALERT),
    ],
)
def test_grade(shipped: agent_thresholds.Thresholds, name: str, value: float, grade: Grade) -> None:
    assert metric(shipped, name).grade(value) is grade


def test_grade_by_field(shipped: agent_thresholds.Thresholds) -> None:
    assert shipped.grade("icmp", "rtt_p50_ms", 401) is Grade.ALERT
    assert shipped.grade("icmp", "loss_pct", 1.0) is Grade.WARN
    assert shipped.for_field("icmp", "mos") is metric(shipped, "mos")
    assert shipped.grade("icmp", "no_such_field", 1.0) is None
    assert shipped.for_field("nosuchkind", "rtt_p50_ms") is None


# --- invalid files ------------------------------------------------------------------------


def _doc(**latency: Any) -> dict[str, Any]:
    m: dict[str, Any] = {
        "fields": ["icmp.rtt_p50_ms"],
        "direction": "higher_is_worse",
        "unit": "ms",
        "good": 100,
        "warn": 150,
        "alert": 400,
        "source": "test",
    }
    m.update(latency)
    return {"version": 1, "metrics": {"latency": {k: v for k, v in m.items() if v is not None}}}


def _errors(tmp_path: Path, doc: Any) -> list[str]:
    path = tmp_path / "thresholds.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False) if not isinstance(doc, str) else doc)
    with pytest.raises(ConfigError) as info:
        agent_thresholds.load(path)
    return [e.removeprefix(f"{path}: ") for e in info.value.errors]


def test_minimal_doc_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "thresholds.yaml"
    path.write_text(yaml.safe_dump(_doc()))
    (m,) = agent_thresholds.load(path).metrics
    assert (m.name, m.fields, m.good, m.inclusive) == ("latency", ("icmp.rtt_p50_ms",), 100, False)


@pytest.mark.parametrize(
    ("doc", "errors"),
    [
        (
            _doc(colour="red"),
            [
                "metrics.latency.colour: got an unknown key, expected one of alert, direction, "
                "fields, good, inclusive, source, unit, warn"
            ],
        ),
        (
            _doc(warn=500),
            [
                "metrics.latency: got {'good': 100.0, 'warn': 500.0, 'alert': 400.0}, "
                "expected good, warn, alert in order for higher_is_worse"
            ],
        ),
        (
            _doc(direction="lower_is_worse"),
            [
                "metrics.latency: got {'good': 100.0, 'warn': 150.0, 'alert': 400.0}, "
                "expected good, warn, alert in order for lower_is_worse"
            ],
        ),
        (
            _doc(source=None),
            [
                "metrics.latency.source: got None, "
                "expected the regulation, recommendation or 'project default'"
            ],
        ),
        (
            _doc(source="  "),
            [
                "metrics.latency.source: got '  ', "
                "expected the regulation, recommendation or 'project default'"
            ],
        ),
        (_doc(good="fast"), ["metrics.latency.good: got 'fast', expected a number"]),
        (_doc(alert=True), ["metrics.latency.alert: got True, expected a number"]),
        (
            _doc(inclusive="yes please"),
            ["metrics.latency.inclusive: got 'yes please', expected true or false"],
        ),
        (
            _doc(direction="up"),
            ["metrics.latency.direction: got 'up', expected higher_is_worse or lower_is_worse"],
        ),
        (
            _doc(fields=["icmp.rtt_p50_ms", "icmp.nonsense"]),
            [
                "metrics.latency.fields[1]: got 'icmp.nonsense', "
                "expected a kind.field of the data model"
            ],
        ),
        (_doc(fields=[]), ["metrics.latency.fields: got [], expected a list of kind.field names"]),
        (
            {**_doc(), "version": 2},
            ["version: got 2, expected 1"],
        ),
        (
            _doc(colour="red", warn=500, source=None),
            [
                "metrics.latency.colour: got an unknown key, expected one of alert, direction, "
                "fields, good, inclusive, source, unit, warn",
                "metrics.latency: got {'good': 100.0, 'warn': 500.0, 'alert': 400.0}, "
                "expected good, warn, alert in order for higher_is_worse",
                "metrics.latency.source: got None, "
                "expected the regulation, recommendation or 'project default'",
            ],
        ),
    ],
    ids=[
        "unknown-field",
        "wrong-order",
        "wrong-order-lower",
        "missing-source",
        "blank-source",
        "not-a-number",
        "bool-not-a-number",
        "inclusive-not-bool",
        "bad-direction",
        "unknown-kind-field",
        "no-fields",
        "bad-version",
        "several",
    ],
)
def test_invalid_thresholds(tmp_path: Path, doc: Any, errors: list[str]) -> None:
    assert _errors(tmp_path, doc) == errors


def test_errors_in_several_metrics_are_all_reported(tmp_path: Path) -> None:
    doc = _doc(source=None)
    doc["metrics"]["jitter"] = {**doc["metrics"]["latency"], "fields": ["icmp.jitter_ms"], "x": 1}
    errors = _errors(tmp_path, doc)
    assert [e.split(":")[0] for e in errors] == [
        "metrics.latency.source",
        "metrics.jitter.x",
        "metrics.jitter.source",
    ]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("[1, 2]\n", "(top level): expected a mapping with version and metrics"),
        (
            "version: 1\nmetrics: {}\nextra: 1\n",
            "(top level): expected a mapping with version and metrics",
        ),
        ("version: 1\nmetrics: []\n", "metrics: expected a mapping of metric names"),
        (
            "version: 1\nmetrics:\n  a: 1\n   b: 2\n",
            "line 4, column 5: not valid YAML: mapping values are not allowed here",
        ),
    ],
    ids=["list", "extra-top-key", "metrics-list", "yaml-syntax"],
)
def test_invalid_thresholds_file_shape(tmp_path: Path, text: str, error: str) -> None:
    assert _errors(tmp_path, text) == [error]


def test_unreadable_thresholds_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        agent_thresholds.load(tmp_path / "missing.yaml")
    assert info.value.errors == [f"{tmp_path / 'missing.yaml'}: file not found"]
    with pytest.raises(ConfigError) as info:
        agent_thresholds.load(tmp_path)  # a directory
    (error,) = info.value.errors
    assert error.startswith(f"{tmp_path}: cannot read: ")


def test_invalid_thresholds_via_check_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    th = tmp_path / "thresholds.yaml"
    th.write_text(yaml.safe_dump(_doc(source=None)))
    doc = base_config(tmp_path)
    doc["thresholds_file"] = "thresholds.yaml"
    path = write_config(tmp_path, doc)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        rc = cli.main(["check-config", "-c", str(path)])
    finally:  # the CLI installs its own log handler
        root.handlers[:] = handlers
        root.setLevel(level)
    assert rc == 2
    assert capsys.readouterr().err.splitlines() == [
        f"{th}: metrics.latency.source: got None, "
        "expected the regulation, recommendation or 'project default'",
        "1 problem; see docs/configuration.md",
    ]


def test_a_typo_in_a_known_kinds_field_is_refused(tmp_path: Path) -> None:
    src = (ROOT / "config" / "thresholds.yaml").read_text()
    assert "throughput.download_mbps" in src
    bad = tmp_path / "thresholds.yaml"
    bad.write_text(src.replace("throughput.download_mbps", "throughput.downlod_mbps", 1))
    with pytest.raises(ConfigError) as info:
        agent_thresholds.load(bad)
    assert "throughput.downlod_mbps" in str(info.value)
    assert "a kind.field of the data model" in str(info.value)
