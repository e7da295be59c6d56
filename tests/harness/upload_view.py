"""One upload by the real agent uploader, then the live view rendered by rich to a fixed
80x24 console: what a technician's terminal shows. Used in-process by the tests, and as
`python -m tests.harness.upload_view URL TOKEN AGE_S` inside a network namespace (where the
collector's name cannot resolve); prints the screen's text."""

from __future__ import annotations

import asyncio
import io
import sys
import tempfile
from pathlib import Path

from rich.console import Console

from agent.config import CollectorEndpoint as Collector
from agent.contract.record import Record
from agent.contract.thresholds import load as load_thresholds
from agent.spool import Spool
from agent.uploader import Uploader
from agent.uploadstate import Health
from agent.view import BoardView, UploadView
from tests.conftest import ROOT
from tests.harness.collector_stack import STATION, golden

TZ = "Asia/Makassar"  # WITA: the screen must name the station's zone, not UTC
TARGETS = 30  # more icmp targets than 24 lines can hold as a table


def screen(url: str, token: str, age_s: float = 60.0, width: int = 80, height: int = 24) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        spool = Spool(Path(tmp) / "spool.sqlite3")
        records = []
        for i in range(TARGETS):
            # The last two targets are lost: the view must show them first.
            d = golden("icmp-ok" if i < TARGETS - 2 else "icmp-total-loss", age_s=age_s + i)
            d["tags"]["target"] = f"target-{i:02d}"
            records.append(Record.from_dict(d))
        records.append(Record.from_dict(golden("dns-ok", age_s=age_s)))
        spool.put(records)
        up = Uploader(spool, Collector(url, token=token, timeout_s=5), STATION)

        async def once() -> None:
            try:
                await up.upload_once()
            finally:
                await up.aclose()

        asyncio.run(once())
        view = BoardView(
            load_thresholds(ROOT / "config" / "thresholds.yaml"),
            STATION,
            lambda: "spool 12 KiB · dropped 0 · next icmp 12s · Ctrl-C stops",
            tz=TZ,
            upload=lambda: UploadView(
                Health.from_state(spool.state()),
                spool.stats().records,
                spool.stats().oldest_measured_at,
            ),
        )
        view.board.update(records)
        console = Console(
            width=width, height=height, record=True, file=io.StringIO(), color_system=None
        )
        console.print(view.render(console.width, console.height))
        spool.close()
        return console.export_text()


if __name__ == "__main__":
    sys.stdout.write(screen(sys.argv[1], sys.argv[2], float(sys.argv[3])))
