"""The report's charts, drawn with matplotlib (Agg, no display): SVG text for the HTML page,
PNG for the PDF (WeasyPrint draws an SVG node by node, seconds for a map of thousands of
stations; a PNG it only embeds).

The station map is a scatter of the registry's lat/lon over Indonesia's extent, with
graticule lines: no map tiles, nothing fetched from the internet.
"""

from __future__ import annotations

import functools
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from collector.report.i18n import Lang
from collector.report.model import MET, NO_DATA, NOT_MET, SILENT, Report
from collector.report.scope import fixed_zone, zone_name

STATUS_COLOURS = {MET: "#2e7d32", NOT_MET: "#c62828", NO_DATA: "#9e9e9e", SILENT: "#424242"}
# Indonesia's extent (degrees) with a margin: Sabang 95.3 E, Merauke 141 E, 6 N .. 11 S.
MAP_EXTENT = (94.0, 142.0, -11.5, 6.5)


PNG_DPI = 150  # the PDF's charts: 9 inches wide, about 1,350 pixels


class Chart:
    """A drawn chart; its SVG (HTML page) and PNG (PDF) are made when first asked for, so
    the PDF's PNGs are ready before any SVG is written. The figure is out of pyplot's
    registry (nothing kept after the report)."""

    def __init__(self, key: str, title: str, fig: Figure) -> None:
        self.key = key
        self.title = title
        self._fig = fig

    @functools.cached_property
    def svg(self) -> str:
        buf = io.StringIO()
        self._fig.savefig(buf, format="svg", bbox_inches="tight")
        text = buf.getvalue()
        return text[text.index("<svg") :]

    @functools.cached_property
    def png(self) -> bytes:
        png = io.BytesIO()
        self._fig.savefig(png, format="png", dpi=PNG_DPI, bbox_inches="tight")
        return png.getvalue()


def _chart(key: str, title: str, fig: Figure) -> Chart:
    plt.close(fig)  # out of pyplot's registry; the figure still draws
    return Chart(key, title, fig)


def _timeline(report: Report, lang: Lang, value: str, ylabel: str, title: str) -> Chart:
    off = report.scope.display_zone
    tz = fixed_zone(off)
    fig, ax = plt.subplots(figsize=(9, 3.2))
    ops = sorted({r["operator"] for r in report.timeline})
    for op in ops:
        pts = [(r["time"], r[value]) for r in report.timeline if r["operator"] == op]
        pts = [(t, v) for t, v in pts if v is not None]
        if pts:
            ax.plot([t for t, _ in pts], [v for _, v in pts], marker=".", label=op or "-")
    fmt = mdates.DateFormatter("%d/%m %H:%M", tz=tz)  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_formatter(fmt)
    ax.set_xlabel(f"{lang.t('hour')} ({zone_name(off)})")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if ops:
        ax.legend(fontsize=8)
    fig.autofmt_xdate()
    return _chart(value, title, fig)


def _distribution(report: Report, lang: Lang) -> Chart:
    by: dict[str, list[float]] = {}
    for p in report.station_points:
        if p["latency_p50_ms"] is not None:
            by.setdefault(p["province"], []).append(float(p["latency_p50_ms"]))
    fig, ax = plt.subplots(figsize=(9, 3.2))
    names = sorted(by)
    if names:
        ax.boxplot([by[n] for n in names])
        ax.set_xticks(range(1, len(names) + 1), names, rotation=20, fontsize=8)
    ax.set_ylabel("ms")
    ax.grid(alpha=0.3, axis="y")
    return _chart("distribution", lang.t("chart_dist"), fig)


def _map(report: Report, lang: Lang) -> Chart:
    fig, ax = plt.subplots(figsize=(9, 3.6))
    x0, x1, y0, y1 = MAP_EXTENT
    for status, colour in STATUS_COLOURS.items():
        pts = [p for p in report.station_points if p["status"] == status]
        if pts:
            ax.scatter(
                [p["lon"] for p in pts],
                [p["lat"] for p in pts],
                s=14,
                c=colour,
                label=f"{lang.t(status)} ({len(pts)})",
                edgecolors="white",
                linewidths=0.3,
            )
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_aspect("equal")
    ax.set_xlabel(f"{lang.t('longitude')} (°)")
    ax.set_ylabel(f"{lang.t('latitude')} (°)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return _chart("map", lang.t("chart_map"), fig)


def charts(report: Report, lang: Lang) -> list[Chart]:
    return [
        _timeline(report, lang, "latency_ms", "ms", lang.t("chart_latency")),
        _timeline(report, lang, "loss_pct", "%", lang.t("chart_loss")),
        _distribution(report, lang),
        _map(report, lang),
    ]
