"""What a technician sees: a rich live view on a terminal, single-line logs otherwise."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.contract.record import Record
from agent.contract.thresholds import Grade, Thresholds

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

SPARK = "▁▂▃▄▅▆▇█"
HISTORY = 20
GRADE_STYLE = {
    Grade.GOOD: "green",
    Grade.FAIR: "yellow",
    Grade.WARN: "dark_orange",
    Grade.ALERT: "bold red",
}

# The headline numbers of each kind, in display order: (field, label, unit).
SUMMARY: dict[str, tuple[tuple[str, str, str], ...]] = {
    "icmp": (
        ("rtt_p50_ms", "p50", "ms"),
        ("rtt_p95_ms", "p95", "ms"),
        ("loss_pct", "loss", "%"),
        ("jitter_ms", "jitter", "ms"),
        ("mos", "mos", ""),
    ),
    "dns": (("resolve_ms", "resolve", "ms"), ("rcode", "rcode", "")),
    "agent": (
        ("spool_records", "spool", ""),
        ("oldest_unsent_s", "oldest", "s"),
        ("dead_letters", "dead", ""),
        ("cpu_pct", "cpu", "%"),
        ("rss_mb", "rss", "MB"),
    ),
    "http": (
        ("status", "status", ""),
        ("ttfb_ms", "ttfb", "ms"),
        ("total_ms", "total", "ms"),
        ("bytes", "bytes", "B"),
    ),
    "throughput": (
        ("download_mbps", "down", "Mbit/s"),
        ("upload_mbps", "up", "Mbit/s"),
        ("idle_latency_ms", "idle", "ms"),
        ("loaded_latency_increase_ms", "+load", "ms"),
        ("skip_reason", "skipped", ""),
    ),
    "upload": (
        ("duration_s", "time", "s"),
        ("rate_mbps", "rate", "Mbit/s"),
        ("skip_reason", "skipped", ""),
    ),
}
# The field whose history the sparkline draws.
SPARK_FIELD = {
    "icmp": "rtt_p50_ms",
    "dns": "resolve_ms",
    "http": "total_ms",
    "throughput": "download_mbps",
    "upload": "duration_s",
    "agent": "spool_records",
}


def series_key(r: Record) -> tuple[str, str, str]:
    if r.kind == "agent":
        return (r.kind, "-", "self")
    target = (
        r.tags.get("target")
        or r.tags.get("server")
        or f"{r.tags.get('qname', '')}@{r.tags.get('resolver', '')}"
    )
    return (r.kind, r.tags.get("uplink", ""), target)


def _num(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 10 else f"{v:.0f}" if abs(v) >= 1000 else f"{v:.1f}"
    return str(v)


def format_line(r: Record) -> str:
    """One log line per record: time, kind, where, outcome and the headline numbers."""
    kind, uplink, target = series_key(r)
    parts = [
        r.measured_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        kind,
        f"uplink={uplink}",
        f"target={target}",
        "ok" if r.error is None else f"error={r.error}",
    ]
    for fld, label, unit in SUMMARY.get(kind, ()):
        if fld in r.fields:
            parts.append(f"{label}={_num(r.fields[fld])}{unit}")
    return " ".join(parts)


def sparkline(values: Sequence[float | None]) -> str:
    """Unicode blocks scaled between the min and max of the values; gaps for failed rounds."""
    nums = [v for v in values if v is not None]
    if not nums:
        return "·" * len(values)
    lo, hi = min(nums), max(nums)
    span = hi - lo or 1.0
    return "".join(
        "·" if v is None else SPARK[min(len(SPARK) - 1, int((v - lo) / span * len(SPARK)))]
        for v in values
    )


@dataclass
class Row:
    latest: Record
    history: deque[float | None] = field(default_factory=lambda: deque(maxlen=HISTORY))
    rounds: int = 0
    failures: int = 0


class Board:
    """The latest result and recent history per (kind, uplink, target)."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str, str], Row] = {}

    def update(self, records: Sequence[Record]) -> None:
        for r in records:
            key = series_key(r)
            row = self.rows.get(key)
            if row is None:
                row = self.rows[key] = Row(r)
            row.latest = r
            row.rounds += 1
            row.failures += r.error is not None
            v = r.fields.get(SPARK_FIELD.get(r.kind, ""))
            row.history.append(float(v) if isinstance(v, int | float) else None)


class BoardView:
    """Renders a Board as a rich table with threshold colours and sparklines."""

    def __init__(
        self, thresholds: Thresholds, station: str, status_line: Callable[[], str] | None = None
    ) -> None:
        self.thresholds = thresholds
        self.station = station
        self.board = Board()
        self.status_line = status_line  # e.g. spool depth and next runs

    def cell(self, r: Record, fld: str) -> str:
        v = r.fields.get(fld)
        if v is None:
            return "[dim]–[/]"
        text = _num(v)
        grade = self.thresholds.grade(r.kind, fld, float(v)) if isinstance(v, int | float) else None
        return f"[{GRADE_STYLE[grade]}]{text}[/]" if grade else text

    def render(self) -> RenderableType:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        parts: list[RenderableType] = [Text(f"Sinyal agent · station {self.station}", style="bold")]
        now = time.time()
        for kind in sorted({k for k, _, _ in self.board.rows}):
            summary = SUMMARY.get(kind, ())
            table = Table(title=kind, title_justify="left", title_style="bold cyan")
            for col in ("uplink", "target", "result"):
                table.add_column(col, no_wrap=True)
            for _fld, label, unit in summary:
                table.add_column(
                    f"{label} ({unit})" if unit else label, justify="right", no_wrap=True
                )
            table.add_column("recent", no_wrap=True)
            table.add_column("age", justify="right", no_wrap=True)
            for (k, uplink, target), row in sorted(self.board.rows.items()):
                if k != kind:
                    continue
                r = row.latest
                result = "[green]ok[/]" if r.error is None else f"[bold red]{r.error}[/]"
                cells = [self.cell(r, fld) for fld, _label, _unit in summary]
                age = f"{now - r.measured_at.timestamp():.0f}s"
                # Names are shown as they are, never read as rich markup ("icmp[a@b]").
                table.add_row(
                    Text(uplink), Text(target), result, *cells, sparkline(list(row.history)), age
                )
            parts.append(table)
        if not self.board.rows:
            parts.append(Text("waiting for the first results…", style="dim"))
        if self.status_line is not None:
            parts.append(Text(self.status_line(), style="dim"))
        return Group(*parts)


class LiveView:
    """A rich live table, redrawn when results arrive and once a second for ages."""

    def __init__(self, view: BoardView, console: Console | None = None) -> None:
        from rich.console import Console
        from rich.live import Live

        self.view = view
        self.live = Live(view.render(), console=console or Console(), auto_refresh=False)

    def __enter__(self) -> LiveView:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.__exit__(None, None, None)

    def update(self, records: Sequence[Record]) -> None:
        self.view.board.update(records)
        self.refresh()

    def refresh(self) -> None:
        self.live.update(self.view.render(), refresh=True)


def render_table(
    records: Sequence[Record], thresholds: Thresholds, station: str, console: Console | None = None
) -> None:
    """Print the results of one pass (`sinyal-agent once`) as a rich table."""
    from rich.console import Console

    view = BoardView(thresholds, station)
    view.board.update(records)
    (console or Console()).print(view.render())
