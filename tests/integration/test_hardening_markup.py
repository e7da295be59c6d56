"""Finding 5 of issue 15: agent-supplied names reach the terminal as text, never as rich markup.

Records with hostile target and operator names go through the real collector into InfluxDB;
`sinyal-collector status` (the real view, reading InfluxDB) must neither crash on a target
named `[/]` nor hide a label such as `icmp[kpu@modem0]`. The agent's own table (`once`, the
live view) is rendered with the same names."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from rich.console import Console

from agent.contract.record import Record
from agent.contract.thresholds import load as load_thresholds
from agent.view import BoardView
from collector import cli, view
from tests.conftest import ROOT
from tests.harness.collector_stack import (
    Stack,
    collector_config_file,
    envelope,
    golden,
    running_collector,
    status_written,
)
from tests.harness.dbs import InfluxServer

# At most three reasons are shown per station (collector.status.MAX_REASONS): three targets.
HOSTILE_TARGETS = ["[/]", "kpu", "[bold red]x[/bold red]"]


@pytest.fixture
def stack(tmp_path: Path, influxdb: InfluxServer, influx_database: str) -> Iterator[Stack]:
    cfg = collector_config_file(tmp_path, influxdb.url, influx_database)
    with running_collector(cfg) as s:
        yield s


def seed(stack: Stack) -> None:
    """Five rounds of total loss for each hostile target: the station turns critical and its
    reasons name every target's series label (icmp[TARGET@modem0])."""
    recs = []
    for target in HOSTILE_TARGETS:
        for i in range(5):
            r = golden("icmp-total-loss", age_s=300 - 60 * i)
            r["tags"]["target"] = target
            recs.append(r)
    answer = httpx.post(
        f"{stack.url}/api/v1/measurements",
        json=envelope(recs),
        headers={"Authorization": f"Bearer {stack.token}"},
        timeout=30,
    )
    assert len(answer.json()["accepted"]) == len(recs), answer.text
    status_written(stack)  # station_status is written after the acknowledgement


def test_status_view_shows_hostile_names_verbatim(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(stack)
    rows = view.fetch(stack.cfg.sink)
    (row,) = rows
    assert "icmp[[/]@modem0]" in row.reasons and "icmp[kpu@modem0]" in row.reasons
    console = Console(record=True, width=400)
    console.print(view.render(rows))
    text = console.export_text()
    assert "icmp[kpu@modem0]" in text
    assert "icmp[[/]@modem0]" in text
    assert "icmp[[bold red]x[/bold red]@modem0]" in text
    # The command itself, as the control room runs it: exit 0, the labels on screen.
    assert cli.main(["status", "-c", str(stack.cfg.path)]) == 0
    out = re.sub(r"\s+", " ", capsys.readouterr().out)
    assert "icmp[kpu@modem0]" in out
    assert "icmp[[/]@modem0]" in out


def test_agent_table_shows_hostile_names_verbatim() -> None:
    th = load_thresholds(ROOT / "config" / "thresholds.yaml")
    board = BoardView(th, "3171011001001")
    now = datetime.now(UTC)
    board.board.update(
        [
            Record(
                "icmp",
                now,
                {"station": "3171011001001", "uplink": "[/]", "operator": "o", "target": t},
                {"sent": 3, "received": 3, "loss_pct": 0.0, "rtt_p50_ms": 12.0},
            )
            for t in ("[/]", "icmp[kpu@modem0]", "[red]z")
        ]
    )
    console = Console(record=True, width=300)
    console.print(board.render())
    text = console.export_text()
    for name in ("[/]", "icmp[kpu@modem0]", "[red]z"):
        assert name in text
