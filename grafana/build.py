"""Builds Sinyal's Grafana dashboards and alert rules; the committed files are its output.

    python -m grafana.build           write grafana/dashboards/*.json and
                                      grafana/provisioning/alerting/rules.yaml
    python -m grafana.build --check   exit 1 when a committed file differs from what this builds

Grafana provisions the committed files (docs/grafana.md); tests/unit/test_grafana.py proves they are
what this module builds, and tests/integration/test_grafana_queries.py runs every query in them
against
InfluxDB 1.6.7 seeded with ok, degraded, critical and silent stations.

Rules every query here follows (shared/reference/influxdb-grafana.md):

- InfluxQL only, in the subset InfluxDB 3 supports too: no SLIMIT/SOFFSET, INTEGRAL, SAMPLE,
  HOLT_WINTERS; SHOW TAG VALUES always with FROM and a time predicate.
- No panel returns a series per station: Grafana's datasource stops at 1000 series and the
  country has ~100,000 stations. Per-station answers come from a subquery that takes each
  station's latest `station_status` (or `agent`) values, and an outer query that returns them
  as rows of one series, filtered or cut with TOP() to what a person can read.
- LIMIT inside a subquery is ignored by InfluxDB 1.x (checked on 1.6.7), so "latest point per
  station" is last() of each field, not ORDER BY time DESC LIMIT 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from agent.contract.thresholds import load as load_thresholds

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DASHBOARDS = HERE / "dashboards"
RULES = HERE / "provisioning" / "alerting" / "rules.yaml"
THRESHOLDS = ROOT / "config" / "thresholds.yaml"

DATASOURCE_UID = "sinyal-influxdb"
DS = {"type": "influxdb", "uid": DATASOURCE_UID}
SCHEMA_VERSION = 39
FOLDER = "Sinyal"

OVERVIEW_UID = "sinyal-overview"
STATION_UID = "sinyal-station"
OPERATORS_UID = "sinyal-operators"
FLEET_UID = "sinyal-fleet"

# Alert settings a control room may want to tune (then rebuild).
PROVINCE_DEGRADED_SHARE_PCT = 20  # province alert: share of reporting stations not ok
BACKLOG_ALERT_S = 1800  # agent backlog alert: oldest unsent record older than 30 minutes
WORST_N = 50  # rows of the worst-stations table
SILENT_ROWS = 1000  # rows of the silent list (the count panel shows the total)

STATUS_TAGS = ("station", "province", "regency", "operator")
AGENT_TAGS = ("station", "province", "regency")

# station_status.status: value, name, colour
STATUSES = (
    (0, "ok", "green"),
    (1, "degraded", "yellow"),
    (2, "critical", "red"),
    (3, "silent", "purple"),
)

# The registry's IANA zones and how the control room names them.
ZONES = (
    ("Asia/Jakarta", "WIB (UTC+7)"),
    ("Asia/Pontianak", "WIB (UTC+7)"),
    ("Asia/Makassar", "WITA (UTC+8)"),
    ("Asia/Jayapura", "WIT (UTC+9)"),
)

# Filters the variables drive. `allValue` is ".*", so "All" also matches a missing tag.
F_PROVINCE = '"province" =~ /^$province$/'
F_REGENCY = '"regency" =~ /^$regency$/'
F_OPERATOR = '"operator" =~ /^$operator$/'
F_UPLINK = '"uplink" =~ /^$uplink$/'
F_SEARCH = '"station" =~ /^$search/'  # a station id, or a prefix: province, regency, village
F_STATION = "\"station\" = '$station'"


def q(name: str) -> str:
    return f'"{name}"'


def tags(names: Sequence[str]) -> str:
    return ", ".join(q(n) for n in names)


def where(*conds: str) -> str:
    return " AND ".join(("$timeFilter", *conds))


def latest(
    measurement: str,
    fields: Sequence[str],
    filters: Sequence[str],
    group: Sequence[str],
    fill: str | None = None,
) -> str:
    """Each group's (station's) last value of each field within the dashboard's range."""
    sel = ", ".join(f"last({q(f)}) AS {q(f)}" for f in fields)
    text = f"SELECT {sel} FROM {q(measurement)} WHERE {where(*filters)} GROUP BY {tags(group)}"
    return f"{text} fill({fill})" if fill is not None else text


STATUS_FILTERS = (F_PROVINCE, F_REGENCY, F_OPERATOR, F_SEARCH)
AGENT_FILTERS = (F_PROVINCE, F_REGENCY, F_SEARCH)


def latest_status(fields: Sequence[str], fill: str | None = None) -> str:
    return latest("station_status", fields, STATUS_FILTERS, STATUS_TAGS, fill)


# -- queries shared by panels and alert rules ---------------------------------------------------

MAP_FIELDS = ("status", "lat", "lon", "loss_pct", "rtt_p50_ms", "mos", "tz")
MAP_QUERY = (
    f"SELECT {tags(('station', 'province', 'regency', *MAP_FIELDS))} "
    f"FROM ({latest_status(MAP_FIELDS)}) WHERE {q('lat')} <= 90"
)

WORST_FIELDS = ("status", "loss_pct", "rtt_p50_ms", "mos", "causes", "reasons", "tz")
# score: critical (2) above degraded (1), then most loss. fill(-1) keeps a station without
# an ICMP value in the list (score 1999 or 999); the table shows -1 as "-".
WORST_QUERY = (
    f"SELECT top({q('score')}, {WORST_N}) AS {q('score')}, "
    f"{tags(('station', 'province', 'regency', 'operator', *WORST_FIELDS))} FROM ("
    f"SELECT {q('status')} * 1000 + {q('loss_pct')} AS {q('score')}, {tags(WORST_FIELDS)} "
    f"FROM ({latest_status(WORST_FIELDS, fill='-1')}) "
    f"WHERE {q('status')} = 1 OR {q('status')} = 2 GROUP BY {tags(STATUS_TAGS)})"
)

SILENT_FIELDS = ("status", "last_seen_s", "status_age_s", "reasons", "tz")
SILENT_QUERY = (
    f"SELECT top({q('status_age_s')}, {SILENT_ROWS}) AS {q('silent_for_s')}, "
    f"{tags(('station', 'province', 'regency', 'operator', 'last_seen_s', 'reasons', 'tz'))} "
    f"FROM ({latest_status(SILENT_FIELDS)}) WHERE {q('status')} = 3"
)


def status_count_query(value: int, name: str, by: Sequence[str] = ()) -> str:
    inner = (
        latest_status(("status",))
        if not by
        else latest("station_status", ("status",), STATUS_FILTERS, (*STATUS_TAGS[:1], *by))
    )
    text = f"SELECT count({q('status')}) AS {q(name)} FROM ({inner}) WHERE {q('status')} = {value}"
    return f"{text} GROUP BY {tags(by)}" if by else text


def province_share_query(filters: Sequence[str]) -> str:
    """Per province, % of reporting stations (not silent) that are degraded or critical:
    ceil(status / 2) is 0 for ok and 1 for degraded (1) and critical (2)."""
    inner = latest("station_status", ("status",), filters, ("station", "province"))
    return (
        f"SELECT mean({q('bad')}) * 100 AS {q('not_ok_pct')} FROM ("
        f"SELECT ceil({q('status')} / 2) AS {q('bad')} FROM ({inner}) "
        f"WHERE {q('status')} < 3 GROUP BY {q('province')}) GROUP BY {q('province')}"
    )


def station_alert_query(value: int) -> str:
    """One series per station in that status (only those): labels station, region, operator."""
    inner = latest("station_status", ("status",), (), STATUS_TAGS)
    return (
        f"SELECT {q('status')} FROM ({inner}) WHERE {q('status')} = {value} "
        f"GROUP BY {tags(STATUS_TAGS)}"
    )


def backlog_query(filters: Sequence[str], group: Sequence[str] = AGENT_TAGS) -> str:
    """oldest_unsent_s is absent when the spool is empty, so last() alone would return an old
    backlog; spool_records is always present, and when the latest heartbeat has records
    waiting, its oldest_unsent_s is that same heartbeat's."""
    return latest("agent", ("oldest_unsent_s", "spool_records"), filters, group)


BACKLOG_ALERT_QUERY = (
    f"SELECT {q('oldest_unsent_s')} FROM ({backlog_query(())}) "
    f"WHERE {q('spool_records')} > 0 AND {q('oldest_unsent_s')} > {BACKLOG_ALERT_S} "
    f"GROUP BY {tags(AGENT_TAGS)}"
)
CLOCK_ALERT_QUERY = (
    f"SELECT {q('clock_synced')} FROM ("
    f"{latest('agent', ('clock_synced',), (), AGENT_TAGS)}) "
    f"WHERE {q('clock_synced')} = 0 GROUP BY {tags(AGENT_TAGS)}"
)


# -- panels ---------------------------------------------------------------------------------


def target(
    query: str, ref: str = "A", fmt: str = "table", alias: str | None = None
) -> dict[str, Any]:
    t: dict[str, Any] = {
        "refId": ref,
        "datasource": DS,
        "rawQuery": True,
        "resultFormat": fmt,
        "query": query,
    }
    if alias:
        t["alias"] = alias
    return t


def refs(queries: Iterable[str], fmt: str = "table") -> list[dict[str, Any]]:
    return [target(text, chr(ord("A") + i), fmt) for i, text in enumerate(queries)]


def status_mappings() -> list[dict[str, Any]]:
    return [
        {
            "type": "value",
            "options": {
                str(v): {"text": name, "color": colour, "index": v} for v, name, colour in STATUSES
            },
        }
    ]


def zone_mappings() -> list[dict[str, Any]]:
    opts = {iana: {"text": label, "index": i} for i, (iana, label) in enumerate(ZONES)}
    opts["-1"] = {"text": "?", "index": len(ZONES)}
    return [{"type": "value", "options": opts}]


def status_thresholds() -> dict[str, Any]:
    steps: list[dict[str, Any]] = [{"color": STATUSES[0][2], "value": None}]
    steps += [{"color": colour, "value": v} for v, _, colour in STATUSES[1:]]
    return {"mode": "absolute", "steps": steps}


def override(name: str, *props: tuple[str, Any]) -> dict[str, Any]:
    return {
        "matcher": {"id": "byName", "options": name},
        "properties": [{"id": k, "value": v} for k, v in props],
    }


def status_column(name: str = "status") -> dict[str, Any]:
    return override(
        name,
        ("mappings", status_mappings()),
        ("thresholds", status_thresholds()),
        ("color", {"mode": "thresholds"}),
        ("custom.cellOptions", {"type": "color-background"}),
    )


def zone_column() -> dict[str, Any]:
    return override("tz", ("displayName", "zone"), ("mappings", zone_mappings()))


def station_link_column() -> dict[str, Any]:
    """One click from any station table to the station dashboard, in the station's zone."""
    url = (
        f"/d/{STATION_UID}/station?var-station=${{__value.raw}}&from=now-6h&to=now"
        "&timezone=${__data.fields.tz}"
    )
    return override("station", ("links", [{"title": "Station ${__value.raw}", "url": url}]))


def unit_column(name: str, unit: str, display: str | None = None) -> dict[str, Any]:
    props: list[tuple[str, Any]] = [("unit", unit)]
    if display:
        props.append(("displayName", display))
    return override(name, *props)


def hidden(*names: str) -> dict[str, Any]:
    return {
        "id": "organize",
        "options": {"excludeByName": dict.fromkeys(names, True), "renameByName": {}},
    }


class Board:
    """Places panels left to right in rows of 24 columns and numbers them."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.x = self.y = self.row_h = 0

    def add(self, panel: dict[str, Any], w: int, h: int) -> None:
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        panel["id"] = len(self.panels) + 1
        panel["gridPos"] = {"x": self.x, "y": self.y, "w": w, "h": h}
        panel.setdefault("datasource", DS)
        self.panels.append(panel)
        self.x += w
        self.row_h = max(self.row_h, h)


def panel(
    kind: str,
    title: str,
    description: str,
    targets: list[dict[str, Any]],
    *,
    unit: str | None = None,
    overrides: Sequence[dict[str, Any]] = (),
    options: dict[str, Any] | None = None,
    transformations: Sequence[dict[str, Any]] = (),
    defaults: dict[str, Any] | None = None,
) -> dict[str, Any]:
    d: dict[str, Any] = {"custom": {}} if defaults is None else dict(defaults)
    if unit:
        d["unit"] = unit
    return {
        "type": kind,
        "title": title,
        "description": description,
        "targets": targets,
        "fieldConfig": {"defaults": d, "overrides": list(overrides)},
        "options": options or {},
        "transformations": list(transformations),
    }


def stat_options(color_mode: str) -> dict[str, Any]:
    return {
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "colorMode": color_mode,
        "graphMode": "none",
        "textMode": "value_and_name",
        "justifyMode": "auto",
        "orientation": "horizontal",
    }


def table(
    title: str, description: str, targets: list[dict[str, Any]], sort: str | None = None, **kw: Any
) -> dict[str, Any]:
    options: dict[str, Any] = {
        "showHeader": True,
        "cellHeight": "sm",
        "footer": {"show": False, "reducer": ["sum"], "fields": ""},
    }
    if sort:
        options["sortBy"] = [{"displayName": sort, "desc": True}]
    return panel("table", title, description, targets, options=options, **kw)


def timeseries(
    title: str, description: str, targets: list[dict[str, Any]], unit: str, **kw: Any
) -> dict[str, Any]:
    defaults = {
        "custom": {
            "drawStyle": "line",
            "lineWidth": 1,
            "spanNulls": False,
            "showPoints": "auto",
            "fillOpacity": 0,
        }
    }
    options = {
        "legend": {
            "displayMode": "table",
            "placement": "bottom",
            "showLegend": True,
            "calcs": ["mean", "max", "lastNotNull"],
        },
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    return panel(
        "timeseries",
        title,
        description,
        targets,
        unit=unit,
        options=options,
        defaults=defaults,
        **kw,
    )


def series(
    measurement: str,
    fields: Sequence[tuple[str, str]],
    filters: Sequence[str],
    group: Sequence[str],
    agg: str = "mean",
) -> str:
    sel = ", ".join(f"{agg}({q(f)}) AS {q(alias)}" for f, alias in fields)
    by = ", ".join(("time($__interval)", *(q(g) for g in group)))
    return f"SELECT {sel} FROM {q(measurement)} WHERE {where(*filters)} GROUP BY {by} fill(null)"


# -- variables ------------------------------------------------------------------------------


def tag_variable(name: str, label: str, measurement: str, *filters: str) -> dict[str, Any]:
    conds = " AND ".join((*filters, "time > now() - 1d"))
    text = f"SHOW TAG VALUES FROM {q(measurement)} WITH KEY = {q(name)} WHERE {conds}"
    return {
        "type": "query",
        "name": name,
        "label": label,
        "datasource": DS,
        "query": text,
        "definition": text,
        "refresh": 2,  # on time range change: new stations appear without a reload
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "sort": 1,
        "regex": "",
        "hide": 0,
        "skipUrlSync": False,
    }


def textbox(name: str, label: str, description: str, default: str = "") -> dict[str, Any]:
    return {
        "type": "textbox",
        "name": name,
        "label": label,
        "description": description,
        "query": default,
        "current": {"selected": False, "text": default, "value": default},
        "options": [{"selected": True, "text": default, "value": default}],
        "hide": 0,
        "skipUrlSync": False,
    }


def search_variable() -> dict[str, Any]:
    return textbox(
        "search",
        "Station (id or prefix)",
        "A TPS code, or its first 2/4/6/10 digits for a province, regency, district or village. "
        "A text box, not a list: it works the same with 100,000 stations.",
    )


def region_variables(measurement: str) -> list[dict[str, Any]]:
    return [
        tag_variable("province", "Province", measurement),
        tag_variable("regency", "Regency", measurement, F_PROVINCE),
    ]


# -- dashboards -----------------------------------------------------------------------------


def nav_links() -> list[dict[str, Any]]:
    return [
        {
            "title": "Sinyal",
            "type": "dashboards",
            "tags": ["sinyal"],
            "asDropdown": False,
            "includeVars": False,
            "keepTime": True,
            "targetBlank": False,
            "icon": "external link",
        }
    ]


def dashboard(
    uid: str,
    title: str,
    description: str,
    board: Board,
    variables: list[dict[str, Any]],
    time_from: str = "now-30m",
    refresh: str = "1m",
    annotations: Sequence[dict[str, Any]] = (),
    links: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    builtin = {
        "builtIn": 1,
        "datasource": {"type": "grafana", "uid": "-- Grafana --"},
        "enable": True,
        "hide": True,
        "iconColor": "rgba(0, 211, 255, 1)",
        "name": "Annotations & Alerts",
        "type": "dashboard",
    }
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["sinyal"],
        "timezone": "browser",
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": False,
        "graphTooltip": 1,
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "weekStart": "",
        "time": {"from": time_from, "to": "now"},
        "timepicker": {},
        "refresh": refresh,
        "links": [*nav_links(), *links],
        "annotations": {"list": [builtin, *annotations]},
        "templating": {"list": variables},
        "panels": board.panels,
    }


def overview() -> dict[str, Any]:
    b = Board()
    counts = refs(status_count_query(v, name) for v, name, _ in STATUSES)
    b.add(
        panel(
            "stat",
            "Stations per status",
            "How many stations are ok, degraded, critical and silent now (each station's "
            "latest station_status in the time range).",
            counts,
            overrides=[
                override(n, ("color", {"mode": "fixed", "fixedColor": c})) for _, n, c in STATUSES
            ],
            options=stat_options("background"),
            defaults={"noValue": "0", "color": {"mode": "fixed"}},
        ),
        24,
        4,
    )
    geomap_options = {
        "view": {"id": "coords", "lat": -2.5, "lon": 118.0, "zoom": 4.6, "allLayers": True},
        "controls": {"showZoom": True, "mouseWheelZoom": True, "showAttribution": True},
        "basemap": {"type": "default", "name": "Basemap", "config": {}},
        "layers": [
            {
                "type": "markers",
                "name": "Stations",
                "tooltip": True,
                "location": {"mode": "coords", "latitude": "lat", "longitude": "lon"},
                "config": {
                    "showLegend": True,
                    "style": {
                        "color": {"field": "status", "fixed": "green"},
                        "opacity": 0.8,
                        "size": {"fixed": 4, "min": 2, "max": 8},
                        "symbol": {"mode": "fixed", "fixed": "img/icons/marker/circle.svg"},
                    },
                },
            }
        ],
        "tooltip": {"mode": "details"},
    }
    b.add(
        panel(
            "geomap",
            "Stations by status",
            "Every station at its registry position, coloured by status: green ok, yellow "
            "degraded, red critical, purple silent. One row per station from station_status "
            "(one series, so no per-station series limit). Click a point for its values.",
            [target(MAP_QUERY)],
            overrides=[status_column(), zone_column(), station_link_column()],
            options=geomap_options,
            defaults={
                "color": {"mode": "thresholds"},
                "thresholds": status_thresholds(),
                "mappings": status_mappings(),
            },
        ),
        14,
        18,
    )
    b.add(
        table(
            f"Worst {WORST_N} stations",
            "Critical stations first, then degraded; within each, most packet loss first. "
            "Click a station to open its dashboard in its own time zone. '-' is not measured.",
            [target(WORST_QUERY)],
            sort="score",
            overrides=[
                status_column(),
                zone_column(),
                station_link_column(),
                unit_column("loss_pct", "percent", "loss"),
                unit_column("rtt_p50_ms", "ms", "latency p50"),
                unit_column("mos", "none", "MOS"),
            ],
            defaults={
                "custom": {"filterable": True},
                "mappings": [{"type": "value", "options": {"-1": {"text": "-"}}}],
            },
            transformations=[hidden("time", "score")],
        ),
        10,
        18,
    )
    per_province = refs(status_count_query(v, name, ("province",)) for v, name, _ in STATUSES)
    b.add(
        table(
            "Stations per status and province",
            "Counts of each province's stations by their latest status.",
            per_province,
            sort="critical",
            overrides=[
                override(
                    n,
                    ("color", {"mode": "fixed", "fixedColor": c}),
                    ("custom.cellOptions", {"type": "color-text"}),
                )
                for _, n, c in STATUSES
            ],
            defaults={"noValue": "0", "custom": {}},
            transformations=[{"id": "merge", "options": {}}, hidden("time")],
        ),
        12,
        10,
    )
    b.add(
        panel(
            "bargauge",
            "Share of reporting stations degraded or critical, per province",
            "Silent stations are left out (they have their own list and alert). The province "
            f"alert fires above {PROVINCE_DEGRADED_SHARE_PCT} %.",
            [
                target(
                    province_share_query(STATUS_FILTERS), fmt="time_series", alias="$tag_province"
                )
            ],
            unit="percent",
            options={
                "orientation": "horizontal",
                "displayMode": "basic",
                "showUnfilled": True,
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            },
            defaults={
                "min": 0,
                "max": 100,
                "thresholds": {
                    "mode": "absolute",
                    "steps": [
                        {"color": "green", "value": None},
                        {"color": "red", "value": PROVINCE_DEGRADED_SHARE_PCT},
                    ],
                },
            },
        ),
        12,
        10,
    )
    b.add(silent_table(), 24, 10)
    return dashboard(
        OVERVIEW_UID,
        "Sinyal: national overview",
        "Where the signal fails now: every station on the map, the worst first, silent stations.",
        b,
        [
            *region_variables("station_status"),
            tag_variable("operator", "Operator (expected)", "station_status"),
            search_variable(),
        ],
    )


def silent_table() -> dict[str, Any]:
    return table(
        "Silent stations",
        "Stations the collector has heard nothing from for status.silent_after_s (default "
        f"5 min), longest silent first (at most {SILENT_ROWS}; the counts show the total). "
        "'last upload' is empty for a station that never reported.",
        [target(SILENT_QUERY)],
        sort="silent_for_s",
        overrides=[
            zone_column(),
            station_link_column(),
            unit_column("silent_for_s", "s", "silent for"),
            unit_column("last_seen_s", "s", "last upload, s before"),
        ],
        transformations=[hidden("time")],
    )


def station() -> dict[str, Any]:
    b = Board()
    icmp = (F_STATION, F_UPLINK)
    by_target = ("target", "uplink")
    header_fields = ("status", "reasons", "tz", "last_seen_s", "lat", "lon")
    b.add(
        table(
            "Station now",
            "Latest status, why, and the station's local zone (the time axis follows the "
            "dashboard's zone: use the WIB / WITA / WIT links above for local time).",
            [target(latest("station_status", header_fields, (F_STATION,), STATUS_TAGS[1:]))],
            overrides=[
                status_column(),
                zone_column(),
                unit_column("last_seen_s", "s", "last upload, s before"),
            ],
            transformations=[hidden("time")],
        ),
        24,
        4,
    )
    panels = [
        (
            "Latency p50 / p95 per target and uplink",
            "ICMP round-trip time: median and 95th percentile of each round.",
            "icmp",
            (("rtt_p50_ms", "p50"), ("rtt_p95_ms", "p95")),
            icmp,
            by_target,
            "ms",
        ),
        (
            "Packet loss per target and uplink",
            "Share of echo requests without a reply in time.",
            "icmp",
            (("loss_pct", "loss"),),
            icmp,
            by_target,
            "percent",
        ),
        (
            "Jitter per target and uplink",
            "Mean absolute difference of consecutive RTTs.",
            "icmp",
            (("jitter_ms", "jitter"),),
            icmp,
            by_target,
            "ms",
        ),
        (
            "MOS per target and uplink",
            "E-model voice quality estimate (4.0 good, below 3.1 poor).",
            "icmp",
            (("mos", "MOS"),),
            icmp,
            by_target,
            "none",
        ),
        (
            "DNS resolution per resolver",
            "Query to answer; absent on timeouts.",
            "dns",
            (("resolve_ms", "resolve"),),
            icmp,
            ("resolver", "uplink"),
            "ms",
        ),
        (
            "HTTP time to first byte and total per target",
            "The recap app's servers as the TPS reaches them.",
            "http",
            (("ttfb_ms", "ttfb"), ("total_ms", "total")),
            icmp,
            by_target,
            "ms",
        ),
        (
            "Throughput per uplink",
            "Download and upload rate of the throughput probe.",
            "throughput",
            (("download_mbps", "download"), ("upload_mbps", "upload")),
            icmp,
            ("uplink",),
            "Mbits",
        ),
        (
            "Idle and loaded latency per uplink",
            "Latency before and during the throughput test: the gap is bufferbloat.",
            "throughput",
            (("idle_latency_ms", "idle"), ("loaded_latency_ms", "loaded")),
            icmp,
            ("uplink",),
            "ms",
        ),
        (
            "Photo upload probe per target",
            "Rate and duration of a photo-sized upload (as the recap app sends).",
            "upload",
            (("rate_mbps", "rate Mbit/s"), ("duration_s", "duration s")),
            icmp,
            by_target,
            "none",
        ),
        (
            "Agent spool backlog",
            "Records waiting in the agent's spool and the age of the "
            "oldest (0 lines mean all delivered).",
            "agent",
            (("spool_records", "records"), ("oldest_unsent_s", "oldest unsent s")),
            (F_STATION,),
            (),
            "none",
        ),
        (
            "Agent clock",
            "Collector minus agent clock, and whether the kernel says it is synchronised (1).",
            "agent",
            (("clock_offset_ms", "offset ms"), ("clock_synced", "synced")),
            (F_STATION,),
            (),
            "none",
        ),
        (
            "Agent dropped records",
            "Records evicted at the spool's size cap (ever) and records the collector rejected.",
            "agent",
            (("dropped_total", "dropped"), ("dead_letters", "dead letters")),
            (F_STATION,),
            (),
            "none",
        ),
    ]
    for title, desc, measurement, fields, filters, group, unit in panels:
        agg = "last" if measurement == "agent" else "mean"
        alias = " ".join(f"$tag_{g}" for g in group) + " $col" if group else "$col"
        b.add(
            timeseries(
                title,
                desc,
                [
                    target(
                        series(measurement, fields, filters, group, agg),
                        fmt="time_series",
                        alias=alias,
                    )
                ],
                unit,
            ),
            12,
            8,
        )
    anno_query = (
        f'SELECT {tags(("status_name", "reasons"))} FROM "station_status" '
        f"WHERE {where(F_STATION, q('status_age_s') + ' < 5')}"
    )
    annotation = {
        "name": "Status changes",
        "datasource": DS,
        "enable": True,
        "hide": False,
        "iconColor": "red",
        "query": anno_query,
        "textColumn": "reasons",
        "tagsColumn": "status_name",
        "target": {
            "refId": "Anno",
            "query": anno_query,
            "rawQuery": True,
            "resultFormat": "table",
            "textColumn": "reasons",
            "tagsColumn": "status_name",
        },
    }
    zones = [
        {
            "title": f"Local time: {label.split()[0]}",
            "type": "link",
            "icon": "clock",
            "url": f"/d/{STATION_UID}/station?timezone={iana}",
            "includeVars": True,
            "keepTime": True,
            "targetBlank": False,
            "asDropdown": False,
            "tags": [],
        }
        for iana, label in (ZONES[0], ZONES[2], ZONES[3])
    ]
    variables = [
        textbox("station", "Station", "The station's id (TPS code); station tables link here."),
        tag_variable("uplink", "Uplink", "icmp", F_STATION),
    ]
    return dashboard(
        STATION_UID,
        "Sinyal: station",
        "One station: its links per target and uplink, throughput, upload, and its agent.",
        b,
        variables,
        time_from="now-6h",
        annotations=[annotation],
        links=zones,
    )


WITHIN_FIELDS = ("rtt_p50_ms", "jitter_ms", "loss_pct", "mos")


def within_conditions() -> tuple[str, ...]:
    """A round is within thresholds when none of latency, jitter, loss and MOS breaches its
    warn level in config/thresholds.yaml, by the thresholds' own comparison (`inclusive`
    honoured). A round with no replies has no RTT fields, so it is never within."""
    limits = load_thresholds(THRESHOLDS)
    out = []
    for name in WITHIN_FIELDS:
        t = limits.for_field("icmp", name)
        if t is None:
            raise SystemExit(f"{THRESHOLDS}: no threshold grades icmp.{name}")
        out.append(f"{q(name)} {t.within_operator()} {t.warn:g}")
    return tuple(out)


def operators() -> dict[str, Any]:
    b = Board()
    filters = (F_PROVINCE, F_REGENCY, F_OPERATOR, F_UPLINK)
    by = ("operator", "province")
    medians = (
        f"SELECT median({q('rtt_p50_ms')}) AS {q('latency_ms')}, "
        f"median({q('loss_pct')}) AS {q('loss_pct')}, median({q('jitter_ms')}) AS "
        f"{q('jitter_ms')}, median({q('mos')}) AS {q('mos')}, count({q('loss_pct')}) AS "
        f"{q('rounds')} FROM {q('icmp')} WHERE {where(*filters)} GROUP BY {tags(by)}"
    )
    within = (
        f"SELECT count({q('loss_pct')}) AS {q('within')} FROM {q('icmp')} "
        f"WHERE {where(*filters, *within_conditions())} GROUP BY {tags(by)}"
    )
    share = {
        "id": "calculateField",
        "options": {
            "mode": "binary",
            "alias": "within_share",
            "binary": {"left": "within", "operator": "/", "right": "rounds"},
            "replaceFields": False,
        },
    }
    b.add(
        table(
            "Per operator and province: medians and share of rounds within thresholds",
            "Medians over every ICMP round in the range. 'within' = rounds with latency, "
            "jitter, loss and MOS all better than config/thresholds.yaml's warn levels ("
            + ", ".join(within_conditions())
            + "); a round without replies is never within. Empty share: no round within.",
            refs((medians, within)),
            sort="rounds",
            overrides=[
                unit_column("latency_ms", "ms", "latency p50 (median)"),
                unit_column("loss_pct", "percent", "loss (median)"),
                unit_column("jitter_ms", "ms", "jitter (median)"),
                unit_column("mos", "none", "MOS (median)"),
                unit_column("within_share", "percentunit", "within thresholds"),
            ],
            transformations=[{"id": "merge", "options": {}}, share, hidden("time")],
        ),
        24,
        12,
    )
    for title, field, unit in (
        ("Median latency per operator", "rtt_p50_ms", "ms"),
        ("Median packet loss per operator", "loss_pct", "percent"),
    ):
        b.add(
            timeseries(
                title,
                "Median over all stations' rounds in each interval.",
                [
                    target(
                        series("icmp", ((field, field),), filters, ("operator",), "median"),
                        fmt="time_series",
                        alias="$tag_operator",
                    )
                ],
                unit,
            ),
            12,
            8,
        )
    variables = [
        *region_variables("icmp"),
        tag_variable("operator", "Operator", "icmp"),
        tag_variable("uplink", "Uplink", "icmp"),
    ]
    return dashboard(
        OPERATORS_UID,
        "Sinyal: operators",
        "Operators compared per province: medians and the share of rounds within thresholds.",
        b,
        variables,
        time_from="now-24h",
        refresh="5m",
    )


def fleet() -> dict[str, Any]:
    b = Board()
    agents = latest("agent", ("uptime_s",), AGENT_FILTERS, AGENT_TAGS)
    backlog = (
        f"SELECT top({q('oldest_unsent_s')}, {WORST_N}) AS {q('oldest_unsent_s')}, "
        f"{tags(('station', 'province', 'regency', 'spool_records'))} "
        f"FROM ({backlog_query(AGENT_FILTERS)}) WHERE {q('spool_records')} > 0"
    )
    backlog_count = (
        f"SELECT count({q('oldest_unsent_s')}) AS {q('backlog_over_30m')} FROM "
        f"({backlog_query(AGENT_FILTERS)}) WHERE {q('spool_records')} > 0 "
        f"AND {q('oldest_unsent_s')} > {BACKLOG_ALERT_S}"
    )
    dropped = (
        f"SELECT top({q('dropped_total')}, {WORST_N}) AS {q('dropped_total')}, "
        f"{tags(('station', 'province', 'regency', 'dead_letters'))} FROM ("
        f"{latest('agent', ('dropped_total', 'dead_letters'), AGENT_FILTERS, AGENT_TAGS)}) "
        f"WHERE {q('dropped_total')} > 0"
    )
    clock_inner = latest("agent", ("clock_offset_ms", "clock_synced"), AGENT_FILTERS, AGENT_TAGS)
    clock_bad = (
        f"{q('clock_synced')} = 0 OR {q('clock_offset_ms')} > 1000 "
        f"OR {q('clock_offset_ms')} < -1000"
    )
    clocks = (
        f"SELECT {tags(('station', 'province', 'regency', 'clock_offset_ms', 'clock_synced'))} "
        f"FROM ({clock_inner}) WHERE {clock_bad}"
    )
    versions = (
        f"SELECT count({q('uptime_s')}) AS {q('agents')} FROM ("
        f"{latest('agent', ('uptime_s',), AGENT_FILTERS, ('station', 'version'))}) "
        f"GROUP BY {q('version')}"
    )
    last_seen = (
        f"SELECT top({q('last_seen_s')}, {WORST_N}) AS {q('last_seen_s')}, "
        f"{tags(('station', 'province', 'regency', 'status', 'tz'))} FROM ("
        f"{latest_status(('last_seen_s', 'status', 'tz'))})"
    )
    b.add(
        panel(
            "stat",
            "Agents",
            "Agents whose heartbeat arrived in the range; agents with a backlog older than "
            "30 minutes; agents whose clock is unsynchronised or more than 1 s off.",
            refs(
                (
                    f"SELECT count({q('uptime_s')}) AS {q('heard')} FROM ({agents})",
                    backlog_count,
                    f"SELECT count({q('clock_synced')}) AS {q('clock_problems')} FROM "
                    f"({clock_inner}) WHERE {clock_bad}",
                )
            ),
            options=stat_options("value"),
            defaults={"noValue": "0"},
        ),
        12,
        4,
    )
    b.add(
        panel(
            "bargauge",
            "Agent versions",
            "Agents per version (an agent upgraded within the range counts under both).",
            [target(versions, fmt="time_series", alias="$tag_version")],
            options={
                "orientation": "horizontal",
                "displayMode": "basic",
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            },
        ),
        12,
        4,
    )
    tables = [
        (
            "Spool backlog",
            f"The {WORST_N} agents with the oldest record still waiting to upload "
            "(their latest heartbeat).",
            backlog,
            "oldest_unsent_s",
            [unit_column("oldest_unsent_s", "s", "oldest unsent")],
        ),
        (
            "Dropped records",
            f"The {WORST_N} agents that evicted most records at the spool's "
            "size cap, and their dead letters.",
            dropped,
            "dropped_total",
            [],
        ),
        (
            "Clock problems",
            "Agents whose kernel says the clock is not synchronised, or whose "
            "clock is more than 1 s from the collector's.",
            clocks,
            "clock_offset_ms",
            [unit_column("clock_offset_ms", "ms", "offset (collector - agent)")],
        ),
        (
            "Last seen",
            f"The {WORST_N} stations whose last upload is oldest (seconds before "
            "their latest status point).",
            last_seen,
            "last_seen_s",
            [
                unit_column("last_seen_s", "s", "last upload, s before"),
                status_column(),
                zone_column(),
            ],
        ),
    ]
    for title, desc, text, sort, extra in tables:
        b.add(
            table(
                title,
                desc,
                [target(text)],
                sort=sort,
                overrides=[station_link_column(), *extra],
                transformations=[hidden("time")],
            ),
            12,
            9,
        )
    b.add(silent_table(), 24, 9)
    return dashboard(
        FLEET_UID,
        "Sinyal: fleet",
        "The agents themselves: heard from, versions, backlog, dropped records, clocks, silence.",
        b,
        [
            *region_variables("agent"),
            search_variable(),
            tag_variable("operator", "Operator (expected)", "station_status"),
        ],
        time_from="now-1h",
    )


# -- alert rules ----------------------------------------------------------------------------


def rule(
    uid: str,
    title: str,
    query: str,
    op: str,
    limit: float,
    for_: str,
    labels: dict[str, str],
    summary: str,
    description: str,
    window_s: int = 900,
) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "condition": "C",
        "data": [
            {
                "refId": "A",
                "relativeTimeRange": {"from": window_s, "to": 0},
                "datasourceUid": DATASOURCE_UID,
                "model": {
                    "refId": "A",
                    "rawQuery": True,
                    "resultFormat": "time_series",
                    "query": query,
                    "intervalMs": 60000,
                    "maxDataPoints": 43200,
                },
            },
            {
                "refId": "B",
                "datasourceUid": "__expr__",
                "model": {
                    "refId": "B",
                    "type": "reduce",
                    "expression": "A",
                    "reducer": "last",
                    "settings": {"mode": "dropNN"},
                },
            },
            {
                "refId": "C",
                "datasourceUid": "__expr__",
                "model": {
                    "refId": "C",
                    "type": "threshold",
                    "expression": "B",
                    "conditions": [{"evaluator": {"type": op, "params": [limit]}}],
                },
            },
        ],
        # No problem anywhere is no series at all: that is OK, not "no data".
        "noDataState": "OK",
        "execErrState": "Error",
        "for": for_,
        "labels": {"team": "control-room", **labels},
        "annotations": {"summary": summary, "description": description},
        "isPaused": False,
    }


STATION_WHERE = "{{ $labels.station }} ({{ $labels.regency }}, {{ $labels.province }})"
STATION_URL = f"/d/{STATION_UID}/station?var-station={{{{ $labels.station }}}}"
AGENT_URL = f"/d/{FLEET_UID}/fleet?var-search={{{{ $labels.station }}}}"


def station_rule(value: int, name: str, for_: str, description: str) -> dict[str, Any]:
    return rule(
        f"sinyal-station-{name}",
        f"Station {name}",
        station_alert_query(value),
        "gt",
        value - 0.5,
        for_,
        {"severity": "critical", "scope": "station"},
        f"Station {STATION_WHERE} is {name}",
        f"{description}: {STATION_URL}",
        window_s=600,
    )


def alert_rules() -> dict[str, Any]:
    rules = [
        station_rule(2, "critical", "2m", "Its links fail (reasons on the station dashboard)"),
        station_rule(3, "silent", "5m", "Nothing arrived from it for status.silent_after_s"),
        rule(
            "sinyal-province-degraded",
            "Province degraded",
            province_share_query(()),
            "gt",
            PROVINCE_DEGRADED_SHARE_PCT,
            "5m",
            {"severity": "warning", "scope": "province"},
            "{{ $labels.province }}: more than "
            f"{PROVINCE_DEGRADED_SHARE_PCT} % of reporting stations degraded or critical",
            "{{ $values.B }} % of the province's reporting stations are degraded or critical: "
            f"/d/{OVERVIEW_UID}/overview?var-province={{{{ $labels.province }}}}",
            window_s=600,
        ),
        rule(
            "sinyal-agent-backlog",
            "Agent backlog over 30 minutes",
            BACKLOG_ALERT_QUERY,
            "gt",
            BACKLOG_ALERT_S,
            "5m",
            {"severity": "warning", "scope": "agent"},
            f"Agent at {STATION_WHERE} has records waiting for more than 30 minutes",
            "Its oldest unsent record is {{ $values.B }} s old: the uplink is too slow or "
            f"uploads fail. {AGENT_URL}",
        ),
        rule(
            "sinyal-agent-clock",
            "Agent clock not synchronised",
            CLOCK_ALERT_QUERY,
            "lt",
            0.5,
            "10m",
            {"severity": "warning", "scope": "agent"},
            f"Agent at {STATION_WHERE}: clock not synchronised",
            "The kernel reports the clock unsynchronised (check NTP/chrony with "
            f"`sinyal-agent doctor`); measured times may be off. {AGENT_URL}",
        ),
    ]
    return {
        "apiVersion": 1,
        "groups": [
            {"orgId": 1, "name": "sinyal", "folder": FOLDER, "interval": "1m", "rules": rules}
        ],
    }


# -- output ---------------------------------------------------------------------------------

RULES_HEADER = (
    "# Generated by grafana/build.py (python -m grafana.build); edit that file, not this one.\n"
    "# Grafana-managed alert rules on InfluxQL; every query here runs in\n"
    "# tests/integration/test_grafana_queries.py against InfluxDB 1.6.7 with seeded problems.\n"
)


def outputs() -> dict[Path, str]:
    """Every generated file and its exact content."""
    out: dict[Path, str] = {}
    for name, build in (
        ("overview", overview),
        ("station", station),
        ("operators", operators),
        ("fleet", fleet),
    ):
        out[DASHBOARDS / f"sinyal-{name}.json"] = json.dumps(build(), indent=2) + "\n"
    out[RULES] = RULES_HEADER + yaml.safe_dump(alert_rules(), sort_keys=False, width=100)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grafana.build", description=__doc__)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 on a diff")
    args = parser.parse_args(argv)
    stale = []
    for path, text in outputs().items():
        if path.exists() and path.read_text() == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    for path in stale:
        verb = "differs from the build" if args.check else "written"
        print(f"{path.relative_to(ROOT)}: {verb}", file=sys.stderr)
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
