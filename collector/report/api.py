"""The report as a Python API: check a request, query the database, assemble the figures
(what `sinyal-collector report`, the /reports page and benchmarks/report.py call)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from agent.contract.thresholds import Thresholds
from collector.config import SinkConfig
from collector.report.model import Report, build, plan
from collector.report.query import QueryError, ReportQuery, SinkUnavailable, known_operators
from collector.report.scope import FORMATS, LANGS, ZONES, ReportError, ReportRequest, resolve
from collector.station import Station

__all__ = [
    "FORMATS",
    "LANGS",
    "ZONES",
    "QueryError",
    "Report",
    "ReportError",
    "ReportRequest",
    "SinkUnavailable",
    "known_operators",
    "make_report",
    "query_count",
]


def query_count(req: ReportRequest, th: Thresholds) -> int:
    """How many queries a report runs (for a progress bar), independent of the data."""
    from collector.report.scope import Scope

    return len(plan(Scope(req, (), (), datetime.now(), False, datetime.now(), datetime.now()), th))


def make_report(
    sink: SinkConfig,
    req: ReportRequest,
    stations: list[Station],
    th: Thresholds,
    progress: Callable[[str], None] | None = None,
    now: datetime | None = None,
) -> Report:
    """Check the request, query the database, assemble the figures.

    Raises ReportError (a request to change: unknown province or operator, empty or future
    period, no data), SinkUnavailable (the database does not answer) or QueryError."""
    operators = sorted(
        set(known_operators(sink)) | {s.expected_operator for s in stations if s.expected_operator}
    )
    scope = resolve(req, stations, operators, now)
    report = build(scope, th, ReportQuery(sink, scope), {s.id: s for s in stations}, progress)
    table = report.table("stations")
    if table is None or not any(r["rounds"] for r in table.rows):
        g = report.scope
        raise ReportError(
            f"--from {req.start} / --to {req.end}: no ICMP rounds in the period for the "
            f"{len(g.stations)} station(s) in scope; expected a period with measurements"
        )
    return report
