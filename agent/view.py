"""What a technician sees: a rich live view on a terminal, single-line logs otherwise."""

from __future__ import annotations

import io
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.contract.record import Record, parse_time
from agent.contract.thresholds import Grade, Thresholds
from agent.uploadstate import NEVER, OK, Health, ago, format_local

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.text import Text

SPARK = "▁▂▃▄▅▆▇█"
BARS = "_bars"  # not a field: the signal row's bars, from the graded radio values
_BAR_GLYPHS = "▂▄▆█"
_BARS_BY_GRADE = {Grade.GOOD: 4, Grade.FAIR: 3, Grade.WARN: 2, Grade.ALERT: 1}
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
    "signal": (
        (BARS, "bars", ""),
        ("rsrp_dbm", "rsrp", "dBm"),
        ("rsrq_db", "rsrq", "dB"),
        ("sinr_db", "sinr", "dB"),
        ("rssi_dbm", "rssi", "dBm"),
        ("rscp_dbm", "rscp", "dBm"),
        ("ecio_db", "ec/io", "dB"),
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
    "signal": "rsrp_dbm",
}


def series_key(r: Record) -> tuple[str, str, str]:
    if r.kind == "agent":
        return (r.kind, "-", "self")
    if r.kind == "signal":  # one row per uplink's modem, whatever technology it is on
        return (r.kind, r.tags.get("uplink", ""), "modem")
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


def format_line(r: Record, tz: str | None = None) -> str:
    """One log line per record: time (local to the station with its zone name when tz is
    given, else UTC), kind, where, outcome and the headline numbers."""
    kind, uplink, target = series_key(r)
    parts = [
        format_local(r.measured_at, tz) if tz else r.measured_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        kind,
        f"uplink={uplink}",
        f"target={target}",
        "ok" if r.error is None else f"error={r.error}",
    ]
    if kind == "signal":
        parts.append(f"tech={r.tags.get('access_tech')} network={r.tags.get('operator')}")
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


def signal_bars(r: Record, thresholds: Thresholds) -> tuple[int, Grade | None]:
    """0..4 bars: the worst grade of the graded radio values (RSRP, RSRQ, SINR), else the
    modem's own quality (3G and 2G have no thresholds); 0 when nothing is known."""
    worst: Grade | None = None
    order = list(_BARS_BY_GRADE)
    for name, v in r.fields.items():
        if isinstance(v, int | float) and not isinstance(v, bool):
            g = thresholds.grade("signal", name, float(v))
            if g is not None and (worst is None or order.index(g) > order.index(worst)):
                worst = g
    if worst is not None:
        return _BARS_BY_GRADE[worst], worst
    q = r.fields.get("quality_pct")
    if isinstance(q, int | float) and q > 0:
        return min(4, max(1, round(float(q) / 25))), None
    return 0, None


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


@dataclass(frozen=True)
class UploadView:
    """What the upload status line shows: the health and the backlog behind it."""

    health: Health
    backlog: int
    oldest_unsent_at: str | None  # UTC ISO time of the oldest record waiting


def upload_text(u: UploadView | None, tz: str, now: float | None = None) -> Text:
    """The upload status line: ok or failing and why in words, since when, the last
    successful upload, and the backlog with its oldest record (local times, zone named)."""
    from rich.text import Text

    now = time.time() if now is None else now
    if u is None:
        return Text("upload: no collector configured, results stay in the spool", style="yellow")
    h = u.health
    last = format_local(h.last_ok_at, tz) if h.last_ok_at else "never"
    backlog = f"backlog {u.backlog}"
    if u.oldest_unsent_at and u.backlog:
        oldest = parse_time(u.oldest_unsent_at).timestamp()
        backlog += f", oldest {format_local(u.oldest_unsent_at, tz)} ({ago(now - oldest)} ago)"
    if h.kind == OK:
        return Text(f"upload ok · last {last} · {backlog}", style="bold green")
    if h.kind == NEVER:
        return Text(f"upload: not yet tried · {backlog}", style="yellow")
    since = format_local(h.since, tz) if h.since else "?"
    return Text(
        f"UPLOAD FAILING: {h.reason} · since {since} · last ok {last} · {backlog}",
        style="bold white on red",
    )


# A table costs its title and header lines on top of its rows (box=None: no borders).
_TABLE_OVERHEAD = 2
_NARROW = 100  # below this many columns: no sparkline and only the first summary fields


class BoardView:
    """Renders a Board as rich tables with threshold colours and sparklines, fitted to the
    terminal: the header and the upload status line always come first (they cannot scroll
    away), then one table per kind; on a narrow terminal fewer columns, and a kind whose
    rows do not fit becomes a one-line summary of its targets."""

    def __init__(
        self,
        thresholds: Thresholds,
        station: str,
        status_line: Callable[[], str] | None = None,
        tz: str = "UTC",
        upload: Callable[[], UploadView | None] | None = None,
    ) -> None:
        self.thresholds = thresholds
        self.station = station
        self.board = Board()
        self.status_line = status_line  # e.g. spool depth and next runs
        self.tz = tz
        self.upload = upload  # None: no upload line (`once`)

    def cell(self, r: Record, fld: str) -> str:
        if fld == BARS:
            n, grade = signal_bars(r, self.thresholds)
            text = _BAR_GLYPHS[:n] + "·" * (4 - n)
            return f"[{GRADE_STYLE[grade]}]{text}[/]" if grade else text
        v = r.fields.get(fld)
        if v is None:
            return "[dim]–[/]"
        text = _num(v)
        grade = self.thresholds.grade(r.kind, fld, float(v)) if isinstance(v, int | float) else None
        return f"[{GRADE_STYLE[grade]}]{text}[/]" if grade else text

    def render(self, width: int = 120, height: int | None = None) -> RenderableType:
        from rich.console import Group
        from rich.text import Text

        now = time.time()
        head = Text(
            f"Sinyal · station {self.station} · {format_local(now, self.tz)}",
            style="bold",
            overflow="ellipsis",
            no_wrap=True,
        )
        top: list[RenderableType] = [head]
        if self.upload is not None:
            top.append(upload_text(self.upload(), self.tz, now))
        bottom: list[RenderableType] = []
        if self.status_line is not None:
            bottom.append(Text(self.status_line(), style="dim"))
        kinds = sorted({k for k, _, _ in self.board.rows})
        if not kinds:
            return Group(*top, Text("waiting for the first results…", style="dim"), *bottom)
        rows_of = {k: [(key, row) for key, row in sorted(self.board.rows.items()) if key[0] == k]
                   for k in kinds}  # fmt: skip
        budget = None
        if height is not None:
            used = sum(_lines(x, width) for x in (*top, *bottom))
            budget = max(0, height - used)
        # Summarise the largest kinds first until the rest fits as tables; a summarised kind
        # then shows as many of its rows as the lines left allow, failures first.
        shown: dict[str, int] = {k: len(rows_of[k]) for k in kinds}  # rows shown per kind
        if budget is not None:
            cost = {k: _TABLE_OVERHEAD + len(rows_of[k]) for k in kinds}
            summarised: list[str] = []
            for k in sorted(kinds, key=lambda k: -cost[k]):
                if sum(1 if x in summarised else cost[x] for x in kinds) <= budget:
                    break
                summarised.append(k)
                shown[k] = 0
            left = budget - sum(1 if x in summarised else cost[x] for x in kinds)
            for k in summarised:
                rows_fit = min(len(rows_of[k]) - 1, left - _TABLE_OVERHEAD)
                if rows_fit >= 1:
                    shown[k] = rows_fit
                    left -= _TABLE_OVERHEAD + rows_fit
        parts = list(top)
        for kind in kinds:
            rows = rows_of[kind]
            n = shown[kind]
            if n == len(rows):
                parts.append(self.table(kind, rows, width, now))
                continue
            worst = sorted(rows, key=lambda kr: (kr[1].latest.error is None, kr[0]))
            if n:
                parts.append(self.table(kind, worst[:n], width, now))
            parts.append(self.summary(kind, [row for _, row in worst[n:]], more=bool(n)))
        return Group(*parts, *bottom)

    def summary(self, kind: str, rows: Sequence[Row], more: bool = False) -> Text:
        """One line for rows that do not fit: how many, how many ok, which fail."""
        from rich.text import Text

        bad = [row.latest for row in rows if row.latest.error is not None]
        what = f"… {len(rows)} more {kind} targets" if more else f"{kind}: {len(rows)} targets"
        text = Text(f"{what}, {len(rows) - len(bad)} ok", style="bold cyan")
        if bad:
            names = ", ".join(series_key(r)[2] for r in bad[:3]) + ("…" if len(bad) > 3 else "")
            text.append(f", {len(bad)} failing: {names}", style="bold red")
        text.overflow, text.no_wrap = "ellipsis", True
        return text

    def table(
        self,
        kind: str,
        rows: Sequence[tuple[tuple[str, str, str], Row]],
        width: int,
        now: float,
    ) -> RenderableType:
        from rich.table import Table
        from rich.text import Text

        narrow = width < _NARROW
        summary = SUMMARY.get(kind, ())
        if narrow:
            summary = summary[:2]
        one_uplink = len({uplink for (_, uplink, _), _ in rows}) <= 1
        table = Table(title=kind, title_justify="left", title_style="bold cyan", box=None)
        cols = ["target", "result"] if narrow and one_uplink else ["uplink", "target", "result"]
        for col in cols:
            table.add_column(col, no_wrap=True, overflow="ellipsis", max_width=24)
        for _fld, label, unit in summary:
            table.add_column(f"{label} ({unit})" if unit else label, justify="right", no_wrap=True)
        if not narrow:
            table.add_column("recent", no_wrap=True)
        table.add_column("age", justify="right", no_wrap=True)
        for (_k, uplink, target), row in rows:
            r = row.latest
            result = "[green]ok[/]" if r.error is None else f"[bold red]{r.error}[/]"
            # Names come from agents and the config: shown as they are, never read as rich
            # markup (a target "icmp[a@b]" or "[/]" is text).
            name = Text(target)
            if kind == "signal":  # the technology and the network in the target column
                tech = r.tags.get("access_tech", "unknown")
                fell_back = tech in ("umts", "gsm")  # fallen back from 4G
                name = Text(tech, style="yellow" if fell_back else "")
                name.append(f" {r.tags.get('operator', '')}".rstrip())
            cells = [self.cell(r, fld) for fld, _label, _unit in summary]
            age = ago(now - r.measured_at.timestamp())
            first: list[RenderableType] = (
                [name, result] if narrow and one_uplink else [Text(uplink), name, result]
            )
            spark = [] if narrow else [sparkline(list(row.history))]
            table.add_row(*first, *cells, *spark, age)
        return table


def _lines(renderable: RenderableType, width: int) -> int:
    from rich.console import Console

    console = Console(width=width, file=io.StringIO(), color_system=None)
    return len(console.render_lines(renderable, console.options.update(width=width), pad=False))


class LiveView:
    """A rich live table, redrawn when results arrive and once a second for ages."""

    def __init__(self, view: BoardView, console: Console | None = None) -> None:
        from rich.console import Console
        from rich.live import Live

        self.view = view
        self.console = console or Console()
        # crop: what does not fit is cut at the bottom; the header and upload line are first.
        self.live = Live(
            self._render(), console=self.console, auto_refresh=False, vertical_overflow="crop"
        )

    def _render(self) -> RenderableType:
        return self.view.render(self.console.width, self.console.height)

    def __enter__(self) -> LiveView:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.__exit__(None, None, None)

    def update(self, records: Sequence[Record]) -> None:
        self.view.board.update(records)
        self.refresh()

    def refresh(self) -> None:
        self.live.update(self._render(), refresh=True)


def render_table(
    records: Sequence[Record],
    thresholds: Thresholds,
    station: str,
    console: Console | None = None,
    tz: str = "UTC",
) -> None:
    """Print the results of one pass (`sinyal-agent once`) as a rich table."""
    from rich.console import Console

    view = BoardView(thresholds, station, tz=tz)
    view.board.update(records)
    out = console or Console()
    out.print(view.render(out.width))
