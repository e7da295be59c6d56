"""collector.status by measurement time and per shard (issue 20): a backlog after silence is
history, a restored status holds until a full window, a shard sweeps only what it owns; and
collector.statuswriter's bounded, transition-keeping queue."""

from __future__ import annotations

import random
from datetime import timedelta

from collector.status import Restored, Status, StatusEngine
from collector.statuswriter import StatusWriter
from tests.unit.test_status import INFO, SID, T0, FakeClock, engine, icmp, station

OK, DEG, CRIT, SILENT = Status.OK, Status.DEGRADED, Status.CRITICAL, Status.SILENT


def _dark(eng: StatusEngine, clock: FakeClock, rng: random.Random, first: int, n: int) -> None:
    """Rounds first..first+n-1 measured and uploaded one by one, all good."""
    for i in range(first, first + n):
        clock.t = T0 + timedelta(seconds=60 * i + 5)
        eng.observe(INFO, [icmp("G", i, rng)])


def test_the_drill_dark_station_comes_back_at_its_current_level() -> None:
    """issue 20: silent at T0+60 s, link back at T0+90 s, then critical from T0+96 s while
    the outage rounds arrived. Now the outage rounds are history at their own times and the
    current status comes from the fresh round."""
    eng, clock = engine(2, 3, silent=150)
    rng = random.Random(1)
    _dark(eng, clock, rng, 0, 4)  # rounds 0-3 uploaded
    clock.advance(200)
    (silent,) = eng.sweep()
    assert silent.new is SILENT
    # The link returns: one upload with the rounds measured in the dark (4-7 failed) and
    # a fresh good one (8).
    clock.t = T0 + timedelta(seconds=60 * 8 + 6)
    backlog = [icmp("E", i, rng) for i in range(4, 8)] + [icmp("G", 8, rng)]
    (back,) = eng.observe(INFO, backlog)
    assert (back.old, back.new) == (SILENT, OK)
    history = eng.take_history(SID)
    assert [(h.status, h.at) for h in history] == [(CRIT, T0 + timedelta(seconds=60 * 5))]
    assert "error=timeout" in history[0].reasons[0] and "timeout" in history[0].causes
    assert eng.take_history(SID) == []  # taken once
    # The history points are at their measurement times, marked history = 1.
    ((m, tags, fields, t_ns),) = eng.history_points(INFO, history, "s1")
    assert (m, tags["station"], fields["status"], fields["history"]) == (
        "station_status",
        SID,
        2,
        1,
    )
    assert fields["shard"] == "s1" and t_ns == int((T0.timestamp() + 300) * 1e9)
    snap = eng.snapshot(SID)
    assert snap is not None and snap.status is OK and snap.series == 1


def test_a_backlog_whose_newest_round_is_bad_is_debounced_from_that_round() -> None:
    eng, clock = engine(2, 3, silent=150)
    rng = random.Random(2)
    _dark(eng, clock, rng, 0, 3)
    clock.advance(200)
    eng.sweep()
    clock.t = T0 + timedelta(seconds=60 * 8)
    (back,) = eng.observe(INFO, [icmp("E", i, rng) for i in range(3, 8)])
    assert back.new is OK  # one critical round of its own: not yet critical (M = 2)
    clock.advance(60)
    (change,) = eng.observe(INFO, [icmp("E", 8, rng)])
    assert change.new is CRIT  # the second one flags it


def test_a_station_failing_before_the_dark_comes_back_critical() -> None:
    eng, clock = engine(2, 3, silent=150)
    rng = random.Random(3)
    for i in range(3):
        clock.t = T0 + timedelta(seconds=60 * i + 5)
        eng.observe(INFO, [icmp("C", i, rng)])
    clock.advance(200)
    eng.sweep()
    clock.t = T0 + timedelta(seconds=60 * 7)
    (back,) = eng.observe(INFO, [icmp("G", i, rng) for i in range(3, 7)])
    assert (back.old, back.new) == (SILENT, CRIT)  # one good round does not clear it
    # In its history the series cleared while the station was dark (the rounds say so).
    assert [h.status for h in eng.take_history(SID)] == [OK]


def test_a_backlog_of_a_station_that_is_not_silent_is_debounced_as_before() -> None:
    eng, clock = engine(2, 3, silent=300)
    rng = random.Random(4)
    _dark(eng, clock, rng, 0, 2)
    clock.advance(120)
    (change,) = eng.observe(INFO, [icmp("E", i, rng) for i in range(2, 5)])
    assert change.new is CRIT and not eng.has_history


def test_restored_status_holds_until_a_full_window_and_sweeps_only_what_is_owned() -> None:
    eng, clock = engine(2, 3, silent=60)
    reasons = ("icmp[kpu@modem0] error=timeout",)
    since, seen = T0 - timedelta(seconds=40), T0 - timedelta(seconds=10)
    mine = Restored(SID, CRIT, reasons, ("timeout",), T0, since, seen, owned=True)
    other = station("3171011001002", "31", "3171")
    theirs = Restored(other.id, OK, (), (), T0, T0, T0 - timedelta(seconds=5), owned=False)
    assert eng.restore([mine, theirs]) == 2
    assert eng.restore([mine]) == 0  # known already: left alone
    assert eng.owns(SID) and not eng.owns(other.id) and eng.owned() == {SID}
    snap = eng.snapshot(SID)
    assert snap is not None and snap.status is CRIT and snap.since == T0 - timedelta(seconds=40)
    rng = random.Random(5)
    statuses = []
    for i in range(3):  # good rounds: critical holds until the series has its own window
        clock.advance(20)
        eng.observe(INFO, [icmp("G", 100 + i, rng)])
        s = eng.snapshot(SID)
        assert s is not None
        statuses.append(s.status)
    assert statuses == [CRIT, CRIT, OK]
    # 70 s without uploads: only the owned station is overdue and swept.
    clock.advance(70)
    assert [sid for sid, _ in eng.overdue()] == [SID]
    eng.disown(SID)  # another shard took it over
    assert eng.overdue() == [] and eng.sweep() == []
    eng.observe(INFO, [icmp("G", 200, rng)])  # routed back here: owned again
    assert eng.owns(SID)


def test_never_reported_stations_are_flagged_by_the_designated_shard_only() -> None:
    never = station("3171011001009", "31", "3171")
    eng, clock = engine(2, 3, silent=60)
    clock.advance(61)
    assert eng.sweep([never], flag_never_reported=False) == []
    (change,) = eng.sweep([never], flag_never_reported=True)
    assert change.new is SILENT and eng.owns(never.id)
    assert [sid for sid, _ in eng.overdue(include_silent=True)] == [never.id]
    assert eng.overdue() == []


def _point(
    sid: str, status: int, t: int
) -> tuple[str, dict[str, str], dict[str, int | float | str], int]:
    return ("station_status", {"station": sid}, {"status": status}, t)


def test_status_writer_queue_keeps_every_transition_and_the_newest_refresh() -> None:
    async def never(lines: object) -> object:
        raise AssertionError("not written in this test")

    w = StatusWriter(never, per_station=4)  # type: ignore[arg-type]
    w.put([_point("a", 0, 1), _point("a", 0, 2), _point("a", 0, 3)])  # refreshes
    w.put([_point("a", 2, 4), _point("a", 2, 5), _point("a", 2, 6), _point("b", 3, 1)])
    queued = {sid: [(p[2]["status"], p[3]) for p in q] for sid, q in w._queue.items()}
    # a run of one status keeps its first point (the change) and its newest
    assert queued == {"a": [(0, 1), (0, 3), (2, 4), (2, 6)], "b": [(3, 1)]}
    w.put([_point("a", 1, 7), _point("a", 0, 8)])  # over the bound: the oldest go first
    assert [(p[2]["status"], p[3]) for p in w._queue["a"]] == [(2, 4), (2, 6), (1, 7), (0, 8)]
    assert w.dropped == 2 and w.pending() == 5
    # a history point older than what is queued goes in its place in time
    w.put([_point("b", 2, 0)])
    assert [p[3] for p in w._queue["b"]] == [0, 1]
