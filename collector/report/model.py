"""The report's figures: which aggregate gives each, how rows are assembled, the verdicts.

One table (`STATS`) says which aggregate of which raw field gives each raw figure, computed
by collector.report.compute over the rows collector.report.query streamed from the
database; additive ones (count, sum) are computed per station and operator and added up for
provinces, regencies and operators, the others (median, percentile) are computed over the
rows of every grouping, since a median of medians is not a median. `COLUMNS` then says how
each column of each table is derived, its unit and its meaning in both languages: the CSV
README, the XLSX number formats and the HTML/PDF tables all come from it.
"""

from __future__ import annotations

import queue
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from agent.contract.thresholds import Threshold, Thresholds
from collector.report import compute
from collector.report.compute import F64, Mask
from collector.report.query import Read, ReportQuery, Rows
from collector.report.scope import Scope, fixed_zone, station_offset, zone_name
from collector.station import Station

# A threshold is met by a group when at least this share of its rounds do not cross the
# threshold's `warn` limit (FCC CAF performance testing uses 95 % of latency tests).
TARGET_SHARE_PCT = 95.0
WORST_HOURS = 3

# Verdicts and station states, as stored in CSV/XLSX (translated in HTML/PDF).
MET, NOT_MET, NO_DATA, SILENT = "met", "not_met", "no_data", "silent"

# Per-station figures are per station and operator; a station's province and regency come
# from the registry, the groups' from the rows' tags.
STATION_KEYS = ("station", "operator")
ROW_TAGS = ("station", "operator", "province", "regency")
ICMP_TAGS = (*ROW_TAGS, "uplink", "target")  # a station's ICMP series: uplink x target


@dataclass(frozen=True)
class Cond:
    """`field` `op` `value` of a row: false when the row has no value of `field` (as an
    InfluxQL WHERE on a missing field)."""

    field: str
    op: str  # <, <=, >, >=, =
    value: float

    def test(self, rows: Rows) -> Mask:
        v = rows.values[self.field]
        with np.errstate(invalid="ignore"):
            out: Mask = _OPS[self.op](v, self.value)
        return out

    def __str__(self) -> str:
        num = repr(self.value) if not float(self.value).is_integer() else str(int(self.value))
        return f"{self.field} {self.op} {num}"


_OPS = {"<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal,
        "=": np.equal}  # fmt: skip
Where = tuple[Cond, ...]  # any of them (OR); () = every row


def matches(where: Where, rows: Rows) -> Mask:
    if not where:
        return np.ones(len(rows), dtype=bool)
    out = where[0].test(rows)
    for c in where[1:]:
        out = out | c.test(rows)
    return out


@dataclass(frozen=True)
class Stat:
    """A raw figure: the `expr` aggregate of `field` over `measurement` rows that meet
    `where`."""

    key: str
    measurement: str
    expr: str  # "count", "sum", "median" or "percentile:N"
    field: str
    where: Where = ()

    @property
    def additive(self) -> bool:
        return self.expr in ("count", "sum")

    @property
    def fields(self) -> tuple[str, ...]:
        return (self.field, *(c.field for c in self.where))


STATS: tuple[Stat, ...] = (
    Stat("rounds", "icmp", "count", "loss_pct"),
    Stat("loss_sum", "icmp", "sum", "loss_pct"),
    Stat("replied", "icmp", "count", "loss_pct", (Cond("loss_pct", "<", 100),)),
    Stat("latency_p50_ms", "icmp", "percentile:50", "rtt_p50_ms"),
    Stat("latency_p95_ms", "icmp", "percentile:95", "rtt_p50_ms"),
    Stat("jitter_median_ms", "icmp", "median", "jitter_ms"),
    Stat("dns_n", "dns", "count", "ok"),
    Stat("dns_ok", "dns", "sum", "ok"),
    Stat("http_n", "http", "count", "ok"),
    Stat("http_ok", "http", "sum", "ok"),
    Stat("download_median_mbps", "throughput", "median", "download_mbps"),
    Stat("download_p10_mbps", "throughput", "percentile:10", "download_mbps"),
    Stat("upload_median_mbps", "throughput", "median", "upload_mbps"),
    Stat("upload_p10_mbps", "throughput", "percentile:10", "upload_mbps"),
    Stat("photo_n", "upload", "count", "ok"),
    Stat("photo_ok", "upload", "sum", "ok"),
    Stat("photo_skipped", "upload", "sum", "skipped"),
    Stat("photo_median_s", "upload", "median", "duration_s", (Cond("ok", "=", 1),)),
    Stat("rsrp_median_dbm", "signal", "median", "rsrp_dbm"),
    Stat("sinr_median_db", "signal", "median", "sinr_db"),
)


def meets_condition(t: Threshold, fld: str) -> Cond:
    """A value that does not cross `t`'s warn limit (good or fair, as Threshold.breaches
    says)."""
    if t.higher_is_worse:
        return Cond(fld, "<" if t.inclusive else "<=", t.warn)
    return Cond(fld, ">" if t.inclusive else ">=", t.warn)


def crosses_condition(t: Threshold, fld: str, level: str) -> Cond:
    """A value at `level` ("warn" or "alert") or worse."""
    v = t.warn if level == "warn" else t.alert
    if t.higher_is_worse:
        return Cond(fld, ">=" if t.inclusive else ">", v)
    return Cond(fld, "<=" if t.inclusive else "<", v)


def icmp_level_condition(th: Thresholds, level: str) -> Where:
    """An icmp round at `level` or worse: a graded field crosses it, or (critical) the round
    got no reply at all. The same rule as collector.status for a round."""
    conds = [
        crosses_condition(t, f.split(".", 1)[1], level)
        for t in th.metrics
        for f in t.fields
        if f.startswith("icmp.")
    ]
    if level == "alert":
        conds += [Cond("loss_pct", "=", 100), Cond("ok", "=", 0)]
    return tuple(conds)


def threshold_stats(th: Thresholds) -> list[Stat]:
    """Per threshold and field: rounds with a value, and rounds meeting the threshold."""
    out = []
    for t in th.metrics:
        for f in t.fields:
            kind, fld = f.split(".", 1)
            out.append(Stat(f"n:{t.name}:{f}", kind, "count", fld))
            out.append(Stat(f"meets:{t.name}:{f}", kind, "count", fld, (meets_condition(t, fld),)))
    return out


@dataclass(frozen=True)
class Column:
    key: str
    kind: str  # text, int, pct, float, time, verdict
    unit: str
    id: str
    en: str
    decimals: int = 1


def _c(key: str, kind: str, unit: str, id_: str, en: str, decimals: int = 1) -> Column:
    return Column(key, kind, unit, id_, en, decimals)


FIGURES: tuple[Column, ...] = (
    _c(
        "stations",
        "int",
        "",
        "TPS yang terukur (punya putaran ICMP)",
        "stations measured (with ICMP rounds)",
    ),
    _c(
        "rounds",
        "int",
        "",
        "putaran ICMP (satu putaran = satu sasaran, satu uplink)",
        "ICMP rounds (one target, one uplink each)",
    ),
    _c(
        "icmp_availability_pct",
        "pct",
        "%",
        "putaran ICMP yang mendapat balasan",
        "ICMP rounds with at least one reply",
    ),
    _c(
        "dns_success_pct",
        "pct",
        "%",
        "kueri DNS yang berhasil (ok = 1)",
        "DNS queries that succeeded (ok = 1)",
    ),
    _c(
        "http_success_pct",
        "pct",
        "%",
        "permintaan HTTP yang berhasil (ok = 1)",
        "HTTP requests that succeeded (ok = 1)",
    ),
    _c(
        "latency_p50_ms",
        "float",
        "ms",
        "persentil ke-50 (peringkat terdekat) RTT median putaran",
        "50th percentile (nearest rank) of the rounds' median RTT",
    ),
    _c(
        "latency_p95_ms",
        "float",
        "ms",
        "persentil ke-95 (peringkat terdekat) RTT median putaran",
        "95th percentile (nearest rank) of the rounds' median RTT",
    ),
    _c(
        "jitter_median_ms",
        "float",
        "ms",
        "median jitter putaran (rata-rata selisih absolut RTT berurutan)",
        "median of the rounds' jitter (mean absolute difference of consecutive RTTs)",
    ),
    _c(
        "loss_mean_pct",
        "pct",
        "%",
        "rata-rata kehilangan paket per putaran",
        "mean packet loss per round",
    ),
    _c("download_median_mbps", "float", "Mbit/s", "median kecepatan unduh", "median download rate"),
    _c(
        "download_p10_mbps",
        "float",
        "Mbit/s",
        "persentil ke-10 kecepatan unduh",
        "10th percentile of download rate",
    ),
    _c("upload_median_mbps", "float", "Mbit/s", "median kecepatan unggah", "median upload rate"),
    _c(
        "upload_p10_mbps",
        "float",
        "Mbit/s",
        "persentil ke-10 kecepatan unggah",
        "10th percentile of upload rate",
    ),
    _c(
        "photo_success_pct",
        "pct",
        "%",
        "unggahan foto yang berhasil (yang dilewati tidak dihitung)",
        "photo uploads that succeeded (skipped ones not counted)",
    ),
    _c(
        "photo_median_s",
        "float",
        "s",
        "median waktu unggahan foto yang berhasil",
        "median time of successful photo uploads",
    ),
    _c(
        "rsrp_median_dbm",
        "float",
        "dBm",
        "median RSRP (bila diukur)",
        "median RSRP (when measured)",
    ),
    _c("sinr_median_db", "float", "dB", "median SINR (bila diukur)", "median SINR (when measured)"),
)

VERDICT_COLS: tuple[Column, ...] = (
    _c(
        "verdict",
        "verdict",
        "",
        "putusan: met, not_met atau no_data",
        "verdict: met, not_met or no_data",
    ),
    _c("not_met", "text", "", "ambang yang tidak dipenuhi", "thresholds not met"),
)

STATION_COLS: tuple[Column, ...] = (
    _c("name", "text", "", "nama TPS", "station name"),
    _c(
        "zone",
        "text",
        "",
        "zona waktu TPS (WIB, WITA, WIT)",
        "the station's time zone (WIB, WITA, WIT)",
    ),
    _c(
        "rounds_expected",
        "int",
        "",
        "putaran yang diharapkan: seri ICMP x durasi periode / interval",
        "rounds expected: ICMP series x period length / interval",
    ),
    _c(
        "completeness_pct",
        "pct",
        "%",
        "kelengkapan data: putaran diterima / diharapkan",
        "data completeness: rounds received / expected",
    ),
    _c(
        "degraded_h",
        "float",
        "h",
        "waktu menurun (perkiraan dari jumlah putaran)",
        "time degraded (estimated from round counts)",
    ),
    _c(
        "critical_h",
        "float",
        "h",
        "waktu kritis (perkiraan dari jumlah putaran)",
        "time critical (estimated from round counts)",
    ),
    _c(
        "silent_h",
        "float",
        "h",
        "waktu senyap: putaran yang tidak diterima",
        "time silent: rounds not received",
    ),
    _c(
        "worst_hours",
        "text",
        "",
        "jam terburuk: jam lokal dengan putaran melampaui 'warn' terbanyak",
        "worst hours: local hours with the most rounds crossing 'warn'",
    ),
)

COVERAGE_COLS: tuple[Column, ...] = (
    _c("province", "text", "", "provinsi (atau Nasional)", "province (or National)"),
    _c("registered", "int", "", "TPS terdaftar dalam cakupan", "stations registered in scope"),
    _c("reporting", "int", "", "TPS yang mengirim putaran ICMP", "stations that sent ICMP rounds"),
    _c(
        "silent_whole_period",
        "int",
        "",
        "TPS senyap sepanjang periode",
        "stations silent for the whole period",
    ),
    _c("rounds_received", "int", "", "putaran ICMP diterima", "ICMP rounds received"),
    _c("rounds_expected", "int", "", "putaran ICMP diharapkan", "ICMP rounds expected"),
    _c(
        "completeness_pct",
        "pct",
        "%",
        "putaran diterima / diharapkan",
        "rounds received / expected",
    ),
)

THRESHOLD_COLS: tuple[Column, ...] = (
    _c("metric", "text", "", "nama ambang", "threshold name"),
    _c("fields", "text", "", "ukuran.field yang dinilai", "kind.field it grades"),
    _c(
        "direction",
        "text",
        "",
        "arah: higher_is_worse atau lower_is_worse",
        "higher_is_worse or lower_is_worse",
    ),
    _c("unit", "text", "", "satuan", "unit"),
    _c("good", "float", "", "batas baik", "good limit", 3),
    _c(
        "warn",
        "float",
        "",
        "batas peringatan (dipakai untuk putusan)",
        "warn limit (used by the verdict)",
        3,
    ),
    _c("alert", "float", "", "batas kritis", "alert limit", 3),
    _c("source", "text", "", "sumber (regulasi atau standar)", "source (regulation or standard)"),
)

KEY_COLS: dict[str, Column] = {
    "operator": _c("operator", "text", "", "operator (tag uplink)", "operator (the uplink's tag)"),
    "province": _c("province", "text", "", "provinsi", "province"),
    "regency": _c("regency", "text", "", "kabupaten/kota", "regency"),
    "station": _c(
        "station", "text", "", "ID TPS (kode 13 digit)", "station id (13-digit TPS code)"
    ),
}


def meets_columns(th: Thresholds) -> tuple[Column, ...]:
    return tuple(
        _c(
            f"meets_{t.name}_pct",
            "pct",
            "%",
            f"putaran yang memenuhi ambang {t.name} ({', '.join(t.fields)})",
            f"rounds meeting the {t.name} threshold ({', '.join(t.fields)})",
        )
        for t in th.metrics
    )


@dataclass
class Table:
    name: str  # operators, provinces, regencies, stations, coverage, thresholds
    columns: tuple[Column, ...]
    rows: list[dict[str, Any]]


@dataclass
class Report:
    scope: Scope
    thresholds: Thresholds
    tables: list[Table]
    timeline: list[dict[str, Any]]  # operator, time (UTC), latency_ms, loss_pct
    station_points: list[dict[str, Any]]  # id, lat, lon, province, status, latency_p50_ms
    queries: list[str] = field(default_factory=list)  # the InfluxQL, for the method page

    def table(self, name: str) -> Table | None:
        return next((t for t in self.tables if t.name == name), None)


def _ratio(a: float | None, b: float | None, scale: float = 100.0) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return scale * a / b


def derive(raw: dict[str, Any], th: Thresholds) -> dict[str, Any]:
    """Figures from raw aggregates (the same rule for a station and a group)."""
    g = raw.get
    out: dict[str, Any] = {
        "rounds": int(g("rounds") or 0),
        "icmp_availability_pct": _ratio(g("replied", 0), g("rounds")),
        "dns_success_pct": _ratio(g("dns_ok"), g("dns_n")),
        "http_success_pct": _ratio(g("http_ok"), g("http_n")),
        "loss_mean_pct": _ratio(g("loss_sum") or 0, g("rounds"), 1.0),
        "photo_success_pct": _ratio(g("photo_ok"), (g("photo_n") or 0) - (g("photo_skipped") or 0)),
    }
    for st in STATS:
        if not st.additive:
            out[st.key] = g(st.key)
    failed: list[str] = []
    graded = 0
    for t in th.metrics:
        n = sum(g(f"n:{t.name}:{f}") or 0 for f in t.fields)
        m = sum(g(f"meets:{t.name}:{f}") or 0 for f in t.fields)
        share = _ratio(m, n)
        out[f"meets_{t.name}_pct"] = share
        if share is not None:
            graded += 1
            if share < TARGET_SHARE_PCT:
                failed.append(t.name)
    out["verdict"] = NO_DATA if graded == 0 else NOT_MET if failed else MET
    out["not_met"] = ", ".join(failed)
    return out


def _row_key(row: dict[str, Any], keys: Sequence[str]) -> tuple[str, ...]:
    return tuple(str(row.get(k) or "") for k in keys)


GROUPINGS: dict[str, tuple[str, ...]] = {
    "operators": ("operator",),
    "provinces": ("operator", "province"),
    "regencies": ("operator", "province", "regency"),
}


def plan(scope: Scope, th: Thresholds) -> list[Read]:
    """Every read the report needs: each measurement once, with the fields its figures, the
    round levels and the timeline use."""
    fields: dict[str, set[str]] = {}
    for s in [*STATS, *threshold_stats(th)]:
        fields.setdefault(s.measurement, set()).update(s.fields)
    for lv in ("alert", "warn"):
        fields["icmp"].update(c.field for c in icmp_level_condition(th, lv))
    fields["icmp"].update(("loss_pct", "rtt_p50_ms"))  # the timeline
    # icmp first: the largest read starts first and the others run beside it.
    order = sorted(fields, key=lambda m: (m != "icmp", m))
    return [
        Read(m, m, tuple(sorted(fields[m])), ICMP_TAGS if m == "icmp" else ROW_TAGS) for m in order
    ]


@dataclass
class _Grouping:
    gid: Any  # each row's group
    keys: list[tuple[str, ...]]
    names: tuple[str, ...]


def _groupings(rows: Rows, tables: Sequence[str]) -> dict[str, _Grouping]:
    pos = {t: i for i, t in enumerate(rows.tags)}
    out = {}
    for name, names in (("stations", STATION_KEYS), *((t, GROUPINGS[t]) for t in tables)):
        idx = [pos[k] for k in names]
        gid, keys = compute.group_ids(rows.series, rows.sid, idx)
        out[name] = _Grouping(gid, keys, names)
    return out


def _aggregate(
    rows: Rows,
    stats: Sequence[Stat],
    groupings: dict[str, _Grouping],
    into: dict[str, dict[tuple[str, ...], dict[str, Any]]],
) -> None:
    """Each stat over `rows`: additive ones per station, the others per every grouping;
    a group gets a value only where it has rows for it (as a grouped InfluxQL aggregate)."""
    masks: dict[tuple[str, Where], Mask] = {}
    orders: dict[tuple[str, Where], Any] = {}
    sorted_: dict[tuple[str, Where, str], compute.Sorted] = {}
    # Stats of one field and condition together: its sort orders are freed before the next.
    for st in sorted(stats, key=lambda s: (s.field, str(s.where))):
        mk = (st.field, st.where)
        if mk not in masks:
            masks.clear()
            orders.clear()
            sorted_.clear()
            masks[mk] = ~np.isnan(rows.values[st.field]) & matches(st.where, rows)
        mask = masks[mk]
        values: F64 = rows.values[st.field]
        for gname, g in groupings.items():
            if st.additive and gname != "stations":
                continue  # added up from the station rows
            n_groups = len(g.keys)
            n = compute.count(g.gid, mask, n_groups)
            if st.expr == "count":
                out = n.astype(np.float64)
            elif st.expr == "sum":
                out = compute.total(g.gid, values, mask, n_groups)
            else:
                if mk not in orders:
                    orders[mk] = compute.by_value(values, mask)
                sk = (*mk, gname)
                if sk not in sorted_:
                    sorted_[sk] = compute.Sorted.of(g.gid, values, orders[mk], n_groups)
                srt = sorted_[sk]
                out = (
                    srt.median()
                    if st.expr == "median"
                    else srt.percentile(float(st.expr.split(":")[1]))
                )
            dest = into[gname]
            for i in np.flatnonzero(n > 0).tolist():
                v = float(out[i])
                if np.isnan(v):
                    continue
                k = g.keys[i]
                d = dest.get(k)
                if d is None:
                    d = dest[k] = dict(zip(g.names, k, strict=True))
                d[st.key] = int(v) if st.expr == "count" else v


def _arrivals(
    rq: ReportQuery, reads: Sequence[Read], progress: Callable[[str], None] | None
) -> Iterator[tuple[str, Rows]]:
    """Each read's rows as soon as its statements have answered (the reads run in a thread;
    its error is raised here). When the caller stops early (an error, Ctrl-C), no further
    statement starts and the caller does not wait for the running ones."""
    q: queue.Queue[tuple[str, Rows] | BaseException | None] = queue.Queue()
    stop = threading.Event()

    def run() -> None:
        try:
            rest = rq.read(reads, progress, done=lambda n, r: q.put((n, r)), stop=stop)
            for item in rest.items():
                q.put(item)
        except BaseException as exc:  # handed to the caller's thread
            q.put(exc)
        else:
            q.put(None)

    t = threading.Thread(target=run, name="report-read", daemon=True)
    t.start()
    try:
        while (item := q.get()) is not None:
            if isinstance(item, BaseException):
                t.join()
                raise item
            yield item
    except BaseException:
        stop.set()
        raise
    t.join()


def build(
    scope: Scope,
    th: Thresholds,
    rq: ReportQuery,
    stations_by_id: dict[str, Station],
    progress: Callable[[str], None] | None = None,
) -> Report:
    reads = plan(scope, th)
    group_tables = ["operators", "provinces"] + (["regencies"] if scope.request.by_regency else [])
    raws: dict[str, dict[tuple[str, ...], dict[str, Any]]] = {
        t: {} for t in ("stations", *GROUPINGS)
    }
    stats = [*STATS, *threshold_stats(th)]
    measurement = {rd.name: rd.measurement for rd in reads}
    data: dict[str, Rows] = {}
    # Each read is aggregated here as soon as it has arrived, while the others stream; its
    # rows are dropped then (icmp's are used below).
    for name, mrows in _arrivals(rq, reads, progress):
        if name == "icmp":
            data[name] = mrows
        if len(mrows):
            mine = [s for s in stats if s.measurement == measurement[name]]
            _aggregate(mrows, mine, _groupings(mrows, group_tables), raws)
        del mrows
    station_raw = raws.pop("stations")
    group_raw = raws
    for raw in station_raw.values():
        st = stations_by_id[str(raw["station"])]
        raw["province"], raw["regency"] = st.province, st.regency
    offsets = {s.id: station_offset(s) for s in scope.stations}
    seconds = {g.offset_h: g.seconds for g in scope.groups}

    icmp = data["icmp"]
    sg = _groupings(icmp, ["operators"]) if len(icmp) else {}
    series: Counter[tuple[str, str]] = Counter()
    levels: dict[str, dict[tuple[str, str], int]] = {"critical": {}, "warn": {}}
    worst: dict[tuple[str, str], list[tuple[int, int]]] = {}
    timeline_rows: list[tuple[str, int, list[float | None]]] = []
    if sg:
        has = ~np.isnan(icmp.values["loss_pct"])
        # ICMP series (uplink x target) per station and operator with a round in the period.
        seen_series = {icmp.series[i] for i in np.unique(icmp.sid[has]).tolist()}
        for k in {(s[0], s[1], s[4], s[5]) for s in seen_series}:
            series[(k[0], k[1])] += 1
        g = sg["stations"]
        for lv, cond in (("critical", "alert"), ("warn", "warn")):
            m = has & matches(icmp_level_condition(th, cond), icmp)
            n = compute.count(g.gid, m, len(g.keys))
            for i in np.flatnonzero(n > 0).tolist():
                levels[lv][(g.keys[i][0], g.keys[i][1])] = int(n[i])
            if lv == "warn":
                tops = compute.worst_hours(g.gid, icmp.time, m, len(g.keys), WORST_HOURS)
                for i, hs in enumerate(tops):
                    if hs:
                        worst[(g.keys[i][0], g.keys[i][1])] = hs
        o = sg["operators"]
        for gi, t_ns, means in compute.hourly_means(
            o.gid, icmp.time, [icmp.values["rtt_p50_ms"], icmp.values["loss_pct"]], len(o.keys)
        ):
            timeline_rows.append((o.keys[gi][0], t_ns, means))
    typical_series = Counter(series.values()).most_common(1)[0][0] if series else 1

    # Additive raw figures summed per group from the station rows.
    additive = {st.key for st in stats if st.additive}
    for t in group_tables:
        keys = GROUPINGS[t]
        for raw in station_raw.values():
            gk = _row_key(raw, keys)
            d = group_raw[t].get(gk)
            if d is None:
                d = group_raw[t][gk] = {k: raw.get(k) for k in keys}
            d.setdefault("_stations", set()).add(raw["station"])
            for col in additive & raw.keys():
                d[col] = d.get(col, 0) + raw[col]

    meets = meets_columns(th)
    tables: list[Table] = []
    for t in ["operators", "provinces"] + (["regencies"] if scope.request.by_regency else []):
        keys = GROUPINGS[t]
        rows = []
        for gk in sorted(group_raw[t]):
            raw = group_raw[t][gk]
            row = {k: raw.get(k) or "" for k in keys}
            row["stations"] = len(raw.get("_stations", ()))
            row.update(derive(raw, th))
            rows.append(row)
        cols = (*(KEY_COLS[k] for k in keys), *FIGURES, *meets, *VERDICT_COLS)
        tables.append(Table(t, cols, rows))

    # Stations: one row per station and operator; a silent station gets one row.
    srows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for skey in sorted(station_raw):
        raw = station_raw[skey]
        sid, op = str(raw["station"]), str(raw.get("operator") or "")
        st = stations_by_id[sid]
        seen.add(sid)
        off = offsets[sid]
        secs = seconds.get(off, 0.0)
        n_series = series.get((sid, op), 1)
        expected = round(n_series * secs / scope.request.interval_s)
        srow: dict[str, Any] = {
            "station": sid,
            "operator": op,
            "province": st.province,
            "regency": st.regency,
            "name": st.name,
            "zone": zone_name(off),
        }
        fig = derive(raw, th)
        rounds = fig["rounds"]
        crit = levels["critical"].get((sid, op), 0)
        warn_n = levels["warn"].get((sid, op), 0)
        srow["stations"] = 1
        srow.update(fig)
        srow["rounds_expected"] = expected
        srow["completeness_pct"] = _ratio(rounds, expected)
        frac = (secs / expected) if expected else 0.0
        srow["degraded_h"] = (warn_n - crit) * frac / 3600.0
        srow["critical_h"] = crit * frac / 3600.0
        srow["silent_h"] = max(0, expected - rounds) * frac / 3600.0
        hours = sorted(worst.get((sid, op), []), key=lambda x: (-x[1], x[0]))[:WORST_HOURS]
        srow["_worst"] = [(datetime.fromtimestamp(ns / 1e9, UTC), n) for ns, n in hours]
        srow["worst_hours"] = "; ".join(
            f"{tm.astimezone(fixed_zone(off)).isoformat(timespec='minutes')} ({n})"
            for tm, n in srow["_worst"]
        )
        srows.append(srow)
    for st in scope.stations:
        if st.id in seen:
            continue
        off = offsets[st.id]
        secs = seconds.get(off, 0.0)
        expected = round(typical_series * secs / scope.request.interval_s)
        row = {
            "station": st.id,
            "operator": st.expected_operator or "",
            "province": st.province,
            "regency": st.regency,
            "name": st.name,
            "zone": zone_name(off),
            "stations": 0,
            **derive({}, th),
            "verdict": SILENT,
            "rounds_expected": expected,
            "completeness_pct": 0.0 if expected else None,
            "degraded_h": 0.0,
            "critical_h": 0.0,
            "silent_h": secs / 3600.0,
            "worst_hours": "",
            "_worst": [],
        }
        srows.append(row)
    srows.sort(key=lambda r: (r["station"], r["operator"]))
    scols = (
        KEY_COLS["station"],
        KEY_COLS["operator"],
        KEY_COLS["province"],
        KEY_COLS["regency"],
        *STATION_COLS[:2],
        *FIGURES[1:],
        *meets,
        *VERDICT_COLS,
        *STATION_COLS[2:],
    )
    tables.append(Table("stations", scols, srows))
    tables.append(Table("coverage", COVERAGE_COLS, _coverage(scope, srows)))
    tables.append(Table("thresholds", THRESHOLD_COLS, _threshold_rows(th)))

    timeline = [
        {
            "operator": op,
            "time": datetime.fromtimestamp(t_ns / 1e9, UTC),
            "latency_ms": latency,
            "loss_pct": loss,
        }
        for op, t_ns, (latency, loss) in sorted(timeline_rows, key=lambda r: (r[0], r[1]))
    ]
    status: dict[str, str] = {}
    lat: dict[str, float] = {}
    for r in srows:
        prev = status.get(r["station"])
        v = r["verdict"]
        if prev is None or v == NOT_MET or (prev in (SILENT, NO_DATA) and v == MET):
            status[r["station"]] = v
        if r.get("latency_p50_ms") is not None:
            lat[r["station"]] = r["latency_p50_ms"]
    points = [
        {
            "id": s.id,
            "lat": s.lat,
            "lon": s.lon,
            "province": s.province,
            "status": status.get(s.id, SILENT),
            "latency_p50_ms": lat.get(s.id),
        }
        for s in scope.stations
    ]
    return Report(scope, th, tables, timeline, points, [rq.text(rd) for rd in reads])


def _coverage(scope: Scope, srows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    per: dict[str, dict[str, Any]] = {}
    rec: dict[str, int] = {}
    exp: dict[str, int] = {}
    for r in srows:
        rec[r["station"]] = rec.get(r["station"], 0) + int(r["rounds"] or 0)
        exp[r["station"]] = exp.get(r["station"], 0) + int(r["rounds_expected"] or 0)
    for s in scope.stations:
        for key in (s.province, ""):
            d = per.setdefault(
                key,
                {
                    "province": key,
                    "registered": 0,
                    "reporting": 0,
                    "silent_whole_period": 0,
                    "rounds_received": 0,
                    "rounds_expected": 0,
                },
            )
            d["registered"] += 1
            if rec.get(s.id, 0) > 0:
                d["reporting"] += 1
            else:
                d["silent_whole_period"] += 1
            d["rounds_received"] += rec.get(s.id, 0)
            d["rounds_expected"] += exp.get(s.id, 0)
    rows = [per[k] for k in sorted(k for k in per if k)] + [per[""]]
    for d in rows:
        d["completeness_pct"] = _ratio(d["rounds_received"], d["rounds_expected"])
    rows[-1]["province"] = "*"
    return rows


def _threshold_rows(th: Thresholds) -> list[dict[str, Any]]:
    return [
        {
            "metric": t.name,
            "fields": ", ".join(t.fields),
            "direction": "higher_is_worse" if t.higher_is_worse else "lower_is_worse",
            "unit": t.unit,
            "good": t.good,
            "warn": t.warn,
            "alert": t.alert,
            "source": " ".join(t.source.split()),
        }
        for t in th.metrics
    ]
