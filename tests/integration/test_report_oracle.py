"""The report against an independent oracle.

A known fleet (50 stations, 3 provinces in WIB/WITA/WIT, 3 operators, two days of rounds with
known degradations and silences) goes through the real collector into the real InfluxDB. The
test reads the raw points back over plain HTTP (never through collector code), computes every
figure itself, and compares every figure of every table in CSV, in XLSX (read back with
openpyxl) and in the PDF's text (pdftotext) to it. Time zones: voting hours at 06:59 / 07:00
and 12:59 / 13:00 WITA, a period across midnight in WIT, a Papua station on WITA.
"""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, time, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from agent.contract.thresholds import Thresholds
from agent.contract.thresholds import load as load_thresholds
from tests.conftest import ROOT, require_tool
from tests.harness.dbs import InfluxServer
from tests.harness.report_stack import INTERVAL_S, Seeded, seeded

pytestmark = pytest.mark.slow
TARGET = 95.0
KINDS = ("icmp", "dns", "http", "throughput", "upload")


@pytest.fixture(scope="module")
def fleet_db(influxdb: InfluxServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    name = "report_oracle"
    influxdb.create_database(name)
    with seeded(influxdb, name, tmp_path_factory.mktemp("report")) as s:
        yield s


@pytest.fixture(scope="module")
def raw(fleet_db: Seeded) -> dict[str, list[dict[str, Any]]]:
    """Every stored point of every kind, read back over plain HTTP."""
    out = {}
    for k in KINDS:
        out[k] = fleet_db.influx.query(f'SELECT * FROM "{k}"', fleet_db.database)
    return out


def run_report(s: Seeded, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "collector.cli", "-c", str(s.config_path), "report",
         "--interval", str(INTERVAL_S), "--out", str(out), *args],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip


# --- the oracle ----------------------------------------------------------------------------


def nearest_rank(values: list[float], p: float) -> float | None:
    """The method docs/reports.md states: the value at rank round(N x P / 100) (half up), no
    value when that rank is 0 (a 10th percentile of fewer than 5 values)."""
    v = sorted(values)
    i = math.floor(len(v) * p / 100.0 + 0.5) - 1
    return v[min(i, len(v) - 1)] if i >= 0 else None


def median(values: list[float]) -> float | None:
    if not values:
        return None
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def pct(a: float, b: float) -> float | None:
    return 100.0 * a / b if b else None


Window = Callable[[dict[str, Any], str], bool]  # (point, station tz) -> in the period


def window(dates: tuple[str, str] | None, voting: bool, zone: str | None = None,
           span: tuple[datetime, datetime] | None = None) -> Window:  # fmt: skip
    """In the period: local dates [d0, d1] in each station's zone (or `zone`), or a local span
    read in `zone`; with `voting`, only 07:00 <= t < 13:00 in the station's own zone."""

    def ok(p: dict[str, Any], tz: str) -> bool:
        t = datetime.fromtimestamp(p["time"] / 1e9, UTC)
        read = ZoneInfo(zone or tz)
        if span is not None:
            a, b = (x.replace(tzinfo=read) for x in span)
        else:
            assert dates is not None
            a = datetime.combine(datetime.fromisoformat(dates[0]).date(), time(), read)
            b = datetime.combine(
                datetime.fromisoformat(dates[1]).date() + timedelta(days=1), time(), read
            )
        if not a <= t < b:
            return False
        if voting:
            local = t.astimezone(ZoneInfo(tz)).time()
            return time(7) <= local < time(13)
        return True

    return ok


def _vals(
    points: list[dict[str, Any]], f: str, cond: Callable[[Any], bool] | None = None
) -> list[float]:
    return [p[f] for p in points if p.get(f) is not None and (cond is None or cond(p))]


def figures(pts: dict[str, list[dict[str, Any]]], th: Thresholds) -> dict[str, Any]:
    icmp = pts["icmp"]
    loss = _vals(icmp, "loss_pct")
    up = pts["upload"]
    attempts = len(_vals(up, "ok")) - sum(_vals(up, "skipped"))
    out: dict[str, Any] = {
        "rounds": len(loss),
        "icmp_availability_pct": pct(sum(1 for v in loss if v < 100), len(loss)),
        "dns_success_pct": pct(sum(_vals(pts["dns"], "ok")), len(_vals(pts["dns"], "ok"))),
        "http_success_pct": pct(sum(_vals(pts["http"], "ok")), len(_vals(pts["http"], "ok"))),
        "latency_p50_ms": nearest_rank(_vals(icmp, "rtt_p50_ms"), 50),
        "latency_p95_ms": nearest_rank(_vals(icmp, "rtt_p50_ms"), 95),
        "jitter_median_ms": median(_vals(icmp, "jitter_ms")),
        "loss_mean_pct": sum(loss) / len(loss) if loss else None,
        "download_median_mbps": median(_vals(pts["throughput"], "download_mbps")),
        "download_p10_mbps": nearest_rank(_vals(pts["throughput"], "download_mbps"), 10),
        "upload_median_mbps": median(_vals(pts["throughput"], "upload_mbps")),
        "upload_p10_mbps": nearest_rank(_vals(pts["throughput"], "upload_mbps"), 10),
        "photo_success_pct": pct(sum(_vals(up, "ok")), attempts),
        "photo_median_s": median(_vals(up, "duration_s", lambda p: p.get("ok") == 1)),
        "rsrp_median_dbm": None,
        "sinr_median_db": None,
    }
    failed = []
    graded = 0
    for t in th.metrics:
        vals = [v for f in t.fields for v in _vals(pts.get(f.split(".")[0], []), f.split(".")[1])]
        share = pct(sum(1 for v in vals if not t.breaches(v)), len(vals))
        out[f"meets_{t.name}_pct"] = share
        if share is not None:
            graded += 1
            if share < TARGET:
                failed.append(t.name)
    out["verdict"] = "no_data" if not graded else "not_met" if failed else "met"
    out["not_met"] = ", ".join(failed)
    return out


def oracle(
    raw: dict[str, list[dict[str, Any]]], s: Seeded, inside: Window, seconds: Callable[[str], float]
) -> dict[str, dict[tuple[str, ...], dict[str, Any]]]:
    """Expected rows of operators, provinces, stations and coverage tables."""
    th = load_thresholds(ROOT / "config" / "thresholds.yaml")
    tz = {st.id: st.tz for st in s.stations}
    by: dict[str, dict[tuple[str, ...], dict[str, list[dict[str, Any]]]]] = {
        "operators": defaultdict(lambda: defaultdict(list)),
        "provinces": defaultdict(lambda: defaultdict(list)),
        "stations": defaultdict(lambda: defaultdict(list)),
    }
    for kind, points in raw.items():
        for p in points:
            if not inside(p, tz[p["station"]]):
                continue
            by["operators"][(p["operator"],)][kind].append(p)
            by["provinces"][(p["operator"], p["province"])][kind].append(p)
            by["stations"][(p["station"], p["operator"])][kind].append(p)
    out: dict[str, dict[tuple[str, ...], dict[str, Any]]] = {}
    for table, groups in by.items():
        out[table] = {}
        for key, pts in groups.items():
            full = {k: pts.get(k, []) for k in KINDS}
            row = figures(full, th)
            row["stations"] = len({p["station"] for p in full["icmp"]})
            out[table][key] = row
    # Expected rounds: the station's icmp series x period seconds / interval.
    series: dict[tuple[str, str], set[tuple[str, str]]] = defaultdict(set)
    for p in raw["icmp"]:
        if inside(p, tz[p["station"]]):
            series[(p["station"], p["operator"])].add((p["uplink"], p["target"]))
    for (sid, op), row in out["stations"].items():
        exp = round(len(series[(sid, op)]) * seconds(sid) / INTERVAL_S)
        row["rounds_expected"] = exp
        row["completeness_pct"] = pct(row["rounds"], exp)
    reporting = {sid for sid, _ in out["stations"]}
    for st in s.stations:
        if st.id not in reporting:
            out["stations"][(st.id, st.operator)] = {
                "rounds": 0,
                "verdict": "silent",
                "rounds_expected": round(seconds(st.id) / INTERVAL_S),
                "completeness_pct": 0.0,
            }
    cov: dict[tuple[str, ...], dict[str, Any]] = {}
    for st in s.stations:
        rows = [r for (sid, _), r in out["stations"].items() if sid == st.id]
        for key in ((st.province,), ("*",)):
            d = cov.setdefault(key, {"registered": 0, "reporting": 0, "silent_whole_period": 0,
                                     "rounds_received": 0, "rounds_expected": 0})  # fmt: skip
            d["registered"] += 1
            got = sum(r["rounds"] for r in rows)
            d["reporting" if got else "silent_whole_period"] += 1
            d["rounds_received"] += got
            d["rounds_expected"] += sum(r["rounds_expected"] for r in rows)
    for d in cov.values():
        d["completeness_pct"] = pct(d["rounds_received"], d["rounds_expected"])
    out["coverage"] = cov
    return out


INT_COLUMNS = {"stations", "rounds", "rounds_expected", "registered", "reporting",
               "silent_whole_period", "rounds_received"}  # fmt: skip
KEYS = {
    "operators": ("operator",),
    "provinces": ("operator", "province"),
    "stations": ("station", "operator"),
    "coverage": ("province",),
}


def same(got: Any, want: Any) -> bool:
    if want is None:
        return got in (None, "")
    if isinstance(want, str):
        return str(got) == want
    if got in (None, ""):
        return False
    return math.isclose(float(got), float(want), rel_tol=1e-6, abs_tol=1e-5)


def compare(table: str, rows: list[dict[str, Any]], want: dict[tuple[str, ...], dict[str, Any]],
            where: str) -> int:  # fmt: skip
    got = {tuple(str(r[k]) for k in KEYS[table]): r for r in rows}
    assert set(got) == set(want), f"{where} {table}: rows {sorted(set(got) ^ set(want))}"
    n = 0
    problems = []
    for key, w in want.items():
        for col, v in w.items():
            if col not in got[key]:
                continue
            n += 1
            if not same(got[key][col], v):
                problems.append(f"{key} {col}: got {got[key][col]!r}, expected {v!r}")
    assert not problems, f"{where} {table}: {len(problems)} figures differ:\n" + "\n".join(
        problems[:20]
    )
    return n


def read_csv(path: Path) -> list[dict[str, Any]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def read_xlsx(path: Path, sheet: str) -> list[dict[str, Any]]:
    from openpyxl import load_workbook

    ws = load_workbook(path, read_only=True)[sheet]
    rows = list(ws.iter_rows(values_only=True))
    header = [str(h) for h in rows[0]]
    return [dict(zip(header, r, strict=True)) for r in rows[1:]]


def id_number(v: float, decimals: int = 1) -> str:
    """Indonesian number format, written independently of Babel: 1.234,5."""
    text = f"{v:,.{decimals}f}"
    return text.replace(",", "_").replace(".", ",").replace("_", ".")


def id_numbers(v: float | int) -> set[str]:
    """The accepted printings of v: binary-exact and decimal half-even rounding can differ
    on a last digit 5 (2.675 is 2.67499... in binary)."""
    if isinstance(v, int):
        return {id_number(v, 0)}
    dec = Decimal(repr(float(v))).quantize(Decimal("0.1"), rounding=ROUND_HALF_EVEN)
    return {id_number(float(v)), id_number(float(dec))}


def pdf_lines(path: Path) -> list[str]:
    exe = require_tool("pdftotext")
    return subprocess.run([exe, "-layout", str(path), "-"], capture_output=True, text=True,
                          check=True).stdout.splitlines()  # fmt: skip


def compare_pdf(lines: list[str], want: dict[tuple[str, ...], dict[str, Any]], key_cols: int,
                table: str, skip: tuple[str, ...] = ()) -> int:  # fmt: skip
    """Every expected number of each row appears, formatted in Indonesian, on the lines that
    start with the row's key (the table is printed in parts, each repeating the key)."""
    n = 0
    problems = []
    for key, w in want.items():
        prefix = key[:key_cols]
        tokens: list[str] = []
        for ln in lines:
            parts = ln.split()
            if parts[: len(prefix)] == list(prefix):
                tokens += parts[len(prefix) :]
        assert tokens, f"pdf {table}: no row for {key}"
        for col, v in w.items():
            if isinstance(v, str) or v is None or col in skip:
                continue
            texts = id_numbers(int(v) if col in INT_COLUMNS else float(v))
            n += 1
            if not texts & set(tokens):
                problems.append(f"{key} {col}: {texts} not in {tokens[:40]}")
    assert not problems, f"pdf {table}: {len(problems)} figures missing:\n" + "\n".join(
        problems[:10]
    )
    return n


# --- tests ---------------------------------------------------------------------------------


def _seconds_whole(s: Seeded) -> Callable[[str], float]:
    return lambda _sid: 2 * 86400.0


def test_national_report_matches_the_oracle_in_every_format(
    fleet_db: Seeded, raw: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    out = tmp_path / "national"
    d0, d1 = fleet_db.dates
    r = run_report(fleet_db, out, "--from", d0, "--to", d1, "--format", "csv,xlsx,pdf")
    assert r.returncode == 0, r.stderr
    want = oracle(raw, fleet_db, window((d0, d1), False), _seconds_whole(fleet_db))
    # The seeded facts the oracle must also see: one station silent throughout, degradations.
    assert want["coverage"][("*",)]["silent_whole_period"] == 1
    assert any(w["verdict"] == "not_met" for w in want["stations"].values())
    checked = 0
    for table in ("operators", "provinces", "stations", "coverage"):
        checked += compare(table, read_csv(out / f"{table}.csv"), want[table], "csv")
        checked += compare(table, read_xlsx(out / "report.xlsx", table), want[table], "xlsx")
    assert checked > 3000  # every figure of every row, in both files
    lines = pdf_lines(out / "report.pdf")
    pdf_checked = compare_pdf(lines, want["operators"], 1, "operators")
    stations_want = {k: v for k, v in want["stations"].items() if v.get("verdict") != "silent"}
    pdf_checked += compare_pdf(lines, stations_want, 2, "stations", ("stations",))
    assert pdf_checked > 1000


def test_voting_hours_use_each_stations_own_zone(
    fleet_db: Seeded, raw: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    out = tmp_path / "voting"
    d0, d1 = fleet_db.dates
    r = run_report(fleet_db, out, "--from", d0, "--to", d1, "--voting-hours", "--format", "csv",
                   "--lang", "en")  # fmt: skip
    assert r.returncode == 0, r.stderr
    want = oracle(raw, fleet_db, window((d0, d1), True), lambda _sid: 2 * 6 * 3600.0)
    for table in ("operators", "provinces", "stations", "coverage"):
        compare(table, read_csv(out / f"{table}.csv"), want[table], "csv voting hours")
    rows = {(r["station"], r["operator"]): r for r in read_csv(out / "stations.csv")}
    # Station 1 (Makassar, WITA): 36 regular rounds a day in 07:00-13:00, plus the edge rounds
    # at 07:00 and 12:59; not those at 06:59 and 13:00.
    edge = fleet_db.stations[1]
    assert edge.tz == "Asia/Makassar"
    assert int(rows[(edge.id, edge.operator)]["rounds"]) == 2 * 36 + 2
    # Station 5 is in Papua (WIT) but its registry tz is WITA: its window is WITA's, so its
    # edge breaches (rtt > 900 ms) fall in the 07:00 and 12:00 WITA hours, not 06:00.
    odd = fleet_db.stations[5]
    assert (odd.province, odd.tz) == ("Papua", "Asia/Makassar")
    row = rows[(odd.id, odd.operator)]
    assert row["zone"] == "WITA"
    assert "T07:00+08:00" in row["worst_hours"] and "T12:00+08:00" in row["worst_hours"]
    assert "T06:00+08:00" not in row["worst_hours"]
    assert int(row["rounds"]) == 2 * 36 + 2


def test_a_period_across_midnight_in_wit(
    fleet_db: Seeded, raw: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    out = tmp_path / "night"
    d0 = fleet_db.day0.date()
    a = datetime.combine(d0, time(20, 0))
    b = a + timedelta(hours=9)  # 20:00 WIT to 05:00 WIT the next day
    r = run_report(fleet_db, out, "--zone", "WIT", "--from", a.strftime("%Y-%m-%dT%H:%M"),
                   "--to", b.strftime("%Y-%m-%dT%H:%M"), "--format", "csv,xlsx")  # fmt: skip
    assert r.returncode == 0, r.stderr
    want = oracle(raw, fleet_db, window(None, False, "Asia/Jayapura", (a, b)), lambda _: 9 * 3600.0)
    for table in ("operators", "provinces", "stations", "coverage"):
        compare(table, read_csv(out / f"{table}.csv"), want[table], "csv WIT night")
        compare(table, read_xlsx(out / "report.xlsx", table), want[table], "xlsx WIT night")
    # 9 hours of 10-minute rounds: 54 for every station that was not silent.
    rounds = {int(r["rounds"]) for r in read_csv(out / "stations.csv") if int(r["rounds"])}
    assert rounds == {54}


def test_one_province_in_voting_hours_matches_the_oracle(
    fleet_db: Seeded, raw: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    out = tmp_path / "papua"
    d0, d1 = fleet_db.dates
    r = run_report(fleet_db, out, "--from", d0, "--to", d1, "--voting-hours", "--province",
                   "Papua", "--format", "csv,xlsx")  # fmt: skip
    assert r.returncode == 0, r.stderr
    papua = replace(fleet_db, stations=[s for s in fleet_db.stations if s.province == "Papua"])
    only = {k: [p for p in v if p["province"] == "Papua"] for k, v in raw.items()}
    want = oracle(only, papua, window((d0, d1), True), lambda _sid: 2 * 6 * 3600.0)
    for table in ("operators", "provinces", "stations", "coverage"):
        compare(table, read_csv(out / f"{table}.csv"), want[table], "csv Papua")
        compare(table, read_xlsx(out / "report.xlsx", table), want[table], "xlsx Papua")
