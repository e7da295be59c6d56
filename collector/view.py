"""`sinyal-collector status`: the control room's terminal view, read from InfluxDB (InfluxQL).

It reads the latest `station_status` point of every station written in the last
`--window` (default 1 day): counts per status per province, the worst stations first,
and the silent ones. It needs an InfluxQL endpoint (InfluxDB 1.x, or 2.x/3.x's v1 API);
VictoriaMetrics has none.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from collector.config import SinkConfig
from collector.sinks import query_influxql

if TYPE_CHECKING:
    from rich.console import RenderableType

STATUS_NAMES = ("ok", "degraded", "critical", "silent")
STATUS_STYLE = ("green", "yellow", "bold red", "magenta")

# The latest point of each station series. ORDER BY time DESC LIMIT 1 per GROUP BY series
# is InfluxQL 1.x; the same text runs on 2.x/3.x's v1 API.
LATEST_QUERY = (
    'SELECT "status", "reasons", "last_seen_s", "rtt_p50_ms", "loss_pct", "jitter_ms", '
    '"lat", "lon" FROM "station_status" WHERE time > now() - {window} '
    'GROUP BY "station", "province", "regency", "operator" ORDER BY time DESC LIMIT 1'
)


@dataclass(frozen=True)
class StationRow:
    station: str
    province: str
    regency: str
    operator: str
    status: int
    reasons: str
    seen_ago_s: float | None  # seconds since the station's last record, as of now
    rtt_p50_ms: float | None
    loss_pct: float | None
    jitter_ms: float | None
    written_at_s: float  # when this status point was written (unix seconds)


def fetch(sink: SinkConfig, window: str = "1d", now: float | None = None) -> list[StationRow]:
    """The latest status of every station that has one in the window."""
    t_now = time.time() if now is None else now
    rows = query_influxql(sink, LATEST_QUERY.format(window=window))
    out = []
    for r in rows:
        written = r["time"] / 1e9
        seen = r.get("last_seen_s")
        out.append(
            StationRow(
                station=r.get("station") or "",
                province=r.get("province") or "-",
                regency=r.get("regency") or "-",
                operator=r.get("operator") or "-",
                status=int(r.get("status") or 0),
                reasons=r.get("reasons") or "",
                seen_ago_s=None if seen is None else float(seen) + max(0.0, t_now - written),
                rtt_p50_ms=r.get("rtt_p50_ms"),
                loss_pct=r.get("loss_pct"),
                jitter_ms=r.get("jitter_ms"),
                written_at_s=written,
            )
        )
    return out


def worst_first(rows: list[StationRow]) -> list[StationRow]:
    """Critical, then degraded, then silent, then ok; within a status, most loss first."""
    rank = {2: 0, 1: 1, 3: 2, 0: 3}
    return sorted(
        rows,
        key=lambda r: (rank.get(r.status, 4), -(r.loss_pct or 0), -(r.rtt_p50_ms or 0), r.station),
    )


def counts_by_province(rows: list[StationRow]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for r in rows:
        c = out.setdefault(r.province, [0, 0, 0, 0])
        if 0 <= r.status < 4:
            c[r.status] += 1
    return dict(sorted(out.items()))


def _ago(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 120:
        return f"{s:.0f}s"
    if s < 7200:
        return f"{s / 60:.0f}m"
    return f"{s / 3600:.1f}h"


def _n(v: Any, unit: str = "") -> str:
    return "-" if v is None else f"{v:.3g}{unit}"


def render(rows: list[StationRow], top: int = 15, now: float | None = None) -> RenderableType:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    t_now = time.time() if now is None else now
    newest = max((r.written_at_s for r in rows), default=None)
    updated = "never" if newest is None else time.strftime("%H:%M:%S", time.localtime(newest))
    totals = [sum(1 for r in rows if r.status == s) for s in range(4)]
    head = Text(f"Sinyal control room · {len(rows)} stations · last update {updated}", style="bold")
    counts = Table(title="stations per status and province", title_justify="left")
    counts.add_column("province")
    for name, style in zip(STATUS_NAMES, STATUS_STYLE, strict=True):
        counts.add_column(name, justify="right", style=style)
    counts.add_column("total", justify="right")
    for prov, c in counts_by_province(rows).items():
        counts.add_row(Text(prov), *map(str, c), str(sum(c)))
    counts.add_row("all", *map(str, totals), str(len(rows)), style="bold")

    def station_table(title: str, subset: list[StationRow]) -> Table:
        t = Table(title=title, title_justify="left")
        for col in (
            "station",
            "province",
            "regency",
            "operator",
            "status",
            "rtt p50",
            "loss",
            "seen",
            "reasons",
        ):
            t.add_column(col, no_wrap=col != "reasons")
        for r in subset[:top]:
            name = STATUS_NAMES[r.status] if 0 <= r.status < 4 else str(r.status)
            style = STATUS_STYLE[r.status] if 0 <= r.status < 4 else ""
            # Station, names, operator and reasons come from agents and the registry: plain
            # Text, never markup (a target named "[/]" must not break the view, and a label
            # such as icmp[kpu@modem0] must show as it is).
            t.add_row(
                Text(r.station),
                Text(r.province),
                Text(r.regency),
                Text(r.operator),
                Text(name, style=style),
                _n(r.rtt_p50_ms, " ms"),
                _n(r.loss_pct, " %"),
                _ago(r.seen_ago_s),
                Text(r.reasons),
            )
        if len(subset) > top:
            t.caption = f"{len(subset) - top} more"
        return t

    trouble = [r for r in worst_first(rows) if r.status in (1, 2)]
    silent = sorted((r for r in rows if r.status == 3), key=lambda r: -(r.seen_ago_s or 0))
    parts: list[RenderableType] = [
        head,
        counts,
        station_table("worst stations (critical, degraded)", trouble),
        station_table("silent stations", silent),
    ]
    parts.append(
        Text(f"as of {time.strftime('%Y-%m-%d %H:%M:%S %Z', time.localtime(t_now))}", style="dim")
    )
    return Group(*parts)
