"""The report's read path: InfluxQL built from a Scope, run through collector.sinks.

Aggregates are computed by the database (count, sum, mean, median, percentile, GROUP BY tag
and time); Python only adds up counts and divides. A report whose stations share one UTC
window reads the measurement directly::

    SELECT count(loss_pct), ... FROM "icmp" WHERE time >= A AND time < B AND <filters>
    GROUP BY "operator", "province"

When the windows differ per zone (no --zone, or --voting-hours), every (zone, window) pair is
a subquery and the aggregate runs over their union, so a national percentile is still one
exact percentile over every round (InfluxQL 1.x has no OR between time ranges)::

    SELECT percentile(rtt_p50_ms, 95) FROM
      (SELECT rtt_p50_ms FROM "icmp" WHERE time >= A1 AND time < B1 AND (<zone WIB>)),
      (SELECT rtt_p50_ms FROM "icmp" WHERE time >= A2 AND time < B2 AND (<zone WITA>))
    WHERE time >= min(A) AND time < max(B) GROUP BY "operator"

A zone is selected by province (every registered station of the province in scope is in that
zone) plus, for provinces split between zones, by station id.

InfluxDB 1.x answers all of this. InfluxDB 2.x and 3.x answer InfluxQL on their v1
compatibility API (/query with a DBRP mapping on 2.x; 3.x Core/Enterprise serve /query), with
the same sink settings; VictoriaMetrics has no InfluxQL and cannot serve reports.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from collector.config import SinkConfig
from collector.report.scope import Scope, ZoneGroup
from collector.sinks import QueryError, SinkUnavailable, _http_client, query_influxql

__all__ = ["Q", "QueryError", "ReportQuery", "SinkUnavailable", "ident", "literal"]


def literal(value: str) -> str:
    """An InfluxQL string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def ident(name: str) -> str:
    """An InfluxQL identifier (measurement, tag or field)."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _ns(t: datetime) -> int:
    return int(t.timestamp()) * 1_000_000_000 + t.microsecond * 1000


def _time(start: datetime, end: datetime) -> str:
    return f"time >= {_ns(start)} AND time < {_ns(end)}"


def _any(conds: Sequence[str]) -> str:
    return "(" + " OR ".join(conds) + ")" if conds else "false"


@dataclass(frozen=True)
class Q:
    """One query: `selects` over `measurement`, reading `fields`, grouped by tags (and time)."""

    name: str
    measurement: str
    selects: tuple[str, ...]  # e.g. "count(loss_pct) AS rounds"
    fields: tuple[str, ...]  # the fields the selects and the condition read
    group_by: tuple[str, ...]
    where: str | None = None  # a field condition
    every: str | None = None  # GROUP BY time(...)


class ReportQuery:
    """Builds and runs the report's queries for one Scope."""

    def __init__(self, cfg: SinkConfig, scope: Scope) -> None:
        self.cfg = cfg
        self.scope = scope
        self._filters = self._scope_filters()
        self._zones = self._zone_conditions()

    def _scope_filters(self) -> list[str]:
        r = self.scope.request
        out = []
        for tag, value in (
            ("province", r.province),
            ("regency", r.regency),
            ("operator", r.operator),
            ("station", r.station),
        ):
            if value is not None:
                out.append(f"{ident(tag)} = {literal(value)}")
        return out

    def _zone_conditions(self) -> dict[int, str | None]:
        groups = self.scope.groups
        if self.scope.single_window is not None:
            return {g.offset_h: None for g in groups}
        # A province belongs to the zone most of its stations are in; the few stations whose
        # tz differs (an exception, or a province split between zones) are named one by one:
        # left out of their province's zone and added to their own.
        counts: dict[str, Counter[int]] = {}
        for g in groups:
            for s in g.stations:
                counts.setdefault(s.province, Counter())[g.offset_h] += 1
        major = {p: c.most_common(1)[0][0] for p, c in counts.items()}
        odd = [
            (s, g.offset_h) for g in groups for s in g.stations if major[s.province] != g.offset_h
        ]
        out: dict[int, str | None] = {}
        for g in groups:
            provs = sorted(p for p, off in major.items() if off == g.offset_h)
            leave = sorted(s.id for s, _ in odd if major[s.province] == g.offset_h)
            add = sorted(s.id for s, off in odd if off == g.offset_h)
            conds = []
            if provs:
                c = _any([f"{ident('province')} = {literal(p)}" for p in provs])
                if leave:
                    c = "(" + " AND ".join([c, *(f"{ident('station')} != {literal(s)}"
                                                for s in leave)]) + ")"  # fmt: skip
                conds.append(c)
            conds += [f"{ident('station')} = {literal(s)}" for s in add]
            out[g.offset_h] = _any(conds)
        return out

    def _where(self, parts: Sequence[str | None]) -> str:
        return " AND ".join(p for p in parts if p)

    def _inner(self, q: Q, group: ZoneGroup) -> list[str]:
        cols = ", ".join(ident(f) for f in q.fields)
        out = []
        for w in group.windows:
            where = self._where(
                [_time(w.start, w.end), *self._filters, self._zones[group.offset_h], q.where]
            )
            out.append(f"(SELECT {cols} FROM {ident(q.measurement)} WHERE {where})")
        return out

    def text(self, q: Q) -> str:
        """The InfluxQL of `q` for this scope."""
        sel = ", ".join(q.selects)
        dims = [ident(t) for t in q.group_by]
        if q.every:
            dims.append(f"time({q.every})")
        group = f" GROUP BY {', '.join(dims)}" if dims else ""
        fill = " fill(none)" if q.every else ""
        one = self.scope.single_window
        if one is not None:
            where = self._where([_time(one.start, one.end), *self._filters, q.where])
            return f"SELECT {sel} FROM {ident(q.measurement)} WHERE {where}{group}{fill}"
        if "station" in q.group_by:
            # Per-station figures: every station is in one zone, so each zone is a statement
            # of its own (no union; a single window reads the measurement directly, which
            # InfluxDB 1.x does about twice as fast as a subquery).
            return "; ".join(
                self._zone_statement(q, g, sel, group, fill) for g in self.scope.groups
            )
        sources = [s for g in self.scope.groups for s in self._inner(q, g)]
        b = self.scope.bounds
        return f"SELECT {sel} FROM {', '.join(sources)} WHERE {_time(b.start, b.end)}{group}{fill}"

    def _zone_statement(self, q: Q, g: ZoneGroup, sel: str, group: str, fill: str) -> str:
        if len(g.windows) == 1:
            w = g.windows[0]
            where = self._where(
                [_time(w.start, w.end), *self._filters, self._zones[g.offset_h], q.where]
            )
            return f"SELECT {sel} FROM {ident(q.measurement)} WHERE {where}{group}{fill}"
        span = f"{_time(g.windows[0].start, g.windows[-1].end)}"
        return f"SELECT {sel} FROM {', '.join(self._inner(q, g))} WHERE {span}{group}{fill}"

    def run(
        self,
        queries: Sequence[Q],
        progress: Callable[[str], None] | None = None,
        workers: int = 4,
    ) -> dict[str, list[dict[str, Any]]]:
        """Run the queries (a few at a time); rows by query name. Raises SinkUnavailable when
        the database does not answer, QueryError when it refuses a statement."""
        client: httpx.Client = _http_client(self.cfg)

        def one(q: Q) -> tuple[str, list[dict[str, Any]]]:
            rows = query_influxql(self.cfg, self.text(q), client=client)
            if progress is not None:
                progress(q.name)
            return q.name, rows

        try:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                return dict(pool.map(one, queries))
        finally:
            client.close()


def known_operators(cfg: SinkConfig) -> list[str]:
    """Operator tag values the database holds (SHOW TAG VALUES is served from the index)."""
    rows = query_influxql(cfg, 'SHOW TAG VALUES WITH KEY = "operator"', epoch=None)
    return sorted({str(r["value"]) for r in rows if r.get("value")})
