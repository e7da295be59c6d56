"""What a report covers: the period, the zones, the region/operator/station filters.

A period is given in local time. With `--zone` (WIB, WITA or WIT) `--from/--to` are read in
that zone for every station; without it each station's own zone (its registry `tz`) is used,
so "3 December" is each station's local 3 December. Voting hours (07:00-13:00) are always the
station's own local hours, as polling stations open and close by local time.

Stations are grouped by their UTC offset (WIB +7, WITA +8, WIT +9: Asia/Pontianak is WIB);
each group gets its own list of UTC windows. The query layer turns that into one InfluxQL
source per (group, window).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from collector.station import Station

ZONES: dict[str, int] = {"WIB": 7, "WITA": 8, "WIT": 9}
VOTING_OPEN = time(7, 0)
VOTING_CLOSE = time(13, 0)  # voting runs 07:00-13:00 local time (PKPU; standards.md 3.3)
FORMATS = ("csv", "xlsx", "pdf", "html")
LANGS = ("id", "en")
DEFAULT_INTERVAL_S = 60.0  # the agent's default icmp interval_s (agent/config.py)

_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_TIME_RE = re.compile(r"^(\d{4}-\d{2}-\d{2})[T ](\d{2}):(\d{2})(?::(\d{2}))?$")


class ReportError(Exception):
    """A report that cannot be made; the message says what to change."""


def zone_name(offset_h: int) -> str:
    for name, h in ZONES.items():
        if h == offset_h:
            return name
    return f"UTC{offset_h:+d}"


def fixed_zone(offset_h: int) -> tzinfo:
    from datetime import timezone

    return timezone(timedelta(hours=offset_h), zone_name(offset_h))


def station_offset(st: Station) -> int:
    """The station's UTC offset in whole hours (Indonesia has no DST)."""
    try:
        tz = ZoneInfo(st.tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ReportError(f"station {st.id}: unknown time zone {st.tz!r} in the registry") from None
    off = datetime(2024, 2, 14, tzinfo=UTC).astimezone(tz).utcoffset() or timedelta()
    return int(off.total_seconds() // 3600)


@dataclass(frozen=True)
class LocalTime:
    """A --from/--to value: a naive local date-time, and whether it was a bare date."""

    value: datetime
    date_only: bool


def parse_local(text: str, option: str, end: bool) -> LocalTime:
    t = text.strip()
    try:
        if _DATE_RE.match(t):
            d = date.fromisoformat(t)
            # --to 2026-12-03 means up to the end of that day.
            base = datetime.combine(d, time())
            return LocalTime(base + timedelta(days=1) if end else base, True)
        m = _TIME_RE.match(t)
        if m:
            d = date.fromisoformat(m.group(1))
            hh, mm, ss = int(m.group(2)), int(m.group(3)), int(m.group(4) or 0)
            return LocalTime(datetime.combine(d, time(hh, mm, ss)), False)
    except ValueError:
        pass
    raise ReportError(
        f"{option}: got {text!r}, expected a local date YYYY-MM-DD or time YYYY-MM-DDTHH:MM"
    )


@dataclass(frozen=True)
class Window:
    start: datetime  # UTC, inclusive
    end: datetime  # UTC, exclusive

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()


@dataclass(frozen=True)
class ZoneGroup:
    """The stations of one UTC offset and the UTC windows the report covers for them."""

    offset_h: int
    stations: tuple[Station, ...]
    windows: tuple[Window, ...]

    @property
    def zone(self) -> str:
        return zone_name(self.offset_h)

    @property
    def seconds(self) -> float:
        return sum(w.seconds for w in self.windows)


@dataclass(frozen=True)
class ReportRequest:
    """The options of `sinyal-collector report` and of the /reports form."""

    start: str
    end: str
    zone: str | None = None
    province: str | None = None
    regency: str | None = None
    operator: str | None = None
    station: str | None = None
    voting_hours: bool = False
    lang: str = "id"
    formats: tuple[str, ...] = ("csv", "xlsx", "pdf")
    by_regency: bool = False
    interval_s: float = DEFAULT_INTERVAL_S


@dataclass(frozen=True)
class Scope:
    request: ReportRequest
    groups: tuple[ZoneGroup, ...]
    stations: tuple[Station, ...]  # registered stations in scope
    generated_at: datetime  # UTC
    clipped: bool  # the period reached past now and was cut at the generation time
    period_start_local: datetime
    period_end_local: datetime
    notes: list[str] = field(default_factory=list)

    @property
    def display_zone(self) -> int:
        """The offset the report prints its times in where one zone must be chosen (charts,
        cover): --zone, else the zone most of the stations in scope are in."""
        if self.request.zone:
            return ZONES[self.request.zone]
        if not self.groups:
            return ZONES["WIB"]
        return max(self.groups, key=lambda g: len(g.stations)).offset_h

    @property
    def single_window(self) -> Window | None:
        """The one UTC window shared by every group, when there is one (no per-zone split)."""
        wins = {g.windows for g in self.groups}
        if len(wins) == 1:
            (ws,) = wins
            if len(ws) == 1:
                return ws[0]
        return None

    @property
    def bounds(self) -> Window:
        starts = [w.start for g in self.groups for w in g.windows]
        ends = [w.end for g in self.groups for w in g.windows]
        return Window(min(starts), max(ends))


def _windows(
    start: LocalTime, end: LocalTime, offset_h: int, zone_h: int | None, voting: bool, now: datetime
) -> tuple[Window, ...]:
    """UTC windows for stations at `offset_h`; the period is read in `zone_h` (or theirs)."""
    read_in = fixed_zone(zone_h if zone_h is not None else offset_h)
    s = start.value.replace(tzinfo=read_in).astimezone(UTC)
    e = min(end.value.replace(tzinfo=read_in).astimezone(UTC), now)
    if not voting:
        return (Window(s, e),) if e > s else ()
    own = fixed_zone(offset_h)
    out: list[Window] = []
    day = s.astimezone(own).date() - timedelta(days=1)
    while True:
        vo = datetime.combine(day, VOTING_OPEN, own).astimezone(UTC)
        vc = datetime.combine(day, VOTING_CLOSE, own).astimezone(UTC)
        if vo >= e:
            break
        lo, hi = max(vo, s), min(vc, e)
        if hi > lo:
            out.append(Window(lo, hi))
        day += timedelta(days=1)
    return tuple(out)


def resolve(
    req: ReportRequest,
    stations: Sequence[Station],
    known_operators: Sequence[str],
    now: datetime | None = None,
) -> Scope:
    """Check the request against the registry and the clock; compute every zone's windows.
    Raises ReportError naming the option, the bad value and what would be accepted."""
    now = now or datetime.now(UTC)
    if req.lang not in LANGS:
        raise ReportError(f"--lang: got {req.lang!r}, expected id or en")
    bad = [f for f in req.formats if f not in FORMATS]
    if bad or not req.formats:
        raise ReportError(
            f"--format: got {','.join(req.formats)!r}, expected some of {','.join(FORMATS)}"
        )
    if req.zone is not None and req.zone not in ZONES:
        raise ReportError(f"--zone: got {req.zone!r}, expected WIB, WITA or WIT")
    if not req.interval_s > 0:
        raise ReportError(f"--interval: got {req.interval_s!r}, expected seconds > 0")
    start = parse_local(req.start, "--from", end=False)
    end = parse_local(req.end, "--to", end=True)
    if end.value <= start.value:
        raise ReportError(
            f"--from {req.start} / --to {req.end}: an empty period, expected --to after --from"
        )
    provinces = sorted({s.province for s in stations})
    if req.province is not None and req.province not in provinces:
        raise ReportError(
            f"--province: got {req.province!r}, expected a province of the registry: "
            + ", ".join(provinces)
        )
    in_scope = [s for s in stations if req.province is None or s.province == req.province]
    if req.regency is not None:
        regencies = sorted({s.regency for s in in_scope})
        if req.regency not in regencies:
            raise ReportError(
                f"--regency: got {req.regency!r}, expected a regency of the registry"
                + (f" in {req.province}" if req.province else "")
                + ": "
                + ", ".join(regencies)
            )
        in_scope = [s for s in in_scope if s.regency == req.regency]
    if req.operator is not None and req.operator not in known_operators:
        raise ReportError(
            f"--operator: got {req.operator!r}, expected one of "
            + (", ".join(sorted(known_operators)) or "(no operator has reported yet)")
        )
    if req.operator is not None:
        # Stations expected on another operator are out of scope; a station with no expected
        # operator in the registry stays (its uplinks' records say which operator they used).
        in_scope = [s for s in in_scope if s.expected_operator in (None, req.operator)]
    if req.station is not None:
        in_scope = [s for s in in_scope if s.id == req.station]
        if not in_scope:
            raise ReportError(
                f"--station: got {req.station!r}, expected a registered station id"
                + (" within the other filters" if req.province or req.regency else "")
            )
    if not in_scope:
        raise ReportError("no registered station matches the filters; see `stations list`")
    zone_h = ZONES[req.zone] if req.zone else None
    first_start = min(
        start.value.replace(tzinfo=fixed_zone(zone_h or station_offset(s))) for s in in_scope
    )
    if first_start >= now:
        raise ReportError(
            f"--from {req.start}: the period is in the future (now is "
            f"{now.strftime('%Y-%m-%d %H:%M')} UTC); expected a period that has begun"
        )
    by_offset: dict[int, list[Station]] = {}
    for s in in_scope:
        by_offset.setdefault(station_offset(s), []).append(s)
    groups: list[ZoneGroup] = []
    clipped = False
    for off in sorted(by_offset):
        read_in = fixed_zone(zone_h if zone_h is not None else off)
        if end.value.replace(tzinfo=read_in) > now:
            clipped = True
        wins = _windows(start, end, off, zone_h, req.voting_hours, now)
        groups.append(ZoneGroup(off, tuple(by_offset[off]), wins))
    if not any(g.windows for g in groups):
        raise ReportError(
            f"--from {req.start} / --to {req.end}"
            + (" with --voting-hours" if req.voting_hours else "")
            + ": the period holds no time that has passed yet; expected an earlier period"
        )
    return Scope(
        req,
        tuple(g for g in groups if g.windows),
        tuple(in_scope),
        now,
        clipped,
        start.value,
        end.value,
    )
