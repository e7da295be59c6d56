"""agent.view: what a technician sees, rendered to a recording rich console 80 columns wide,
and the single log line per record shown when there is no terminal."""

from __future__ import annotations

import dataclasses
import io
import json
from datetime import UTC, datetime, timedelta

from rich.console import Console

from agent.contract.record import Record
from agent.contract.thresholds import Thresholds, load
from agent.view import HISTORY, Board, BoardView, LiveView, format_line, render_table, sparkline
from agent.view import series_key as view_key
from tests.conftest import FIXTURES, GOLDEN_RECORDS, ROOT

THRESHOLDS: Thresholds = load(ROOT / "config" / "thresholds.yaml")
STATION = "3171011001001"


def golden(name: str, age_s: float = 5.0) -> Record:
    r = Record.from_dict(json.loads((FIXTURES / "records" / f"{name}.json").read_text()))
    return dataclasses.replace(r, measured_at=datetime.now(UTC) - timedelta(seconds=age_s))


def console() -> Console:
    return Console(record=True, width=80, file=io.StringIO())


def test_render_table_shows_every_kind_with_its_results() -> None:
    c = console()
    render_table([golden(n) for n in GOLDEN_RECORDS], THRESHOLDS, STATION, c)
    text = c.export_text()
    lines = text.splitlines()
    assert lines[0].startswith(f"Sinyal · station {STATION} · ")  # then the local time
    titles = [ln.strip() for ln in lines if ln.strip() in
              {"icmp", "dns", "http", "throughput", "upload"}]  # fmt: skip
    assert titles == ["dns", "http", "icmp", "throughput", "upload"]  # sorted by kind
    assert all(len(ln) <= 80 for ln in lines)
    assert "kpu.go.id@google" in text  # a DNS series: qname@resolver
    assert "38.2" in text  # its resolve_ms, three digits
    assert "26.7" in text and "38.1" in text  # icmp-ok's p50 and p95
    assert "timeout" in text  # icmp-total-loss: its error (80 columns show p50 and p95 only)
    assert "connection_refused" in text  # http-refused: its error
    assert "–" in text  # a field the record does not have
    assert "5 s" in text  # age of the latest result


def test_empty_board_and_status_line() -> None:
    c = console()
    view = BoardView(THRESHOLDS, STATION, status_line=lambda: "spool 3 · next icmp in 12 s")
    c.print(view.render())
    head, *rest = c.export_text().splitlines()
    assert head.startswith(f"Sinyal · station {STATION} · ")
    assert rest == ["waiting for the first results…", "spool 3 · next icmp in 12 s"]


def test_cells_are_coloured_by_the_thresholds() -> None:
    view = BoardView(THRESHOLDS, STATION)
    ok, lost = golden("icmp-ok"), golden("icmp-total-loss")
    assert view.cell(ok, "rtt_p50_ms") == "[green]26.7[/]"  # below good (100 ms)
    assert view.cell(lost, "loss_pct") == "[bold red]100.0[/]"  # at or above alert (2 %)
    assert view.cell(lost, "mos") == "[bold red]1[/]"  # lower is worse: below alert (3.1)
    assert view.cell(lost, "rtt_p50_ms") == "[dim]–[/]"
    assert view.cell(golden("dns-ok"), "rcode") == "0"  # no threshold: no colour
    slow = dataclasses.replace(ok, fields={**ok.fields, "rtt_p50_ms": 120.0})
    assert view.cell(slow, "rtt_p50_ms") == "[yellow]120.0[/]"  # fair: good..warn
    c = Console(record=True, width=80, file=io.StringIO(), force_terminal=True,
                color_system="standard")  # fmt: skip
    render_table([ok], THRESHOLDS, STATION, c)
    assert "\x1b[32m26.7" in c.export_text(styles=True)  # green on a real terminal


def test_board_keeps_the_latest_rounds_failures_and_history() -> None:
    board = Board()
    ok = golden("icmp-ok")
    for i in range(HISTORY + 5):
        fields = {**ok.fields, "rtt_p50_ms": float(i)}
        board.update([dataclasses.replace(ok, fields=fields)])
    failed = golden("icmp-ok")
    failed = dataclasses.replace(failed, error="timeout", fields={"ok": 0})
    board.update([failed, golden("dns-ok")])
    row = board.rows[("icmp", "modem0", "nix-jakarta")]
    assert row.latest is failed
    assert (row.rounds, row.failures) == (HISTORY + 6, 1)
    assert list(row.history) == [float(i) for i in range(6, HISTORY + 5)] + [None]
    assert len(board.rows) == 2


def test_series_keys_and_log_lines() -> None:
    assert view_key(golden("icmp-ok")) == ("icmp", "modem0", "nix-jakarta")
    assert view_key(golden("dns-ok")) == ("dns", "modem0", "kpu.go.id@google")
    agent = Record("agent", datetime(2026, 11, 22, 4, 0, tzinfo=UTC), {"station": STATION},
                   {"spool_records": 12, "cpu_pct": 1.25, "rss_mb": 41.0})  # fmt: skip
    assert view_key(agent) == ("agent", "-", "self")
    assert format_line(agent) == (
        "2026-11-22T04:00:00Z agent uplink=- target=self ok spool=12 cpu=1.25% rss=41.0MB"
    )
    lost = Record.from_dict(json.loads((FIXTURES / "records" / "icmp-total-loss.json").read_text()))
    assert format_line(lost) == (
        f"{lost.measured_at:%Y-%m-%dT%H:%M:%SZ} icmp uplink=modem0 target=kpu error=timeout "
        "loss=100.0% mos=1"
    )
    big = dataclasses.replace(golden("http-ok"), fields={"bytes": 48213, "total_ms": 1234.5})
    assert format_line(big).endswith(" ok total=1234ms bytes=48213B")


def test_sparkline() -> None:
    assert sparkline([]) == ""
    assert sparkline([None, None]) == "··"
    assert sparkline([1.0, 1.0]) == "▁▁"  # flat: the lowest block
    assert sparkline([0.0, None, 3.5, 7.0]) == "▁·▅█"


def test_live_view_redraws_with_new_results() -> None:
    c = console()
    view = BoardView(THRESHOLDS, STATION)
    with LiveView(view, c) as live:
        live.update([golden("icmp-ok")])
        live.update([golden("dns-ok")])
    text = c.export_text()
    assert "nix-jak" in text and "kpu.go.id@google" in text
    assert view.board.rows.keys() == {
        ("icmp", "modem0", "nix-jakarta"), ("dns", "modem0", "kpu.go.id@google"),
    }  # fmt: skip
