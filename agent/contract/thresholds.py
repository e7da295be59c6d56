"""Good / warn / alert thresholds per metric, read from config/thresholds.yaml.

The agent uses them to colour its live view; the collector uses the same file to
compute station status. Each metric names the `kind.field` values it applies to,
which way is worse, three limits and the `source` the numbers come from.

Grading a value v of a higher-is-worse metric:
  alert if v > alert; else warn if v > warn; else good if v <= good; else fair.
A metric with `inclusive: true` moves each boundary's equality to the worse side
(alert if v >= alert, warn if v >= warn, good only if v < good), as sources that
say "loss >= 1 %" or "good < 0.4 %" mean. Lower-is-worse metrics mirror this.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from agent.contract.configkit import ConfigError, read_yaml
from agent.contract.record import MEASUREMENTS


class Grade(StrEnum):
    GOOD = "good"
    FAIR = "fair"  # between good and warn
    WARN = "warn"
    ALERT = "alert"


@dataclass(frozen=True)
class Threshold:
    name: str
    fields: tuple[str, ...]  # "kind.field"
    higher_is_worse: bool
    unit: str
    good: float
    warn: float
    alert: float
    inclusive: bool
    source: str

    def breaches(self, value: float) -> bool:
        """Whether the value grades warn or alert (good and fair do not breach)."""
        v, warn = (value, self.warn) if self.higher_is_worse else (-value, -self.warn)
        return v > warn or (self.inclusive and v == warn)

    def within_operator(self) -> str:
        """The comparison `value OP warn` that holds exactly when the value does not breach:
        `breaches` written for a query language (InfluxQL, SQL), so dashboards and reports
        draw the same line the status engine does, `inclusive` included."""
        if self.higher_is_worse:
            return "<" if self.inclusive else "<="
        return ">" if self.inclusive else ">="

    def grade(self, value: float) -> Grade:
        # Mirror lower-is-worse metrics so one set of comparisons serves both directions.
        if self.higher_is_worse:
            v, good, warn, alert = value, self.good, self.warn, self.alert
        else:
            v, good, warn, alert = -value, -self.good, -self.warn, -self.alert
        if v > alert or (self.inclusive and v == alert):
            return Grade.ALERT
        if v > warn or (self.inclusive and v == warn):
            return Grade.WARN
        good_enough = v < good if self.inclusive else v <= good
        return Grade.GOOD if good_enough else Grade.FAIR


@dataclass(frozen=True)
class Thresholds:
    metrics: tuple[Threshold, ...]

    def for_field(self, kind: str, field: str) -> Threshold | None:
        key = f"{kind}.{field}"
        for m in self.metrics:
            if key in m.fields:
                return m
        return None

    def grade(self, kind: str, field: str, value: float) -> Grade | None:
        t = self.for_field(kind, field)
        return None if t is None else t.grade(value)


# Thresholds for the cellular signal are stated before its measurement joins MEASUREMENTS;
# any other kind must name a field of the record contract, so a typo is an error.
_FUTURE_KINDS = {"signal"} - MEASUREMENTS.keys()


def load(path: str | Path) -> Thresholds:
    name = str(path)
    doc = read_yaml(Path(path))
    errors: list[str] = []

    def err(p: str, got: Any, expected: str) -> None:
        errors.append(f"{name}: {p}: got {got!r}, expected {expected}")

    if not isinstance(doc, dict) or set(doc) - {"version", "metrics"}:
        raise ConfigError([f"{name}: (top level): expected a mapping with version and metrics"])
    if doc.get("version") != 1:
        err("version", doc.get("version"), "1")
    raw = doc.get("metrics")
    if not isinstance(raw, dict) or not raw:
        raise ConfigError([*errors, f"{name}: metrics: expected a mapping of metric names"])
    keys = {"fields", "direction", "unit", "good", "warn", "alert", "inclusive", "source"}
    out: list[Threshold] = []
    for mname, m in raw.items():
        p = f"metrics.{mname}"
        if not isinstance(m, dict):
            err(p, m, "a mapping")
            continue
        for k in sorted(set(m) - keys, key=str):
            errors.append(
                f"{name}: {p}.{k}: got an unknown key, expected one of {', '.join(sorted(keys))}"
            )
        fields = m.get("fields")
        if not isinstance(fields, list) or not fields:
            err(f"{p}.fields", fields, "a list of kind.field names")
            fields = []
        for i, f in enumerate(fields):
            kind, _, fld = str(f).partition(".")
            known = kind in MEASUREMENTS and fld in MEASUREMENTS[kind].fields
            if not known and kind not in _FUTURE_KINDS:
                err(f"{p}.fields[{i}]", f, "a kind.field of the data model")
        direction = m.get("direction")
        if direction not in ("higher_is_worse", "lower_is_worse"):
            err(f"{p}.direction", direction, "higher_is_worse or lower_is_worse")
        limits: dict[str, float] = {}
        for k in ("good", "warn", "alert"):
            v = m.get(k)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                err(f"{p}.{k}", v, "a number")
            else:
                limits[k] = float(v)
        if len(limits) == 3 and direction in ("higher_is_worse", "lower_is_worse"):
            ordered = (
                limits["good"] <= limits["warn"] <= limits["alert"]
                if direction == "higher_is_worse"
                else limits["good"] >= limits["warn"] >= limits["alert"]
            )
            if not ordered:
                err(p, limits, f"good, warn, alert in order for {direction}")
        source = m.get("source")
        if not isinstance(source, str) or not source.strip():
            err(f"{p}.source", source, "the regulation, recommendation or 'project default'")
        inclusive = m.get("inclusive", False)
        if not isinstance(inclusive, bool):
            err(f"{p}.inclusive", inclusive, "true or false")
        unit = m.get("unit", "")
        if not errors:
            out.append(
                Threshold(
                    str(mname),
                    tuple(str(f) for f in fields),
                    direction == "higher_is_worse",
                    str(unit),
                    limits["good"],
                    limits["warn"],
                    limits["alert"],
                    bool(inclusive),
                    str(source),
                )
            )
    if errors:
        raise ConfigError(errors)
    return Thresholds(tuple(out))
