"""The fleet benchmark's machinery, briefly (benchmarks/load.py, benchmarks/wrkload.py): wrk
replaying pre-built envelopes of 200 stations (each its own token, from the registry's bulk
path) for about 10 s through nginx (station routing, `hash ... consistent`) to two collector
processes and a real InfluxDB 1.6.7. Correctness only, never timing: every envelope answered
200, every record acknowledged (the Lua script counts the answers' ids) and stored once in
InfluxDB, both collector processes served stations, and each station went to one of them.
The warm-up (every station's one envelope first) is complete and counted apart: the measured
window's stored records are exactly its own."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from benchmarks.load import measure, setup_registry
from tests.conftest import require_tool
from tests.harness.dbs import InfluxServer

STATIONS = 200
ROUNDS = 2
RATE = 40.0  # envelopes/s: 200 stations x 2 rounds in 10 s


def accepted_by(url: str) -> int:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    m = re.search(r"^sinyal_records_accepted_total ([0-9.e+]+)$", text, re.M)
    assert m, "sinyal_records_accepted_total not in /metrics"
    return int(float(m.group(1)))


@pytest.mark.slow
def test_wrk_through_nginx_to_two_collectors(influxdb: InfluxServer, tmp_path: Path) -> None:
    for tool in ("wrk", "nginx", "influxd"):
        require_tool(tool)
    tokens, _ = setup_registry(tmp_path, influxdb.url, STATIONS)
    per_process: list[int] = []

    def count(procs: list[tuple[int, str]]) -> None:
        per_process.extend(accepted_by(url) for _, url in procs)

    m = measure(
        "smoke",
        tmp_path,
        influxdb,
        tokens,
        2,
        {"rate": RATE, "rounds": ROUNDS},
        connections=20,
        deadline_s=60,
        lead_s=3,
        before_stop=count,
        warmup_connections=20,
    )
    assert m.envelopes == STATIONS * ROUNDS and m.records == 4 * m.envelopes
    w = m.wrk
    assert m.finished, w
    assert (w["ok"], w["other"], w["rejected_envelopes"]) == (m.envelopes, 0, 0), w
    assert w["accepted"] == m.records, w
    assert sum(w["errors"].values()) == 0, w
    assert m.stored == m.records
    warm = m.warmup
    assert warm is not None and m.warmup_ok, warm
    assert (warm["envelopes"], warm["records"], warm["stored"]) == (
        STATIONS,
        4 * STATIONS,
        4 * STATIONS,
    ), warm
    # Both processes served (the hash spreads 200 stations), and a station's two rounds went
    # to the same process: a process's accepted count is a whole number of stations' rounds.
    assert sum(per_process) == m.records + warm["records"], per_process
    assert all(n > 0 for n in per_process), per_process
    assert all(n % (4 * (ROUNDS + 1)) == 0 for n in per_process), per_process
