"""agent.view and agent.uploadstate without servers: the upload line for each state, the
fit to the terminal, and times in the station's zone with its name."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest
from rich.console import Console

from agent.contract.record import Record
from agent.contract.thresholds import load as load_thresholds
from agent.uploadstate import Health, ago, classify_status, format_local
from agent.view import BoardView, UploadView, format_line, upload_text
from tests.conftest import ROOT
from tests.harness.collector_stack import golden

TH = load_thresholds(ROOT / "config" / "thresholds.yaml")
NOW = datetime(2026, 4, 14, 6, 30, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("tz", "text"),
    [
        ("Asia/Jakarta", "2026-04-14 13:30:00 WIB"),
        ("Asia/Makassar", "2026-04-14 14:30:00 WITA"),
        ("Asia/Jayapura", "2026-04-14 15:30:00 WIT"),
    ],
)
def test_local_time_names_the_zone(tz: str, text: str) -> None:
    assert format_local(NOW, tz) == text
    assert format_local("2026-04-14T06:30:00Z", tz) == text
    assert format_local(None, tz) == "never"


def test_ago() -> None:
    assert [ago(s) for s in (5, 119, 600, 3 * 3600 + 300, 2 * 86400 + 4 * 3600)] == [
        "5 s", "119 s", "10 min", "3 h 05 min", "2 d 4 h"
    ]  # fmt: skip


def health(**state: str) -> Health:
    return Health.from_state(state)


def test_upload_line_for_each_state() -> None:
    tz = "Asia/Jakarta"
    ok = upload_text(UploadView(health(last_upload_at="2026-04-14T06:29:00Z",
                                       upload_kind="ok"), 0, None), tz, NOW)  # fmt: skip
    assert ok.plain == "upload ok · last 2026-04-14 13:29:00 WIB · backlog 0"
    kind, reason = classify_status(401, "HTTP 401: unknown token")
    failing = upload_text(
        UploadView(
            health(upload_kind=kind, upload_reason=reason, upload_since="2026-04-14T06:00:00Z"),
            120,
            "2026-04-14T05:30:00Z",
        ),
        tz,
        NOW,
    )
    assert failing.plain == (
        "UPLOAD FAILING: token refused (401): revoked or wrong token; enrol again · since "
        "2026-04-14 13:00:00 WIB · last ok never · backlog 120, oldest 2026-04-14 12:30:00 WIB "
        "(1 h 00 min ago)"
    )
    assert upload_text(UploadView(health(), 3, None), tz, NOW).plain.startswith(
        "upload: not yet tried"
    )
    assert "no collector configured" in upload_text(None, tz, NOW).plain


@pytest.mark.parametrize(("width", "height"), [(80, 24), (60, 15), (160, 50)])
def test_the_view_fits_the_terminal(width: int, height: int) -> None:
    records = []
    for i in range(40):
        d = golden("icmp-ok" if i % 7 else "icmp-total-loss")
        d["tags"]["target"] = f"t{i:02d}"
        records.append(Record.from_dict(d))
    view = BoardView(TH, "3171011001001", lambda: "spool 0 records", "Asia/Jayapura",
                     lambda: UploadView(health(), 0, None))  # fmt: skip
    view.board.update(records)
    console = Console(width=width, height=height, file=io.StringIO(), record=True)
    console.print(view.render(width, height))
    text = console.export_text()
    lines = text.rstrip("\n").split("\n")
    assert len(lines) <= height
    assert all(len(line) <= width for line in lines)
    assert lines[0].endswith(" WIT") and lines[1].startswith("upload: not yet tried")
    assert lines[-1] == "spool 0 records"
    narrow = width < 100
    assert ("recent" in text) is not narrow  # no sparkline when narrow


def test_log_line_in_local_time() -> None:
    r = Record.from_dict(golden("icmp-ok"))
    assert format_line(r, "Asia/Makassar").startswith(format_local(r.measured_at, "Asia/Makassar"))
    assert format_line(r).startswith(r.measured_at.strftime("%Y-%m-%dT%H:%M:%SZ"))
