"""Regulator QoS reports: `sinyal-collector report` and the collector's /reports page.

- scope:  the period, zones and filters (ReportRequest -> Scope), with the user's errors
- query:  InfluxQL over the sink's read path: each measurement's raw rows, streamed once
- compute: counts, sums, medians, percentiles over those rows (numpy, InfluxQL definitions)
- model:  which aggregate gives each figure, tables, verdicts against config/thresholds.yaml
- i18n:   Indonesian / English texts, number and date formats
- charts: matplotlib (Agg) SVG charts and the station map
- render: CSV + README, XLSX (XlsxWriter), HTML and PDF from one Jinja2 template,
          manifest with SHA-256
- web:    GET /reports (form, preview, downloads)

See docs/reports.md.
"""

from __future__ import annotations

from typing import Any

# The names below live in collector.report.api and are loaded on first use: `sinyal-collector`
# builds its parser (and `report --help`) without the report's libraries, so a command on an
# install without them still says which extra to install.
_API = {
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
}


def __getattr__(name: str) -> Any:
    if name in _API:
        from collector.report import api

        return getattr(api, name)
    raise AttributeError(f"module 'collector.report' has no attribute {name!r}")
