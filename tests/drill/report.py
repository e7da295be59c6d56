"""The drill's report: for each injected problem and station, when it was injected and when the
collector's `station_status` flagged it and cleared it, against the targets; and whether the
stations nobody touched stayed ok. Written as Markdown (for people) and JSON (for tests and
tools) from the same data.

Times are the collector's: a `station_status` point's timestamp is the instant the collector
changed the status (it writes the point then), so time to flag = first point after the
injection whose status means the problem (`Problem.flags`) minus the injection instant; time
to clear = first `ok` point after the recovery, minus the recovery instant.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from collector.station import Station
from tests.drill.plan import STATUS_NAMES, Problem, Timing
from tests.drill.run import Observed, Point


@dataclass
class Outcome:
    problem: str
    station: str
    operator: str
    province: str
    expect: str
    injected_at: str
    recovered_at: str | None
    flagged_as: str | None
    time_to_flag_s: float | None
    flag_target_s: float
    cleared: bool
    time_to_clear_s: float | None
    clear_target_s: float
    path: list[str]  # the statuses the control room saw, "degraded@+21.3s"

    @property
    def flag_ok(self) -> bool:
        return self.time_to_flag_s is not None and self.time_to_flag_s <= self.flag_target_s

    @property
    def clear_ok(self) -> bool:
        return self.time_to_clear_s is not None and self.time_to_clear_s <= self.clear_target_s


@dataclass
class Report:
    form: str
    started: str
    duration_s: float
    real_stations: int
    simulated_stations: int
    simulator: str
    settings: dict[str, Any]
    targets: dict[str, float]
    problems: list[dict[str, Any]]
    outcomes: list[Outcome]
    untouched: list[str]
    untouched_not_ok: dict[str, list[str]]  # station -> non-ok statuses seen
    early_alarms: dict[str, list[str]]  # injected stations flagged before their injection
    simulated_last: dict[str, int] = field(default_factory=dict)  # last status -> stations
    simulator_report: Any = None
    failures: list[str] = field(default_factory=list)
    shards: int = 1  # collector processes (behind nginx when more than one)
    shard_events: list[str] = field(default_factory=list)  # collectors killed and restarted

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        for o, od in zip(self.outcomes, d["outcomes"], strict=True):
            od["flag_ok"], od["clear_ok"] = o.flag_ok, o.clear_ok
        return d


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build(
    obs: Observed,
    timing: Timing,
    problems: Sequence[Problem],
    real: Sequence[Station],
    simulated: Sequence[Station],
) -> Report:
    by_station: dict[str, list[Point]] = {}
    for p in obs.points:
        by_station.setdefault(p.station, []).append(p)
    info = {s.id: s for s in real}
    outcomes: list[Outcome] = []
    early: dict[str, list[str]] = {}
    failures: list[str] = []
    for prob in problems:
        t_in = obs.injected.get(prob.key)
        t_out = obs.recovered.get(prob.key)
        if t_in is None:
            failures.append(f"{prob.key}: never injected (the drill stopped early)")
            continue
        for sid in prob.stations:
            pts = by_station.get(sid, [])
            bad_before = [
                f"{STATUS_NAMES[p.status]}@{_iso(p.t)}" for p in pts if p.t < t_in and p.status
            ]
            if bad_before:
                early[sid] = bad_before
            flag = next((p for p in pts if p.t >= t_in and prob.flags(p.status)), None)
            clear = None
            if flag is not None and t_out is not None:
                clear = next((p for p in pts if p.t >= max(t_out, flag.t) and p.status == 0), None)
            path: list[str] = []
            last = 0
            for p in pts:
                if p.t >= t_in and p.status != last:
                    path.append(f"{STATUS_NAMES[p.status]}@T0{p.t - obs.t0:+.1f}s")
                    last = p.status
            s = info[sid]
            o = Outcome(
                problem=prob.key,
                station=sid,
                operator=s.expected_operator or "",
                province=s.province,
                expect=prob.expect,
                injected_at=_iso(t_in) or "",
                recovered_at=_iso(t_out),
                flagged_as=None if flag is None else STATUS_NAMES[flag.status],
                time_to_flag_s=None if flag is None else round(flag.t - t_in, 1),
                flag_target_s=timing.flag_target_s(prob.expect),
                cleared=clear is not None,
                time_to_clear_s=None
                if clear is None or t_out is None
                else round(clear.t - t_out, 1),
                clear_target_s=timing.clear_target_s(prob.expect),
                path=path,
            )
            outcomes.append(o)
            if not o.flag_ok:
                got = "never flagged" if flag is None else f"flagged after {o.time_to_flag_s} s"
                failures.append(
                    f"{prob.key} {sid}: {got}, target {o.flag_target_s:g} s ({prob.expect})"
                )
            if not o.clear_ok:
                got = "never cleared" if clear is None else f"cleared after {o.time_to_clear_s} s"
                failures.append(f"{prob.key} {sid}: {got}, target {o.clear_target_s:g} s")
    injected = {sid for p in problems for sid in p.stations}
    untouched = [s.id for s in real if s.id not in injected]
    not_ok = {
        sid: [f"{STATUS_NAMES[p.status]}@{_iso(p.t)}" for p in by_station.get(sid, []) if p.status]
        for sid in untouched
    }
    not_ok = {k: v for k, v in not_ok.items() if v}
    for sid, bad in not_ok.items():
        failures.append(f"untouched station {sid} was not ok: {', '.join(bad)}")
    for sid, bad in early.items():
        failures.append(f"station {sid} was flagged before its injection: {', '.join(bad)}")
    missing = sorted({s.id for s in real} - set(by_station))
    if missing:
        failures.append(f"no status point at all for {', '.join(missing)}")
    return Report(
        form=timing.form,
        started=_iso(obs.started) or "",
        duration_s=round(obs.ended - obs.started, 1),
        real_stations=len(real),
        simulated_stations=len(simulated),
        simulator=obs.simulator,
        settings={
            "icmp_interval_s": timing.interval_s,
            "icmp_count": timing.count,
            "breach_m": timing.breach_m,
            "window_n": timing.window_n,
            "silent_after_s": timing.silent_after_s,
            "sweep_interval_s": timing.sweep_interval_s,
        },
        targets={
            "flag_degraded_or_critical_s": timing.flag_target_s("degraded"),
            "flag_silent_s": timing.flag_target_s("silent"),
            "clear_degraded_or_critical_s": timing.clear_target_s("degraded"),
            "clear_silent_s": timing.clear_target_s("silent"),
        },
        problems=[
            {
                "key": p.key,
                "title": p.title,
                "expect": p.expect,
                "stations": list(p.stations),
                "impairment": p.impairment,
                "injected_at": _iso(obs.injected.get(p.key)),
                "recovered_at": _iso(obs.recovered.get(p.key)),
            }
            for p in problems
        ],
        outcomes=outcomes,
        untouched=untouched,
        untouched_not_ok=not_ok,
        early_alarms=early,
        simulated_last=_last_statuses(by_station, [s.id for s in simulated]),
        simulator_report=obs.simulator_report,
        failures=failures,
        shards=obs.shards,
        shard_events=list(obs.shard_events),
    )


def _last_statuses(by_station: dict[str, list[Point]], ids: Sequence[str]) -> dict[str, int]:
    """How many of these stations were last seen in each status ("none": no point at all)."""
    out: dict[str, int] = {}
    for sid in ids:
        pts = by_station.get(sid)
        name = STATUS_NAMES[pts[-1].status] if pts else "none"
        out[name] = out.get(name, 0) + 1
    return out


def _s(v: float | None) -> str:
    return "—" if v is None else f"{v:.1f} s"


def markdown(r: Report) -> str:
    t = r.targets
    st = r.settings
    lines = [
        f"# Sinyal voting-day drill, {r.started} ({r.form} form, {r.duration_s:.0f} s)",
        "",
        f"**Result: {'PASS' if r.passed else 'FAIL'}**"
        + ("" if r.passed else f" ({len(r.failures)} check(s) failed, listed at the end)"),
        "",
        f"- Real stations: {r.real_stations} (one `sinyal-agent run` each, in its own network"
        " namespace of the field lab)",
        f"- {r.simulator}",
        f"- Collectors: {r.shards}"
        + (
            " processes behind nginx (every station routed to one, consistent hash of its"
            " station); " + ("; ".join(r.shard_events) or "none killed")
            if r.shards > 1
            else " process"
        ),
        f"- Settings: icmp every {st['icmp_interval_s']:g} s ({st['icmp_count']} pings per"
        f" target, 3 targets); status after {st['breach_m']} of {st['window_n']} rounds;"
        f" silent after {st['silent_after_s']:g} s, swept every {st['sweep_interval_s']:g} s",
        f"- Targets (issue 6): flag degraded/critical <= 2 rounds + 30 s ="
        f" {t['flag_degraded_or_critical_s']:g} s; flag silent <= silence time + 30 s ="
        f" {t['flag_silent_s']:g} s",
        f"- Clear targets (this drill's own; the issue sets none): window_n rounds + 30 s ="
        f" {t['clear_degraded_or_critical_s']:g} s; back from the dark, plus the agent's"
        f" upload retry wait: {t['clear_silent_s']:g} s",
        "",
        "## Timeline",
        "",
        "| problem | stations | expected | injected (UTC) | recovered (UTC) |",
        "|---|---|---|---|---|",
    ]
    for p in r.problems:
        lines.append(
            f"| {p['title']} | {', '.join(p['stations'])} | {p['expect']} |"
            f" {p['injected_at'] or '—'} | {p['recovered_at'] or '—'} |"
        )
    lines += [
        "",
        "## Time to flag and to clear",
        "",
        "| problem | station | operator | flagged as | time to flag | target | time to clear"
        " | target | statuses seen (from T0) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for o in r.outcomes:
        flag = f"{_s(o.time_to_flag_s)} {'ok' if o.flag_ok else 'MISSED'}"
        clear = f"{_s(o.time_to_clear_s)} {'ok' if o.clear_ok else 'MISSED'}"
        lines.append(
            f"| {o.problem} | {o.station} | {o.operator} | {o.flagged_as or '—'} | {flag} |"
            f" {o.flag_target_s:g} s | {clear} | {o.clear_target_s:g} s |"
            f" {' → '.join(o.path) or '—'} |"
        )
    lines += ["", "## Stations not injected", ""]
    if r.untouched_not_ok:
        for sid, bad in r.untouched_not_ok.items():
            lines.append(f"- {sid}: NOT ok at {', '.join(bad)}")
    else:
        lines.append(
            f"All {len(r.untouched)} stayed ok throughout (no `station_status` point other"
            " than ok)."
        )
    if r.simulated_last:
        last = ", ".join(f"{k} {v}" for k, v in sorted(r.simulated_last.items()))
        lines += ["", f"Simulated stations' last status (not checked): {last}."]
    if r.simulator_report is not None:
        text = json.dumps(r.simulator_report, indent=2)
        if len(text) > 4000:
            text = text[:4000] + "\n... (the whole report is in report.json)"
        lines += ["", "## Simulator report", "", "```json", text, "```"]
    if r.failures:
        lines += ["", "## Failed checks", ""] + [f"- {f}" for f in r.failures]
    return "\n".join(lines) + "\n"


def write(r: Report, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    md, js = out / "report.md", out / "report.json"
    md.write_text(markdown(r), encoding="utf-8")
    js.write_text(json.dumps(r.to_json(), indent=2) + "\n", encoding="utf-8")
    return md, js
