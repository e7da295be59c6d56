"""Station status: ok, degraded, critical or silent, debounced so the control room sees no flapping.

Pure Python, no I/O: the API handler feeds records in (`observe`), a background job calls
`sweep`, and `status_points` gives the `station_status` points someone else encodes and writes.

Statuses (the `status` field of `station_status`)::

    0 ok        1 degraded        2 critical        3 silent

Rounds and series
    Every record is one round of its series. A series is one probe aimed at one thing over one
    uplink: the record's kind plus all its tags except `station` and `operator` (icmp: uplink and
    target; dns: uplink, resolver, qname, qtype; http: uplink and target). Each numeric field
    the record carries is graded with `Thresholds` (config/thresholds.yaml); fields without a
    threshold are ignored. A round is

    - critical-level when any field grades `alert`, or the record failed (`error` set, or
      `ok` = 0): the target could not be reached or did not answer properly;
    - degraded-level when any field grades `warn` (and none `alert`);
    - good otherwise (`good` and `fair` do not breach).

Debouncing (per series; the station takes the worst series)
    Each series keeps its last `window_n` rounds (M = `breach_m`, N = `window_n`) and moves
    between ok, degraded and critical by these rules, checked in order after every round:

    1. critical when at least M of the last N rounds are critical-level;
    2. a critical series stays critical until N consecutive rounds are not critical-level;
       it then drops to ok if those N rounds were all good, else to degraded;
    3. degraded when at least M of the last N rounds are degraded- or critical-level;
    4. a degraded series stays degraded until N consecutive rounds are good, then ok;
    5. otherwise ok.

    The window slides: a good round between breaches does not reset the count, and a breach
    older than N rounds no longer counts. Leaving a level needs N clean rounds in a row, so
    with M >= 2 a single bad round never raises a status and a single good round never clears
    one. (M = 1 is allowed by the configuration and means "no debounce on the way up".)

    Debouncing per series, not over the station's pooled rounds, keeps a target that fails
    every round from being diluted by the healthy targets probed in between, and keeps one
    target's occasional blip from adding up with another's. The station's status is the worst
    of its series; a series whose probe stopped (target removed from the agent's config) is
    forgotten once the station's newest round is more than max(3 x the series' last interval
    between rounds, 2 x silent_after_s) newer than the series' own newest round (an interval of
    one hour is assumed for a series with a single round), so a dead target that was removed
    does not hold the station down.

    A record whose measured_at is not newer than its series' newest round is not counted
    again: that is a resend after a lost acknowledgement (the same record) or out-of-order
    delivery. An agent clock stepped backwards therefore pauses that series' rounds until
    the clock passes the newest earlier round.

    One `observe` call (one upload) yields at most one StatusChange: the status before the
    call and after it. A backlog of a station that is not silent (uploads were delayed, not
    lost) is debounced round by round, and the resulting status reflects its newest rounds.

History (measurement time, not arrival time)
    An upload that reaches a silent station (its link is back) carries the rounds measured in
    the dark before its fresh ones (agents send their newest batch first after a failure).
    Each series' newest round in that upload is current: it is debounced onto the series'
    window as it was before the silence. Its older rounds are history: they never change the
    current status. They are debounced in order on a copy of the series (as before the
    silence), and every change of the station's status they make is kept as a HistoryChange
    at that round's measured_at; `take_history` hands them over once, `history_points` makes
    them `station_status` points at those times with the field history = 1 (status,
    status_name, reasons, causes, shard: the map's other fields belong to the current
    point). So a station that was ok, went dark and measures well again comes back ok at
    once, and Grafana shows the outage's rounds where they were; one that was failing before
    it went dark still needs N good rounds. Later batches of a long backlog are older than
    their series' newest round: not counted (above) and not replayed.

Reasons
    `reasons` explains the status, one string per series at the station's (worst) level,
    ordered by series, at most three plus "+K more", each at most 100 characters::

        icmp[kpu@modem0] error=timeout, loss_pct=100>=2, mos=1<3.1
        http[kpu-web@tps-wifi] ttfb_ms=1250>1000

    i.e. `kind[series@uplink]` followed by the breaching fields of the series' latest round at
    that level: `field=value` then the threshold it crossed (`>`/`>=`, or `<`/`<=` for
    lower-is-worse metrics; `>=` where the metric is `inclusive`). Failed rounds show
    `error=<code>` (contract.record.ErrorCode) or `ok=0`. `causes` is the compact code list for
    tables and alert titles: threshold metric names and error codes, sorted, comma-separated,
    e.g. `loss,mos,timeout`; a silent station has the cause `silent`. The point's `reasons`
    field joins the strings with "; ".

    Signal rounds (kind `signal`, one series per uplink whatever its network, technology or
    band) are worded for the control room instead: "weak coverage: RSRP -118 dBm on
    telkomsel/modem0" (rsrp_dbm, lte_rsrp threshold), "poor quality (load or interference):
    RSRQ ..." (rsrq_db), "interference: SINR ..." (sinr_db), "fell back to 3G on ..." or "2G"
    (access_tech umts or gsm: degraded-level, causes fallback_3g / fallback_2g), "operator
    mismatch: on indosat/modem0, not the configured operator" (degraded-level, cause
    operator_mismatch), "signal error=not_registered on ..." (critical-level). Rounds with
    error permission or unsupported are not counted: they say nothing of the link. When a
    signal series and a link series (icmp, dns, http, upload, throughput) are both not ok,
    the first reason is "latency and signal both bad (radio on modem0)" and the signal
    series' explanation follows it, whatever its level.

Silence
    Silence is judged by receive time at the collector (this engine's clock when `observe` is
    called), not by measured_at: arrival is what tells the control room the link is up now,
    an agent replaying a backlog is up even though its records are old, and an agent whose
    clock is wrong can make its station neither look alive nor silent. `sweep()` marks silent
    every station this shard owns from which nothing arrived for at least `silent_after_s`
    and returns those StatusChanges. Stations passed to `sweep(known)` (the registry) that
    this engine has no state for become silent (old status ok, reason "never reported") once
    the engine has run for `silent_after_s`, when the caller says so (`flag_never_reported`:
    one shard of several, after it `restore`d what the others wrote). Any upload ends
    silence, even one whose records were all resends. The series' windows are kept across
    silence (see History for the backlog that ends it).

Points
    `status_points(stations, now, shard)` returns, for each given station this engine has
    state for (reported, restored, or swept silent), `("station_status", tags, fields,
    time_ns)` at `now`. The caller writes them when `observe`/`sweep` report a change and
    periodically for the stations it owns, so Grafana's map always has a recent point. A
    station this engine has no state for gets no point rather than an invented "ok". Tags:
    station, province, regency, operator (empty values omitted; province and regency fall
    back to the 2- and 4-digit prefix of a numeric TPS code). Fields, with stable types so
    InfluxDB never sees a type conflict; absent means not known, never NaN or 0:

    ================  =====  ==========================================================
    status            int    0 ok, 1 degraded, 2 critical, 3 silent
    status_name       str    ok / degraded / critical / silent
    reasons           str    see above; "" when ok
    causes            str    see above; "" when ok
    status_age_s      float  seconds since the status last changed
    series            int    series tracked for the station
    series_breaching  int    series not ok
    lat, lon          float  from the registry (absent when unknown)
    last_seen_s       float  seconds since the last upload arrived (absent: never)
    rtt_p50_ms        float  latest icmp round of the worst (then most recent) icmp series
    loss_pct          float  same round
    jitter_ms         float  same round
    mos               float  same round
    icmp_target       str    that series' target
    icmp_uplink       str    that series' uplink
    tz                str    the registry's IANA zone, e.g. Asia/Makassar (absent when unknown)
    shard             str    the collector process that wrote it (absent when not given)
    history           int    1 on history points (absent on current ones)
    ================  =====  ==========================================================

Shards
    This engine is per-process memory. With several collector processes behind a proxy that
    routes every station to one of them (nginx `hash $station consistent`), each owns the
    stations it received an upload from (`observe`), or whose latest point it wrote before a
    restart (`restore`, with `Restored.owned`); `sweep` and the caller's refresh cover only
    owned stations (`owns`, `owned`). Before a sweep the caller reads, for the `overdue`
    stations, whether another shard received an upload from them since (a newer point of
    another shard) and `disown`s those: a re-routed station is not flagged silent by the shard
    it left. A restarted shard `restore`s every station's latest point: owned or not, status,
    reasons and since are kept, and a restored degraded or critical status holds (carry) until
    one of the station's series has a full window of new rounds, so a restart neither clears
    nor re-raises an alarm. collector.statusstore reads the points; collector.app wires it.

Thread safety: every public method takes one lock, so the API may call from a threadpool.
"""

from __future__ import annotations

import copy
import math
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import IntEnum

from agent.contract.record import MEASUREMENTS, FieldValue, Record, utcnow
from agent.contract.thresholds import Grade, Threshold, Thresholds
from collector.config import StatusConfig
from collector.station import Station

MEASUREMENT = "station_status"
MAX_REASONS = 3
MAX_REASON_LEN = 100
UNKNOWN_GAP_S = 3600.0  # assumed interval of a series seen once (covers hourly probes)
# A signal series is the uplink's modem whatever network, technology or band it is on now:
# a fall back to 3G or a roaming SIM must not start a fresh, undebounced series.
_SERIES_EXCLUDED_TAGS = ("station", "operator", "access_tech", "band")
# Signal rounds that say nothing of the link: the agent may not read the modem, or the modem
# cannot report (doctor shows these; the control room cannot act on them).
_SIGNAL_UNREADABLE = ("permission", "unsupported")
_SIGNAL_WORDS = {
    "rsrp_dbm": ("weak coverage", "RSRP", "dBm"),
    "rsrq_db": ("poor quality (load or interference)", "RSRQ", "dB"),
    "sinr_db": ("interference", "SINR", "dB"),
}
_FALLBACK = {"umts": "3G", "gsm": "2G"}
# Kinds that measure the link itself; "latency and signal both bad" pairs them with signal.
_LINK_KINDS = ("icmp", "dns", "http", "upload", "throughput")
_MAP_FIELDS = ("rtt_p50_ms", "loss_pct", "jitter_ms", "mos")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Round levels
_GOOD, _DEGRADED, _CRITICAL = 0, 1, 2


class Status(IntEnum):
    OK = 0
    DEGRADED = 1
    CRITICAL = 2
    SILENT = 3

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class StatusChange:
    station: str
    old: Status
    new: Status
    reasons: tuple[str, ...]
    at: datetime


@dataclass(frozen=True)
class StationSnapshot:
    station: str
    status: Status
    reasons: tuple[str, ...]
    causes: tuple[str, ...]
    since: datetime  # when the status last changed (or the station became known)
    last_seen: datetime | None  # receive time of the last upload; None: never reported
    last_seen_s: float | None  # seconds from last_seen to the snapshot's time
    measured_at: datetime | None  # newest measured_at of any series
    series: int
    series_breaching: int
    rtt_p50_ms: float | None = None
    loss_pct: float | None = None
    jitter_ms: float | None = None
    mos: float | None = None
    icmp_target: str | None = None
    icmp_uplink: str | None = None


@dataclass(frozen=True, slots=True)
class _Round:
    level: int
    items: tuple[str, ...]  # "loss_pct=5>=2", "error=timeout"
    causes: tuple[str, ...]  # "loss", "timeout"


_GOOD_ROUND = _Round(_GOOD, (), ())

_SeriesKey = tuple[str, tuple[tuple[str, str], ...]]


@dataclass(slots=True)
class _Series:
    kind: str
    label: str  # "icmp[kpu@modem0]"
    target: str
    uplink: str
    window: deque[_Round]
    status: Status = Status.OK
    critical: int = 0  # rounds in the window at critical level
    breaching: int = 0  # rounds in the window above good level
    clean_run: int = 0  # consecutive good rounds, newest last
    noncrit_run: int = 0  # consecutive rounds below critical level
    last_at: datetime | None = None
    gap_s: float | None = None
    last_fields: Mapping[str, FieldValue] = field(default_factory=dict)


@dataclass(frozen=True)
class HistoryChange:
    """A status change at a round's measurement time, found in a backlog (see History)."""

    station: str
    status: Status
    reasons: tuple[str, ...]
    causes: tuple[str, ...]
    at: datetime  # the measured_at of the round that made it


@dataclass(frozen=True)
class Restored:
    """A station's latest station_status point, read back at start (collector.statusstore)."""

    station: str
    status: Status
    reasons: tuple[str, ...]
    causes: tuple[str, ...]
    at: datetime  # the point's time
    since: datetime  # when that status began
    last_rx: datetime | None  # when its last upload arrived (None: never reported)
    owned: bool  # written by this shard


@dataclass(slots=True)
class _Station:
    status: Status
    since: datetime
    last_rx: datetime | None = None
    reasons: tuple[str, ...] = ()
    causes: tuple[str, ...] = ()
    series: dict[_SeriesKey, _Series] = field(default_factory=dict)
    owned: bool = False  # this shard received its uploads (or wrote its latest point)
    carry: Status | None = None  # a restored degraded/critical status, until a full window
    history: list[HistoryChange] = field(default_factory=list)


class StatusEngine:
    """Debounced station status; see the module docstring for the exact semantics."""

    def __init__(
        self,
        thresholds: Thresholds,
        cfg: StatusConfig,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        if not 1 <= cfg.breach_m <= cfg.window_n:
            raise ValueError(f"breach_m {cfg.breach_m} must be in 1..window_n ({cfg.window_n})")
        self._thresholds = thresholds
        self._m = cfg.breach_m
        self._n = cfg.window_n
        self._silent_s = float(cfg.silent_after_s)
        self._clock = clock
        self._started = clock()
        self._lock = threading.Lock()
        self._stations: dict[str, _Station] = {}
        self._by_field: dict[tuple[str, str], Threshold | None] = {}
        self._graded_by_kind: dict[str, list[tuple[str, Threshold]]] = {}
        self._warn_limits: dict[str, tuple[tuple[str, float, bool, bool], ...]] = {}
        self._series_keys: dict[
            tuple[str, tuple[tuple[str, str], ...]], tuple[_SeriesKey, str, str]
        ] = {}
        self._with_history: set[str] = set()  # stations take_history() has changes for

    # -- public API --------------------------------------------------------------------------

    def observe(self, station: Station | str, records: Sequence[Record]) -> list[StatusChange]:
        """One upload's accepted records of one station, in measured_at order.

        Returns the station's StatusChange when this upload changed its status, else []."""
        sid = station if isinstance(station, str) else station.id
        with self._lock:
            now = self._clock()
            st = self._stations.get(sid)
            if st is None:
                st = self._stations[sid] = _Station(Status.OK, now)
            old = st.status
            st.last_rx = now
            st.owned = True
            if old is Status.SILENT and len(records) > 1:
                records = self._replay_backlog(sid, st, records)
            for record in records:
                self._round(st, record)
            self._prune(st)
            self._settle(st)
            if st.status == old:
                return []
            st.since = now
            return [StatusChange(sid, old, st.status, st.reasons, now)]

    def overdue(self, include_silent: bool = False) -> list[tuple[str, datetime]]:
        """The stations this shard owns that the next sweep would mark silent (and, with
        `include_silent`, those it holds silent), each with the arrival of its last upload
        (or, never reported, when it was flagged): the caller checks none was taken over by
        another shard (a newer point from it) and `disown`s those that were, before the
        sweep and before a refresh."""
        with self._lock:
            now = self._clock()
            limit = timedelta(seconds=self._silent_s)
            out: list[tuple[str, datetime]] = []
            for sid, st in self._stations.items():
                if not st.owned:
                    continue
                if st.status is Status.SILENT:
                    if include_silent:
                        out.append((sid, st.since if st.last_rx is None else st.last_rx))
                elif st.last_rx is not None and now - st.last_rx >= limit:
                    out.append((sid, st.last_rx))
            return out

    def may_flag_never_reported(self) -> bool:
        """Whether the engine has run for silent_after_s (sweep flags never-reported
        stations only then)."""
        return self._clock() - self._started >= timedelta(seconds=self._silent_s)

    def disown(self, station_id: str) -> None:
        """Another shard took the station over: this one no longer sweeps or refreshes it
        (its state is kept, should the station be routed back)."""
        with self._lock:
            st = self._stations.get(station_id)
            if st is not None:
                st.owned = False

    def owns(self, station_id: str) -> bool:
        """Whether this shard sweeps and refreshes the station (cheap; for the ingest path)."""
        st = self._stations.get(station_id)
        return st is not None and st.owned

    def owned(self) -> set[str]:
        with self._lock:
            return {sid for sid, st in self._stations.items() if st.owned}

    def restore(self, latest: Iterable[Restored]) -> int:
        """Start from the stations' latest station_status points (a restarted shard): status,
        reasons, since and last upload; a degraded or critical status holds until the
        station's series have a full window of new rounds. Stations this engine already has
        state for are left alone. Returns how many were restored."""
        n = 0
        with self._lock:
            for r in latest:
                if r.station in self._stations:
                    continue
                self._stations[r.station] = _Station(
                    r.status,
                    r.since,
                    r.last_rx,
                    r.reasons,
                    r.causes,
                    owned=r.owned,
                    carry=r.status if r.status in (Status.DEGRADED, Status.CRITICAL) else None,
                )
                n += 1
        return n

    @property
    def has_history(self) -> bool:
        """Whether take_history() has anything for some station (cheap, no lock)."""
        return bool(self._with_history)

    def adopt(self, latest: Iterable[Restored]) -> None:
        """Before this shard takes over stations another one had (their first upload here):
        the stations' latest points, where newer than what this engine knows of them,
        replace its state like `restore` (the series start again; a degraded or critical
        status holds until a full window)."""
        with self._lock:
            for r in latest:
                st = self._stations.get(r.station)
                if st is not None and (st.owned or (st.last_rx is not None and st.last_rx >= r.at)):
                    continue
                self._stations[r.station] = _Station(
                    r.status,
                    r.since,
                    r.last_rx,
                    r.reasons,
                    r.causes,
                    carry=r.status if r.status in (Status.DEGRADED, Status.CRITICAL) else None,
                )

    def take_history(self, station_id: str) -> list[HistoryChange]:
        """The history changes the last `observe` found in a backlog (then forgotten)."""
        with self._lock:
            st = self._stations.get(station_id)
            self._with_history.discard(station_id)
            if st is None or not st.history:
                return []
            out, st.history = st.history, []
            return out

    def sweep(
        self, known: Iterable[Station] = (), flag_never_reported: bool = True
    ) -> list[StatusChange]:
        """Mark silent the owned stations nothing arrived from for silent_after_s; return the
        changes. `known` (the registry's stations) adds those no shard has state for, once
        the engine has run for silent_after_s (when `flag_never_reported`)."""
        with self._lock:
            now = self._clock()
            limit = timedelta(seconds=self._silent_s)
            reason = (f"no data for >={self._silent_s:g}s",)
            changes: list[StatusChange] = []
            for sid, st in self._stations.items():
                if st.status is Status.SILENT or st.last_rx is None or not st.owned:
                    continue
                if now - st.last_rx >= limit:
                    changes.append(StatusChange(sid, st.status, Status.SILENT, reason, now))
                    st.status, st.since, st.reasons, st.causes = (
                        Status.SILENT,
                        now,
                        reason,
                        ("silent",),
                    )
            if flag_never_reported and now - self._started >= limit:
                never = ("never reported",)
                for info in known:
                    if info.id in self._stations:
                        continue
                    self._stations[info.id] = _Station(
                        Status.SILENT, now, None, never, ("silent",), owned=True
                    )
                    changes.append(StatusChange(info.id, Status.OK, Status.SILENT, never, now))
            return changes

    def knows(self, station_id: str) -> bool:
        """Whether the engine has state for this station (cheap; for the ingest path)."""
        return station_id in self._stations

    def snapshot(self, station_id: str) -> StationSnapshot | None:
        """The station's current status and the latest values the map shows, or None when
        this engine has no state for it."""
        with self._lock:
            st = self._stations.get(station_id)
            return None if st is None else self._snapshot(station_id, st, self._clock())

    def status_points(
        self, stations: Iterable[Station], now: datetime, shard: str = ""
    ) -> list[tuple[str, dict[str, str], dict[str, int | float | str], int]]:
        """`station_status` points at `now` for the given stations that have state here;
        `shard` (when given) goes in each point's `shard` field."""
        t_ns = _time_ns(now)
        out: list[tuple[str, dict[str, str], dict[str, int | float | str], int]] = []
        with self._lock:
            for info in stations:
                st = self._stations.get(info.id)
                if st is None:
                    continue
                snap = self._snapshot(info.id, st, now)
                fields = _fields(snap, info, now)
                if shard:
                    fields["shard"] = shard
                out.append((MEASUREMENT, _tags(info), fields, t_ns))
        return out

    @staticmethod
    def history_points(
        info: Station, changes: Sequence[HistoryChange], shard: str = ""
    ) -> list[tuple[str, dict[str, str], dict[str, int | float | str], int]]:
        """`station_status` points for history changes, at their measurement times, with the
        field history = 1 (and fewer fields: the map's values belong to the current point)."""
        out: list[tuple[str, dict[str, str], dict[str, int | float | str], int]] = []
        for c in changes:
            fields: dict[str, int | float | str] = {
                "status": int(c.status),
                "status_name": c.status.label,
                "reasons": "; ".join(c.reasons),
                "causes": ",".join(c.causes),
                "history": 1,
            }
            if shard:
                fields["shard"] = shard
            out.append((MEASUREMENT, _tags(info), fields, _time_ns(c.at)))
        return out

    # -- rounds and debouncing ---------------------------------------------------------------

    def _threshold(self, kind: str, name: str) -> Threshold | None:
        key = (kind, name)
        if key not in self._by_field:
            self._by_field[key] = self._thresholds.for_field(kind, name)
        return self._by_field[key]

    def _graded(self, kind: str) -> list[tuple[str, Threshold]]:
        """The fields of a kind that have a threshold (computed once per kind)."""
        graded = self._graded_by_kind.get(kind)
        if graded is None:
            spec = MEASUREMENTS.get(kind)
            names = list(spec.fields) if spec is not None else []
            graded = [(n, t) for n in names if (t := self._threshold(kind, n)) is not None]
            self._graded_by_kind[kind] = graded
        return graded

    def _warn_limits_of(self, kind: str) -> tuple[tuple[str, float, bool, bool], ...]:
        """(field, warn limit, higher_is_worse, inclusive) of a kind's graded fields: what
        Threshold.breaches() compares, unpacked once so _grade's common case makes no calls."""
        limits = self._warn_limits.get(kind)
        if limits is None:
            limits = self._warn_limits[kind] = tuple(
                (n, t.warn, t.higher_is_worse, t.inclusive) for n, t in self._graded(kind)
            )
        return limits

    def _grade(self, record: Record) -> _Round:
        if record.kind == "signal":
            return self._grade_signal(record)
        fields = record.fields
        if record.error is None and fields.get("ok") != 0:
            # The common case, kept cheap: no field reaches its warn limit (good and fair
            # do not breach), so the round is good without building any explanation.
            # Threshold.breaches(), inlined: the same comparisons (NaN breaches neither way).
            for name, warn, higher, inclusive in self._warn_limits_of(record.kind):
                v = fields.get(name)
                if (type(v) is float or type(v) is int) and (
                    (v > warn if higher else v < warn) or (inclusive and v == warn)
                ):
                    break  # it breaches: explain it below
            else:
                return _GOOD_ROUND
        level = _GOOD
        alerts: list[str] = []
        warns: list[str] = []
        causes: set[str] = set()
        failed = record.error is not None or fields.get("ok") == 0
        if failed:
            level = _CRITICAL
            alerts.append(f"error={record.error}" if record.error else "ok=0")
            causes.add(record.error or "failed")
        for name, t in self._graded(record.kind):
            value = fields.get(name)
            if value is None or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            v = float(value)
            if not math.isfinite(v):
                continue
            g = t.grade(v)
            if g is Grade.ALERT:
                level = _CRITICAL
                alerts.append(_item(name, v, t, t.alert))
                causes.add(t.name)
            elif g is Grade.WARN:
                level = max(level, _DEGRADED)
                warns.append(_item(name, v, t, t.warn))
                causes.add(t.name)
        return _Round(level, (*alerts, *warns), tuple(sorted(causes)))

    def _grade_signal(self, record: Record) -> _Round:
        """A signal round, worded for the control room: "weak coverage: RSRP -118 dBm on
        telkomsel/modem0", "fell back to 3G on ...", "operator mismatch: ..."."""
        tags, fields = record.tags, record.fields
        where = f"{tags.get('operator', '')}/{tags.get('uplink', '')}"
        if record.error is not None:
            return _Round(_CRITICAL, (f"signal error={record.error} on {where}",), (record.error,))
        level = _GOOD
        alerts: list[str] = []
        warns: list[str] = []
        causes: set[str] = set()
        for name, t in self._graded("signal"):
            value = fields.get(name)
            if type(value) is not float and type(value) is not int:
                continue
            g = t.grade(float(value))
            if g is Grade.ALERT or g is Grade.WARN:
                what, label, unit = _SIGNAL_WORDS.get(name, (t.name, name, t.unit))
                text = f"{what}: {label} {_num(float(value))} {unit} on {where}"
                (alerts if g is Grade.ALERT else warns).append(text)
                level = max(level, _CRITICAL if g is Grade.ALERT else _DEGRADED)
                causes.add(t.name)
        generation = _FALLBACK.get(tags.get("access_tech", ""))
        if generation is not None:
            level = max(level, _DEGRADED)
            warns.append(f"fell back to {generation} on {where}")
            causes.add(f"fallback_{generation.lower()}")
        if fields.get("operator_mismatch") == 1:
            level = max(level, _DEGRADED)
            warns.append(f"operator mismatch: on {where}, not the configured operator")
            causes.add("operator_mismatch")
        if level == _GOOD:
            return _GOOD_ROUND
        return _Round(level, (*alerts, *warns), tuple(sorted(causes)))

    def _round(self, st: _Station, record: Record) -> None:
        if record.fields.get("skipped") == 1:
            return  # a heavy test skipped for budget or quiet hours says nothing of the link
        if record.kind == "signal" and record.error in _SIGNAL_UNREADABLE:
            return
        at = record.measured_at
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
        cache_key = (record.kind, tuple(record.tags.items()))
        hit = self._series_keys.get(cache_key)
        if hit is None:
            if len(self._series_keys) >= 500_000:
                self._series_keys.clear()
            hit = self._series_keys[cache_key] = _series_key(record)
        key, target, uplink = hit
        s = st.series.get(key)
        if s is None:
            s = st.series[key] = _Series(
                record.kind,
                _label(record.kind, target, uplink),
                target,
                uplink,
                deque(maxlen=self._n),
            )
        elif s.last_at is not None:
            if at <= s.last_at:
                return  # a resend, or out of order: counted once
            s.gap_s = (at - s.last_at).total_seconds()
        s.last_at = at
        s.last_fields = record.fields
        rnd = self._grade(record)
        window = s.window
        if len(window) == window.maxlen:  # the oldest round leaves the window
            gone = window[0].level
            s.critical -= gone == _CRITICAL
            s.breaching -= gone != _GOOD
        window.append(rnd)
        s.critical += rnd.level == _CRITICAL
        s.breaching += rnd.level != _GOOD
        s.clean_run = s.clean_run + 1 if rnd.level == _GOOD else 0
        s.noncrit_run = s.noncrit_run + 1 if rnd.level < _CRITICAL else 0
        s.status = self._next(s)

    def _next(self, s: _Series) -> Status:
        critical, breaching = s.critical, s.breaching  # counts kept by _round
        if critical >= self._m:
            return Status.CRITICAL
        if s.status is Status.CRITICAL:
            if s.noncrit_run < self._n:
                return Status.CRITICAL
            return Status.OK if s.clean_run >= self._n else Status.DEGRADED
        if breaching >= self._m:
            return Status.DEGRADED
        if s.status is Status.DEGRADED and s.clean_run < self._n:
            return Status.DEGRADED
        return Status.OK

    def _replay_backlog(self, sid: str, st: _Station, records: Sequence[Record]) -> list[Record]:
        """A silent station's upload: each series' newest round is current; its older rounds
        are history. They are debounced on a copy of the station's series (as before the
        silence), and every status change they make is kept, at its round's measured_at,
        for take_history(). Returns the records the live state counts."""
        newest: dict[tuple[str, tuple[tuple[str, str], ...]], Record] = {}
        for r in records:
            key = (r.kind, tuple(r.tags.items()))
            have = newest.get(key)
            if have is None or r.measured_at >= have.measured_at:
                newest[key] = r
        current = {id(r) for r in newest.values()}
        if len(current) == len(records):
            return list(records)
        scratch = _Station(Status.OK, st.since, series=copy.deepcopy(st.series))
        self._settle(scratch)
        level = scratch.status
        for r in records:
            if id(r) in current:
                continue
            self._round(scratch, r)
            self._settle(scratch)
            if scratch.status != level:
                level = scratch.status
                at = r.measured_at if r.measured_at.tzinfo else r.measured_at.replace(tzinfo=UTC)
                st.history.append(HistoryChange(sid, level, scratch.reasons, scratch.causes, at))
                self._with_history.add(sid)
        return [r for r in records if id(r) in current]

    def _prune(self, st: _Station) -> None:
        stamps = [s.last_at for s in st.series.values() if s.last_at is not None]
        if not stamps:
            return
        newest = max(stamps)
        floor = 2 * self._silent_s
        stale = [
            k
            for k, s in st.series.items()
            if s.last_at is not None
            and (newest - s.last_at).total_seconds()
            > max(floor, 3 * (UNKNOWN_GAP_S if s.gap_s is None else s.gap_s))
        ]
        for k in stale:
            del st.series[k]

    def _settle(self, st: _Station) -> None:
        """Station status, reasons and causes from its series (worst of)."""
        worst = max((s.status for s in st.series.values()), default=Status.OK)
        if st.carry is not None:
            if any(len(s.window) >= self._n for s in st.series.values()):
                st.carry = None  # the series have a full window of their own now
            elif st.carry > worst:
                st.status = st.carry
                return  # the restored status and its reasons hold
        st.status = worst
        if worst is Status.OK:
            st.reasons, st.causes = (), ()
            return
        hit = sorted((s for s in st.series.values() if s.status == worst), key=lambda s: s.label)
        reasons: list[str] = []
        causes: set[str] = set()
        bad = [s for s in st.series.values() if s.status is not Status.OK]
        bad_signal = sorted((s for s in bad if s.kind == "signal"), key=lambda s: s.label)
        bad_link = [s for s in bad if s.kind in _LINK_KINDS]
        if bad_signal and bad_link:
            # Said together: the radio is the likely cause of the link's trouble.
            uplinks = ", ".join(sorted({s.uplink for s in bad_signal}))
            reasons.append(_clip(f"latency and signal both bad (radio on {uplinks})"))
            hit = [*bad_signal, *(s for s in hit if s.kind != "signal")]
        for s in hit:
            rnd = _explaining_round(s)
            if rnd is None:
                continue
            causes.update(rnd.causes)
            if len(reasons) < MAX_REASONS:
                items = ", ".join(rnd.items)
                reasons.append(_clip(items if s.kind == "signal" else f"{s.label} {items}"))
        if len(hit) > MAX_REASONS:
            reasons.append(f"+{len(hit) - MAX_REASONS} more")
        st.reasons, st.causes = tuple(reasons), tuple(sorted(causes))

    def _snapshot(self, sid: str, st: _Station, now: datetime) -> StationSnapshot:
        series = list(st.series.values())
        stamps = [s.last_at for s in series if s.last_at is not None]
        icmp = [s for s in series if s.kind == "icmp" and s.last_at is not None]
        shown = max(icmp, key=lambda s: (s.status, s.last_at), default=None)
        values: dict[str, float] = {}
        if shown is not None:
            for name in _MAP_FIELDS:
                v = shown.last_fields.get(name)
                if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
                    values[name] = float(v)
        return StationSnapshot(
            station=sid,
            status=st.status,
            reasons=st.reasons,
            causes=st.causes,
            since=st.since,
            last_seen=st.last_rx,
            last_seen_s=None if st.last_rx is None else (now - st.last_rx).total_seconds(),
            measured_at=max(stamps, default=None),
            series=len(series),
            series_breaching=sum(1 for s in series if s.status is not Status.OK),
            rtt_p50_ms=values.get("rtt_p50_ms"),
            loss_pct=values.get("loss_pct"),
            jitter_ms=values.get("jitter_ms"),
            mos=values.get("mos"),
            icmp_target=None if shown is None else shown.target,
            icmp_uplink=None if shown is None else shown.uplink,
        )


# -- helpers ---------------------------------------------------------------------------------


def _series_key(record: Record) -> tuple[_SeriesKey, str, str]:
    """The series key, its target description and uplink."""
    spec = MEASUREMENTS.get(record.kind)
    order = spec.tags if spec is not None else tuple(sorted(record.tags))
    pairs = tuple(
        (k, record.tags[k]) for k in order if k in record.tags and k not in _SERIES_EXCLUDED_TAGS
    )
    target = " ".join(v for k, v in pairs if k != "uplink")
    return (record.kind, pairs), target, record.tags.get("uplink", "")


def _label(kind: str, target: str, uplink: str) -> str:
    return f"{kind}[{target}@{uplink}]" if uplink else f"{kind}[{target}]"


def _num(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.4g}"


def _item(name: str, value: float, t: Threshold, limit: float) -> str:
    op = (">" if t.higher_is_worse else "<") + ("=" if t.inclusive else "")
    return f"{name}={_num(value)}{op}{_num(limit)}"


def _clip(text: str) -> str:
    return text if len(text) <= MAX_REASON_LEN else text[: MAX_REASON_LEN - 3] + "..."


def _explaining_round(s: _Series) -> _Round | None:
    """The newest round in the window at the series' level (else the newest breaching one)."""
    want = _CRITICAL if s.status is Status.CRITICAL else _DEGRADED
    fallback: _Round | None = None
    for r in reversed(s.window):
        if r.level >= want:
            return r
        if fallback is None and r.level != _GOOD:
            fallback = r
    return fallback


def _time_ns(t: datetime) -> int:
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return (t - _EPOCH) // timedelta(microseconds=1) * 1000


def _tags(info: Station) -> dict[str, str]:
    sid = info.id
    province, regency = info.province, info.regency
    if sid.isdigit() and len(sid) >= 4:
        province = province or sid[:2]
        regency = regency or sid[:4]
    op = info.expected_operator
    tags = {"station": sid, "province": province, "regency": regency, "operator": op}
    return {k: str(v) for k, v in tags.items() if v}


def _fields(snap: StationSnapshot, info: Station, now: datetime) -> dict[str, int | float | str]:
    f: dict[str, int | float | str] = {
        "status": int(snap.status),
        "status_name": snap.status.label,
        "reasons": "; ".join(snap.reasons),
        "causes": ",".join(snap.causes),
        "status_age_s": max(0.0, (now - snap.since).total_seconds()),
        "series": snap.series,
        "series_breaching": snap.series_breaching,
    }
    optional: dict[str, float | None] = {
        "lat": info.lat,
        "lon": info.lon,
        "last_seen_s": None if snap.last_seen_s is None else max(0.0, snap.last_seen_s),
        "rtt_p50_ms": snap.rtt_p50_ms,
        "loss_pct": snap.loss_pct,
        "jitter_ms": snap.jitter_ms,
        "mos": snap.mos,
    }
    for k, v in optional.items():
        if v is not None and math.isfinite(float(v)):
            f[k] = float(v)
    if snap.icmp_target:
        f["icmp_target"] = snap.icmp_target
    if snap.icmp_uplink:
        f["icmp_uplink"] = snap.icmp_uplink
    if info.tz:  # the station's local zone, for times shown to the control room
        f["tz"] = info.tz
    return f
