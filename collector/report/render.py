"""Report files: CSV (+ README), XLSX, HTML and PDF from one Jinja2 template, and a manifest.

Every file is written into a fresh directory next to `--out` and moved into place only when
all of them were made, so a failed run leaves nothing behind. `manifest.json` lists each
file with its SHA-256, the software version, the period and scope, the generation time and
the method, so a regulator can show later that a file was not altered
(`sha256sum -c` works on `SHA256SUMS` too).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape

from agent.contract import __version__
from collector.report.charts import Chart, charts
from collector.report.i18n import Lang
from collector.report.model import (
    MET,
    NO_DATA,
    NOT_MET,
    SILENT,
    TARGET_SHARE_PCT,
    Column,
    Report,
    Table,
)
from collector.report.scope import ZONES, fixed_zone, zone_name

TEMPLATES = Path(__file__).parent / "templates"
CSV_DECIMALS = 6  # enough to recompute every figure; dot decimals
XLSX_FORMATS = {"int": "#,##0", "pct": "0.0", "float": "0.0##"}
DISPLAY_COLUMNS = 12  # columns of figures per printed table part (A4 landscape at 7 pt)
# The printed report (HTML, PDF) lists at most this many stations, worst first; CSV and XLSX
# list every station. 823,220 rows do not make a document anyone reads.
PRINT_STATIONS = 100
ONE_DAY = timedelta(days=1)

METHOD: list[tuple[str, str]] = [
    (
        "Semua angka dihitung dari titik data mentah yang dikirim agen Sinyal dan disimpan "
        "kolektor di InfluxDB, dibaca dengan kueri InfluxQL yang tercantum di bawah (setiap "
        "titik periode, sekali per ukuran); count, sum, median dan percentile dihitung atas "
        "titik-titik itu dengan definisi InfluxQL. Hanya titik TPS terdaftar dalam cakupan, "
        "pada jendela waktu TPS itu sendiri, yang dihitung.",
        "Every figure is computed from the raw points the Sinyal agents sent and the "
        "collector stored in InfluxDB, read with the InfluxQL listed below (every point of "
        "the period, once per measurement); count, sum, median and percentile are computed "
        "over those points with InfluxQL's definitions. Only points of stations registered "
        "in scope, within their own station's windows, count.",
    ),
    (
        "Periode dibaca dalam waktu setempat. Tanpa --zone, tiap TPS memakai zona waktunya "
        "sendiri (tz di registri); jam pemungutan suara selalu 07.00–13.00 waktu setempat "
        "TPS. Batas awal termasuk, batas akhir tidak.",
        "The period is read in local time. Without --zone each station uses its own zone "
        "(the registry's tz); voting hours are always 07:00–13:00 in the station's local "
        "time. The start is included, the end is not.",
    ),
    (
        "Satu putaran ICMP = satu rekaman icmp (satu sasaran lewat satu uplink). Persentil P "
        "dari N nilai = nilai pada peringkat round(N x P / 100) secara menaik (InfluxQL "
        "percentile()); tidak ada nilai bila peringkat itu 0 (persentil ke-10 dari kurang dari "
        "5 nilai). Median = rata-rata dua nilai tengah bila N genap (InfluxQL median()).",
        "One ICMP round = one icmp record (one target over one uplink). A percentile P of "
        "N values is the value at rank round(N x P / 100) in ascending order (InfluxQL "
        "percentile()); there is none when that rank is 0 (a 10th percentile of fewer than 5 "
        "values). Medians average the two middle values when N is even (InfluxQL median()).",
    ),
    (
        "Angka per provinsi, kabupaten/kota dan operator: jumlah (count, sum) dijumlahkan "
        "dari angka per TPS; median dan persentil dihitung ulang atas semua putaran "
        "kelompok itu.",
        "Figures per province, regency and operator: counts and sums are added up from the "
        "per-station figures; medians and percentiles are recomputed over all the group's "
        "rounds.",
    ),
    (
        "Putaran diharapkan = jumlah seri ICMP TPS (uplink x sasaran) x durasi periode / "
        "interval (--interval, bawaan 60 s). TPS yang senyap sepanjang periode dihitung "
        "dengan jumlah seri yang paling umum di armada. Waktu menurun/kritis/senyap = "
        "jumlah putaran pada tingkat itu (atau tidak diterima) x durasi / putaran diharapkan.",
        "Rounds expected = the station's ICMP series (uplink x target) x period length / "
        "interval (--interval, default 60 s). A station silent for the whole period counts "
        "with the fleet's most common number of series. Time degraded/critical/silent = "
        "rounds at that level (or not received) x period length / rounds expected.",
    ),
    (
        "Tingkat putaran seperti status TPS di kolektor: kritis bila suatu field ICMP "
        "melewati batas 'alert' atau putaran tanpa balasan; menurun bila melewati 'warn'.",
        "Round levels as in the collector's station status: critical when an ICMP field "
        "crosses its 'alert' limit or the round got no reply; degraded when it crosses "
        "'warn'.",
    ),
]


def _plain(v: Any, col: Column) -> Any:
    """A CSV cell: ISO times, dot decimals, empty for not measured."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    if col.kind == "int":
        return str(int(v))
    if col.kind in ("pct", "float"):
        return repr(round(float(v), CSV_DECIMALS))
    return str(v)


def write_csv(report: Report, lang: Lang, out: Path) -> list[Path]:
    files: list[Path] = []
    for t in report.tables:
        p = out / f"{t.name}.csv"
        with p.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow([c.key for c in t.columns])
            for r in t.rows:
                w.writerow([_plain(r.get(c.key), c) for c in t.columns])
        files.append(p)
    p = out / "README.txt"
    p.write_text(csv_readme(report, lang), encoding="utf-8")
    files.append(p)
    return files


def csv_readme(report: Report, lang: Lang) -> str:
    zone = lang.t("own_zone") if not report.scope.request.zone else report.scope.request.zone
    lines = [
        lang.t("readme_title"),
        "=" * len(lang.t("readme_title")),
        "",
        f"{lang.t('period')}: {_period(report, lang)}",
        f"{lang.t('times_in')}: {zone}",
        "",
        lang.pick(
            (
                "UTF-8, satu berkas per tabel, baris judul; desimal dengan titik; waktu ISO 8601 "
                "dengan offset (+07:00 WIB, +08:00 WITA, +09:00 WIT); sel kosong = tidak diukur.",
                "UTF-8, one file per table, a header row; dot decimals; ISO 8601 times with "
                "offset (+07:00 WIB, +08:00 WITA, +09:00 WIT); an empty cell = not measured.",
            )
        ),
        "",
    ]
    for t in report.tables:
        lines += [f"{t.name}.csv ({lang.t(t.name)})", "-" * (len(t.name) + 4)]
        for c in t.columns:
            unit = f" [{c.unit}]" if c.unit else ""
            lines.append(f"  {c.key}{unit}: {lang.pick((c.id, c.en))}")
        lines.append("")
    lines.append(lang.t("target_share", share=lang.number(TARGET_SHARE_PCT, 0)))
    return "\n".join(lines) + "\n"


def write_xlsx(report: Report, lang: Lang, path: Path) -> None:
    """One sheet per table (XlsxWriter, rows streamed: constant memory), a bold frozen
    header row, typed cells with number formats, and a `method` sheet. Text is always
    written as text, never read as a formula."""
    import xlsxwriter

    wb = xlsxwriter.Workbook(str(path), {"constant_memory": True})
    bold = wb.add_format({"bold": True})
    formats = {kind: wb.add_format({"num_format": f}) for kind, f in XLSX_FORMATS.items()}
    for t in report.tables:
        ws = wb.add_worksheet(t.name[:31])
        ws.freeze_panes(1, 0)
        for i, c in enumerate(t.columns):
            ws.set_column(i, i, max(10, min(40, len(c.key) + 2)))
            ws.write_string(0, i, c.key, bold)
        cols = [(i, c, formats.get(c.kind)) for i, c in enumerate(t.columns)]
        for n, r in enumerate(t.rows, start=1):
            for i, c, fmt in cols:
                v = _typed(r.get(c.key), c)
                if v is None:
                    ws.write_blank(n, i, None, fmt)
                elif isinstance(v, str):
                    ws.write_string(n, i, v, fmt)
                else:
                    ws.write_number(n, i, v, fmt)
    ws = wb.add_worksheet("method")
    texts = [lang.pick((id_, en)) for id_, en in METHOD]
    texts.append(lang.t("target_share", share=lang.number(TARGET_SHARE_PCT, 0)))
    for n, text in enumerate(texts):
        ws.write_string(n, 0, text)
    wb.close()


def _typed(v: Any, col: Column) -> Any:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return None
    if col.kind == "int":
        return int(v)
    if col.kind in ("pct", "float"):
        return float(v)
    return str(v)


def _display(v: Any, col: Column, lang: Lang) -> str:
    if col.kind == "verdict":
        return lang.t(str(v)) if v else "–"
    if col.kind == "int":
        return lang.number(None if v is None else int(v))
    if col.kind in ("pct", "float"):
        return lang.number(None if v is None else float(v), col.decimals)
    return "" if v is None else str(v)


def _cell_class(v: Any, col: Column) -> str:
    if col.kind == "verdict":
        return str(v or "")
    return "n" if col.kind in ("int", "pct", "float") else ""


def _badness(r: dict[str, Any]) -> tuple[int, float, float]:
    rank = {SILENT: 0, NOT_MET: 1, NO_DATA: 2, MET: 3}.get(str(r.get("verdict")), 4)
    return (rank, -(r.get("critical_h") or 0.0), r.get("completeness_pct") or 0.0)


def printed_rows(t: Table) -> list[dict[str, Any]]:
    """The rows the printed report shows: every row, except for a long station table, which
    shows its worst PRINT_STATIONS rows (silent, then not met, most critical time first)."""
    if t.name != "stations" or len(t.rows) <= PRINT_STATIONS:
        return t.rows
    return sorted(t.rows, key=_badness)[:PRINT_STATIONS]


def _parts(t: Table) -> list[tuple[Column, ...]]:
    """The table split into parts narrow enough for the page, key columns repeated."""
    keys = tuple(c for c in t.columns if c.kind == "text" and c.key in _KEYS.get(t.name, ()))
    rest = [c for c in t.columns if c not in keys]
    if len(t.columns) <= DISPLAY_COLUMNS + len(keys):
        return [t.columns]
    return [
        keys + tuple(rest[i : i + DISPLAY_COLUMNS]) for i in range(0, len(rest), DISPLAY_COLUMNS)
    ]


_KEYS = {
    "operators": ("operator",),
    "provinces": ("operator", "province"),
    "regencies": ("operator", "regency"),
    "stations": ("station", "operator"),
}


def _period(report: Report, lang: Lang) -> str:
    s = report.scope
    zone = s.request.zone or lang.t("own_zone")
    a, b = s.period_start_local, s.period_end_local
    # A bare --to date is the whole day: print that day, not the next midnight.
    end = f"{lang.date(b)} {b:%H:%M}" if (b.hour, b.minute) != (0, 0) else lang.date(b - ONE_DAY)
    hours = lang.t("voting_hours") if s.request.voting_hours else lang.t("whole_days")
    return f"{lang.date(a)} {a:%H:%M} – {end} ({zone}; {hours})"


def _src(c: Chart, for_pdf: bool) -> str:
    if for_pdf:
        return "data:image/png;base64," + base64.b64encode(c.png).decode()
    return "data:image/svg+xml;base64," + base64.b64encode(c.svg.encode()).decode()


def context(
    report: Report,
    lang: Lang,
    chart_list: Sequence[Chart],
    links: Sequence[tuple[str, str]] = (),
    for_pdf: bool = False,
) -> dict[str, Any]:
    s = report.scope
    req = s.request
    scope_parts = [
        f"{lang.t(k)}: {getattr(req, k)}"
        for k in ("province", "regency", "operator", "station")
        if getattr(req, k)
    ]
    tables = []
    for t in report.tables:
        parts = []
        shown = printed_rows(t)
        for cols in _parts(t):
            rows = [[_display(r.get(c.key), c, lang) for c in cols] for r in shown]
            if t.name == "stations":
                wi = [i for i, c in enumerate(cols) if c.key == "worst_hours"]
                for i in wi:
                    for row, r in zip(rows, shown, strict=True):
                        off = ZONES.get(r["zone"], 7)
                        row[i] = "; ".join(
                            f"{lang.datetime(tm, fixed_zone(off), zone_name(off))} ({n})"
                            for tm, n in r.get("_worst", [])
                        )
            nkeys = sum(1 for c in cols if c.key in _KEYS.get(t.name, ()))
            # Each cell with its class: verdicts are coloured, numbers right-aligned.
            cells = [
                [(v, _cell_class(r.get(c.key), c)) for v, c in zip(row, cols, strict=True)]
                for row, r in zip(rows, shown, strict=True)
            ]
            parts.append({"columns": [c.key for c in cols], "rows": cells, "nkeys": nkeys})
        note = ""
        if len(shown) < len(t.rows):
            note = lang.t(
                "stations_cut", shown=lang.number(len(shown)), total=lang.number(len(t.rows))
            )
        tables.append({"name": t.name, "title": lang.t(t.name), "parts": parts, "note": note})
    overall = [
        (r["operator"], lang.t(r["verdict"]), r["verdict"], r["not_met"])
        for r in (report.table("operators") or Table("", (), [])).rows
    ]
    legend = [(c.key, c.unit, lang.pick((c.id, c.en))) for t in report.tables for c in t.columns]
    seen: set[str] = set()
    legend = [x for x in legend if not (x[0] in seen or seen.add(x[0]))]  # type: ignore[func-returns-value]
    return {
        "lang": lang.code,
        "t": lang.t,
        "title": lang.t("title"),
        "period": _period(report, lang),
        "scope": ", ".join(scope_parts) or lang.t("national"),
        "generated": lang.datetime(s.generated_at, UTC, "UTC"),
        "version": __version__,
        "clipped": s.clipped,
        "overall": overall,
        "tables": tables,
        "charts": [{"title": c.title, "src": _src(c, for_pdf)} for c in chart_list],
        "method": [lang.pick(m) for m in METHOD]
        + [lang.t("target_share", share=lang.number(TARGET_SHARE_PCT, 0))],
        "legend": legend,
        "queries": [q if len(q) <= 1500 else q[:1500] + " …" for q in report.queries[:3]],
        "queries_total": len(report.queries),
        "links": list(links),
        "zones": sorted({g.zone for g in s.groups}),
    }


def environment() -> Environment:
    return Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_html(report: Report, lang: Lang, chart_list: Sequence[Chart], for_pdf: bool) -> str:
    ctx = context(report, lang, chart_list, for_pdf=for_pdf)
    return environment().get_template("report.html.j2").render(**ctx, for_pdf=for_pdf)


def render_page(
    report: Report | None,
    lang: Lang,
    form: dict[str, Any],
    links: Sequence[tuple[str, str]] = (),
) -> str:
    """The collector's /reports page: the form, and the report's preview when there is one."""
    ctx: dict[str, Any] = {"lang": lang.code, "t": lang.t, "title": lang.t("title")}
    if report is not None:
        ctx = context(report, lang, charts(report, lang), links)
    return (
        environment()
        .get_template("page.html.j2")
        .render(**ctx, **form, form_title=lang.t("title"), for_pdf=False)
    )


def write_pdf(html: str, path: Path) -> None:
    from weasyprint import HTML

    HTML(string=html, base_url=str(TEMPLATES)).write_pdf(path)


# WeasyPrint in a child process: the HTML on stdin, the PDF's path and the base URL as
# arguments. Imports nothing of Sinyal, so it runs whatever put Sinyal on sys.path.
_PDF_CHILD = """import sys
from weasyprint import HTML
html = sys.stdin.buffer.read().decode("utf-8")
HTML(string=html, base_url=sys.argv[1]).write_pdf(sys.argv[2])
"""


class PdfProcess:
    """The PDF laid out in another process while this one writes the other formats
    (WeasyPrint's layout is the largest fixed cost of a report). Started
    first, so its imports run while the charts are drawn; `send` gives it the HTML,
    `wait` waits for the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-c", _PDF_CHILD, str(TEMPLATES), str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def send(self, html: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(html.encode("utf-8"))
            self.proc.stdin.close()
        except BrokenPipeError:
            pass  # the child failed already: wait() says why

    def wait(self) -> None:
        assert self.proc.stderr is not None
        err = self.proc.stderr.read()
        if self.proc.wait() != 0 or not self.path.exists():
            lines = err.decode("utf-8", "replace").strip().splitlines()
            raise RuntimeError(
                f"{self.path.name}: the PDF renderer failed: "
                + (lines[-1] if lines else f"exit status {self.proc.returncode}")
            )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stderr):
            if f is not None:
                f.close()


def _sha256(p: Path) -> str:
    h = hashlib.sha256()
    with p.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest(report: Report, lang: Lang, files: Sequence[Path]) -> dict[str, Any]:
    s = report.scope
    req = s.request
    return {
        "software": "sinyal",
        "version": __version__,
        "generated_at": s.generated_at.isoformat(),
        "language": lang.code,
        "period": {
            "from": req.start,
            "to": req.end,
            "zone": req.zone or "station",
            "voting_hours": req.voting_hours,
            "clipped_at_generation": s.clipped,
            "windows_utc": {
                g.zone: [[w.start.isoformat(), w.end.isoformat()] for w in g.windows]
                for g in s.groups
            },
        },
        "scope": {k: getattr(req, k) for k in ("province", "regency", "operator", "station")}
        | {"stations_registered": len(s.stations), "interval_s": req.interval_s},
        "method": [lang.pick(m) for m in METHOD],
        "target_share_pct": TARGET_SHARE_PCT,
        "thresholds": [
            {"metric": t.name, "warn": t.warn, "alert": t.alert, "source": t.source}
            for t in report.thresholds.metrics
        ],
        "queries": report.queries,
        "files": [{"name": p.name, "bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files],
    }


def write_all(
    report: Report,
    lang: Lang,
    formats: Sequence[str],
    out: Path,
    step: Callable[[str], None] | None = None,
) -> list[Path]:
    """Write the report in `formats` into `out` (created when missing). All or nothing:
    files are made in a temporary directory and moved into `out` at the end."""
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    clash = [n for n in _names(report, formats) if (out / n).exists()]
    if clash:
        raise FileExistsError(
            f"{out}: already holds {', '.join(clash)}; expected an empty or new directory"
        )
    tmp = Path(tempfile.mkdtemp(prefix=".sinyal-report-", dir=out))
    # With other formats to write, the PDF is laid out beside them in another process.
    pdf = PdfProcess(tmp / "report.pdf") if "pdf" in formats and len(set(formats)) > 1 else None
    try:
        files: list[Path] = []
        if "html" in formats or "pdf" in formats:
            cl = charts(report, lang)
            if pdf is not None:
                pdf.send(render_html(report, lang, cl, True))  # draws the PNGs
            _step(step, "charts")
            if "html" in formats:
                (tmp / "report.html").write_text(render_html(report, lang, cl, False), "utf-8")
                _step(step, "html")
        if "csv" in formats:
            files += write_csv(report, lang, tmp)
            _step(step, "csv")
        if "xlsx" in formats:
            write_xlsx(report, lang, tmp / "report.xlsx")
            files.append(tmp / "report.xlsx")
            _step(step, "xlsx")
        if "html" in formats:
            files.append(tmp / "report.html")
        if "pdf" in formats:
            if pdf is not None:
                pdf.wait()
            else:
                write_pdf(render_html(report, lang, cl, True), tmp / "report.pdf")
            files.append(tmp / "report.pdf")
            _step(step, "pdf")
        man = manifest(report, lang, files)
        (tmp / "manifest.json").write_text(json.dumps(man, indent=2, ensure_ascii=False) + "\n")
        sums = "".join(f"{f['sha256']}  {f['name']}\n" for f in man["files"])
        (tmp / "SHA256SUMS").write_text(sums)
        final = []
        for p in [*files, tmp / "manifest.json", tmp / "SHA256SUMS"]:
            dest = out / p.name
            os.replace(p, dest)
            final.append(dest)
        return final
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        if pdf is not None:
            pdf.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _names(report: Report, formats: Sequence[str]) -> list[str]:
    names = ["manifest.json", "SHA256SUMS"]
    if "csv" in formats:
        names += [f"{t.name}.csv" for t in report.tables] + ["README.txt"]
    names += [f"report.{f}" for f in ("xlsx", "html", "pdf") if f in formats]
    return names


def _step(step: Callable[[str], None] | None, name: str) -> None:
    if step is not None:
        step(name)


__all__ = ["context", "csv_readme", "manifest", "render_html", "write_all"]
