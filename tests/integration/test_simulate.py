"""The fleet simulator against a real collector and a real InfluxDB 1.6.7: every record made
lands once, the profiles give the statuses the thresholds say, deadzone stations stay silent,
clockwrong stations' records get the collector's time; bad input is exit 2 with a message
that names the file, the line and the value."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.contract.record import Record
from benchmarks import simulate
from benchmarks.simulate import main
from collector.config import CollectorConfig
from collector.regions import tps_code
from collector.registry import Registry
from tests.harness.collector_stack import (
    Stack,
    collector_config_file,
    free_port,
    running_collector,
    status_written,
)
from tests.harness.dbs import InfluxServer

N = 40
IDS = [tps_code("3172", i) for i in range(1, N + 1)]  # Kota Jakarta Utara
PROFILES = "good4g=0.3,congested=0.25,flapping=0.15,deadzone=0.15,clockwrong=0.15"


@dataclass
class Fleet:
    stack: Stack
    tokens: Path


def provision(cfg: CollectorConfig, tmp: Path) -> Path:
    """Register the stations and write their tokens as `agents add --all-stations` does."""
    csv_path = tmp / "stations.csv"
    rows = ["id,name,province,regency,lat,lon,tz,expected_operator"]
    rows += [f"{s},TPS {s},DKI Jakarta,Kota Jakarta Utara,-6.12,106.9,Asia/Jakarta," for s in IDS]
    csv_path.write_text("\n".join(rows) + "\n")
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    reg = Registry(cfg.registry_path)
    try:
        reg.import_stations_csv(csv_path)
        issued = reg.add_tokens([(s, None) for s in IDS])
    finally:
        reg.close()
    tokens = tmp / "tokens.csv"
    lines = ["station,token_id,token"] + [f"{i.scope_value},{i.id},{t}" for i, t in issued]
    tokens.write_text("\n".join(lines) + "\n")
    return tokens


@pytest.fixture
def fleet(tmp_path: Path, influxdb: InfluxServer, influx_database: str) -> Iterator[Fleet]:
    cfg = collector_config_file(tmp_path / "c", influxdb.url, influx_database)
    tokens = provision(cfg, tmp_path)
    with running_collector(cfg) as stack:
        yield Fleet(stack, tokens)


def ids_in(influx: InfluxServer, db: str, kind: str) -> list[tuple[str, str, int]]:
    rows = influx.query(f'SELECT "id", "station" FROM "{kind}"', db)
    return [(r["id"], r["station"], r["time"]) for r in rows]


def test_fleet_lands_once_with_the_statuses_its_profiles_call_for(
    tmp_path: Path, fleet: Fleet, influxdb: InfluxServer, influx_database: str
) -> None:
    log_path = tmp_path / "records.jsonl"
    stations = simulate.load_tokens(fleet.tokens)
    cfg = simulate.SimConfig(
        collector=fleet.stack.url,
        stations=stations,
        profiles=simulate.parse_profiles(PROFILES),
        interval_s=1.0,
        targets=3,
        duration_s=6.0,
        concurrency=8,
        drain_s=10.0,
        record_log=log_path,
    )
    profile = {s.station: simulate.profile_of(s.station, cfg.profiles) for s in stations}
    assert set(profile.values()) == set(simulate.PROFILES)  # each profile is in this fleet
    t_start = time.time()
    report = asyncio.run(simulate.run(cfg))
    t_end = time.time()

    made = [Record.from_json(line) for line in log_path.read_text().splitlines()]
    assert len(made) == report.records_made
    rounds_each = report.rounds / N
    assert 4 <= rounds_each <= 7, report.to_dict()
    assert report.rejected == {}
    assert report.errors == 0, report.requests
    assert report.ack_latencies_s and report.delivery_s

    stored = ids_in(influxdb, influx_database, "icmp") + ids_in(influxdb, influx_database, "agent")
    stored_ids = [rid for rid, _, _ in stored]
    assert len(stored_ids) == len(set(stored_ids))  # no record twice
    silent = {s for s, p in profile.items() if p == "deadzone"}
    expected = {r.id for r in made if r.tags["station"] not in silent}
    assert set(stored_ids) == expected  # every record of an uploading station, once
    assert report.records_accepted == len(expected)
    assert report.held == {"deadzone": len(made) - len(expected)}
    assert not silent & {station for _, station, _ in stored}  # deadzone: nothing arrived

    # icmp records carry 3 targets per round and the heartbeat comes once a minute
    kinds = {r.kind for r in made}
    assert kinds == {"icmp", "agent"}
    assert sum(r.kind == "agent" for r in made) == N
    assert all(r.seq is not None and r.clock and r.clock.boot_id for r in made)

    # clockwrong: made with a system clock days behind, stored at the collector's (true) time
    wrong = [(rid, t) for rid, s, t in stored if profile[s] == "clockwrong"]
    assert wrong
    made_at = {r.id: r.measured_at for r in made}
    for rid, t_ns in wrong:
        assert (datetime.now(UTC) - made_at[rid]).days >= 1  # what its clock said
        assert t_start - 2 <= t_ns / 1e9 <= t_end + 2  # what the collector stored

    status_written(fleet.stack)
    rows = influxdb.query(
        'SELECT last("status") AS status FROM "station_status" GROUP BY "station"',
        influx_database,
    )
    status = {r["station"]: r["status"] for r in rows}
    assert not silent & set(status)
    for station, p in profile.items():
        if p in ("good4g", "clockwrong"):
            assert status[station] == 0, (station, p)
        elif p == "congested":
            assert status[station] in (1, 2), (station, p)  # latency >= 150 ms every round


def test_cli_runs_the_fleet_and_writes_the_report(tmp_path: Path, fleet: Fleet) -> None:
    out = tmp_path / "report.json"
    code = main(
        ["--collector", fleet.stack.url, "--tokens", str(fleet.tokens),
         "--stations", "5", "--interval-s", "1", "--duration", "2.5", "--concurrency", "4",
         "--report", str(out)]
    )  # fmt: skip
    assert code == 0
    doc = json.loads(out.read_text())
    assert doc["stations"] == 5 and doc["profiles"] == {"good4g": 5}
    assert doc["records"]["accepted"] == doc["records"]["made"] > 0
    assert doc["requests"]["200"] == doc["requests"]["total"]
    assert doc["ack_latency_ms"]["p50"] > 0 and doc["ack_latency_ms"]["p99"] > 0


def test_database_down_keeps_the_records(
    tmp_path: Path, influxdb: InfluxServer, influx_database: str
) -> None:
    """A 503 (the collector's database is down) acknowledges nothing: the simulated stations
    keep every record and try again later (Retry-After), as agents do."""
    dead_db = f"http://127.0.0.1:{free_port()}"
    cfg = collector_config_file(tmp_path / "c", dead_db, influx_database)
    tokens = provision(cfg, tmp_path)
    with running_collector(cfg) as stack:
        sim = simulate.SimConfig(
            collector=stack.url,
            stations=simulate.load_tokens(tokens, 4),
            interval_s=1.0,
            duration_s=2.5,
            drain_s=0.5,
        )
        report = asyncio.run(simulate.run(sim))
    assert report.records_made > 0
    assert report.records_accepted == 0
    assert report.requests["503"] >= 4
    # Retry-After 7 s: each station tried once and then waited
    assert report.requests["503"] <= 8
    assert report.held == {"good4g": report.records_made}


def test_profiles_give_realistic_values() -> None:
    cfg = simulate.SimConfig("http://127.0.0.1:1", [], targets=3)
    t0 = time.monotonic_ns()

    def rounds(profile: str, n: int = 40) -> list[Record]:
        st = simulate.SimStation(0, simulate.StationToken(IDS[0], "sny_x"), profile, cfg, t0)
        return [r for _ in range(n) for r in st.make_round(time.time(), 60.0) if r.kind == "icmp"]

    good = rounds("good4g")
    assert all(r.fields["rtt_p50_ms"] < 100 and r.fields["jitter_ms"] < 20 for r in good)
    assert all(r.fields["mos"] > 4.0 for r in good if r.fields["loss_pct"] == 0)
    assert sum(r.fields["loss_pct"] == 0 for r in good) >= 0.9 * len(good)
    congested = rounds("congested")
    assert all(r.fields["rtt_p50_ms"] > 150 for r in congested)
    jitters = [float(r.fields["jitter_ms"]) for r in congested]
    assert sum(jitters) / len(jitters) > 40  # queueing: beyond the 30 ms warn level on average
    dead = rounds("deadzone")
    assert all(r.error == "timeout" and r.fields["loss_pct"] == 100 for r in dead)
    flapping = [r.fields["loss_pct"] > 0 or r.error is not None for r in rounds("flapping", 60)]
    switches = sum(a != b for a, b in itertools.pairwise(flapping))
    assert 3 <= switches <= 40  # spells of a few rounds, not every round
    wrong = rounds("clockwrong", 1)[0]
    assert wrong.clock is not None and wrong.clock.synced == 0 and wrong.clock.source is None


def test_profile_choice_is_deterministic_and_follows_the_shares() -> None:
    shares = simulate.parse_profiles("good4g=0.9,congested")
    assert shares == (("good4g", 0.9), ("congested", pytest.approx(0.1)))
    ids = [f"3171{i:09d}" for i in range(5000)]
    first = [simulate.profile_of(s, shares) for s in ids]
    assert first == [simulate.profile_of(s, shares) for s in ids]
    assert 0.08 <= first.count("congested") / len(ids) <= 0.12


def tokens_file(tmp: Path, text: str) -> Path:
    path = tmp / "tokens.csv"
    path.write_text(text)
    return path


GOOD = "station,token_id,token\n3171011001001,ab12cd34,sny_abcdefghijklmnop\n"


@pytest.mark.parametrize(
    ("text", "extra", "message"),
    [
        ("station,token\n", [], "tokens.csv:1: got 'station,token', expected the header"),
        (GOOD.split("\n", 1)[1], [], "tokens.csv:1: got '3171011001001,ab12cd34,sny_…'"),
        ("", [], "tokens.csv:1: got an empty file, expected the header"),
        (GOOD + "3171011001002,ff00ff00\n", [], "tokens.csv:3: got 2 columns, expected 3"),
        (GOOD + "3171011001002,ff00ff00,secretvalue\n", [], "tokens.csv:3: column token"),
        (GOOD + GOOD.splitlines()[1] + "\n", [], "tokens.csv:3: column station: got '317101100"),
        (GOOD, ["--stations", "2"], "--stations: got 2, expected at most 1"),
        (GOOD, ["--profile", "good5g"], "--profile: got 'good5g', expected one of good4g"),
        (GOOD, ["--profile", "good4g=0.5,congested=0.3"], "shares add up to 0.8, expected 1"),
        (GOOD, ["--profile", "good4g=x"], "good4g: got share 'x'"),
        (GOOD, ["--interval-s", "0"], "--interval-s: got 0.0, expected seconds, 0.1..86400"),
        (GOOD, ["--targets", "0"], "--targets: got 0, expected an integer 1..100"),
        (GOOD, ["--concurrency", "0"], "--concurrency: got 0"),
    ],
)  # fmt: skip
def test_bad_input_is_exit_2_with_what_was_expected(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    text: str,
    extra: list[str],
    message: str,
) -> None:
    path = tokens_file(tmp_path, text)
    code = main(["--collector", "http://127.0.0.1:9", "--tokens", str(path), *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert "secretvalue" not in err and "sny_abcdefghijklmnop" not in err  # tokens never shown


def test_missing_tokens_file_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--collector", "http://127.0.0.1:9", "--tokens", str(tmp_path / "no")])
    assert code == 2
    assert f"{tmp_path / 'no'}: cannot read" in capsys.readouterr().err
