"""agent.spool: the durable FIFO every record passes through.

The durability tests run real writer processes (tests/harness/spool_writer.py) against
one spool file, kill them with SIGKILL at random moments and then hold the spool
to every id a writer printed after its put() returned.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.contract.record import ContractError, Record
from agent.spool import Spool, SpoolFullError
from tests.conftest import ROOT, require
from tests.harness.spool_writer import sample_record

WRITER = Path(__file__).resolve().parents[1] / "harness" / "spool_writer.py"
T0 = datetime(2026, 11, 22, 4, 13, tzinfo=UTC)
EVERYTHING = 10**9


def icmp(
    i: int, *, uplink: str = "telkomsel", target: str = "google-dns", at: datetime = T0
) -> Record:
    """A measurement whose JSON length does not depend on i (fixed-width id and time)."""
    return Record(
        "icmp",
        at + timedelta(seconds=i),
        {"station": "3171011001001", "uplink": uplink, "operator": "Telkomsel", "target": target},
        {"sent": 10, "received": 10, "loss_pct": 0.0, "rtt_avg_ms": 23.5, "ok": 1},
        None,
        f"{i:032x}",
    )


def heartbeat(i: int) -> Record:
    """An `agent` heartbeat. The contract (MEASUREMENTS) does not know this kind
    yet, so such a record can be put and evicted but not read back by batch()."""
    return Record(
        "agent",
        T0 + timedelta(seconds=i),
        {"station": "3171011001001"},
        {},
        None,
        f"a{i:031x}",
    )


def size(r: Record) -> int:
    return len(r.to_json())


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    with Spool(tmp_path / "spool.sqlite3") as s:
        yield s


def all_ids(s: Spool, newest_first: bool = False) -> list[str]:
    return [r.id for r in s.batch(limit=EVERYTHING, newest_first=newest_first)]


def check_consistent(path: Path) -> list[Record]:
    """Reopen the spool and check it whole: integrity, every row decodes, accounting is exact."""
    with Spool(path) as s:
        assert s.integrity_ok()
        records = s.batch(limit=EVERYTHING)
        st = s.stats()
        ids = [r.id for r in records]
        assert len(ids) == len(set(ids)) == st.records
        assert set(ids) == s.ids()
        assert st.bytes == sum(size(r) for r in records)
        by_kind: dict[str, int] = {}
        for r in records:
            by_kind[r.kind] = by_kind.get(r.kind, 0) + 1
        assert st.by_kind == by_kind
    return records


# --- put / batch / ack ---------------------------------------------------------------------


def test_batch_is_fifo_and_removes_nothing(spool: Spool) -> None:
    # Arrival order, not measured_at, decides: the later put has the older measured time.
    spool.put([icmp(5), icmp(6)])
    spool.put([icmp(1)])
    assert [r.id for r in spool.batch(limit=2)] == [f"{5:032x}", f"{6:032x}"]
    assert all_ids(spool) == [f"{i:032x}" for i in (5, 6, 1)]
    assert all_ids(spool, newest_first=True) == [f"{i:032x}" for i in (1, 6, 5)]
    assert [r.id for r in spool.batch(limit=1, newest_first=True)] == [f"{1:032x}"]
    assert spool.stats().records == 3
    assert spool.batch(limit=0) == []


def test_batch_returns_the_records_that_were_put(spool: Spool) -> None:
    rng = random.Random(1)
    records = [sample_record(rng, i) for i in range(20)]
    spool.put(records)
    assert [r.to_dict() for r in spool.batch()] == [r.to_dict() for r in records]


def test_ack_deletes_exactly_those_ids(spool: Spool) -> None:
    records = [icmp(i) for i in range(6)]
    spool.put(records)
    before = spool.stats().bytes
    assert spool.ack([records[1].id, records[4].id]) == 2
    assert all_ids(spool) == [records[i].id for i in (0, 2, 3, 5)]
    st = spool.stats()
    assert st.records == 4
    assert st.bytes == before - size(records[1]) - size(records[4])
    assert st.dropped_total == 0  # an acknowledged record was delivered, not dropped


def test_ack_of_unknown_or_already_acked_ids_is_harmless(spool: Spool) -> None:
    records = [icmp(i) for i in range(3)]
    spool.put(records)
    assert spool.ack([records[0].id]) == 1
    before = spool.stats()
    assert spool.ack([]) == 0
    assert spool.ack([records[0].id, "f" * 32, "not-an-id", ""]) == 0
    assert spool.stats() == before
    assert all_ids(spool) == [records[1].id, records[2].id]


def test_ack_of_many_ids_with_repeats(spool: Spool) -> None:
    # More ids than one SQL statement takes, some listed twice (in different chunks).
    records = [icmp(i) for i in range(1200)]
    spool.put(records)
    acked = [r.id for r in records[:1100]]
    assert spool.ack(acked + acked[:50] + ["e" * 32]) == 1100
    assert all_ids(spool) == [r.id for r in records[1100:]]
    assert spool.stats().bytes == sum(size(r) for r in records[1100:])


def test_put_of_a_known_id_stores_it_once(spool: Spool) -> None:
    a, b = icmp(1), icmp(2)
    assert spool.put([a]) == 0
    assert spool.put([a, b, b]) == 0
    assert spool.put([a]) == 0
    st = spool.stats()
    assert (st.records, st.bytes) == (2, size(a) + size(b))
    assert all_ids(spool) == [a.id, b.id]


def test_records_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite3"
    records = [icmp(i) for i in range(4)]
    with Spool(path) as s:
        s.put(records)
        s.ack([records[0].id])
    assert [r.id for r in check_consistent(path)] == [r.id for r in records[1:]]


def test_stats_of_an_empty_spool(spool: Spool) -> None:
    st = spool.stats()
    assert (st.records, st.bytes, st.oldest_measured_at, st.dropped_total, st.by_kind) == (
        0,
        0,
        None,
        0,
        {},
    )
    assert spool.batch() == []
    assert spool.latest() == []


# --- size cap ------------------------------------------------------------------------------


def test_cap_evicts_oldest_first_with_exact_counts(tmp_path: Path) -> None:
    s_m = size(icmp(0))
    assert {size(icmp(i)) for i in range(40)} == {s_m}  # every record has the same size
    cap = 10 * s_m + s_m // 2  # room for exactly 10
    with Spool(tmp_path / "spool.sqlite3", max_bytes=cap) as s:
        assert s.put([icmp(i) for i in range(10)]) == 0
        assert s.put([icmp(10)]) == 1
        assert s.put([icmp(i) for i in range(11, 16)]) == 5
        assert s.put([icmp(i) for i in range(16, 40)]) == 24  # more than fit: 10 newest stay
        st = s.stats()
        assert (st.records, st.bytes, st.dropped_total) == (10, 10 * s_m, 30)
        assert all_ids(s) == [f"{i:032x}" for i in range(30, 40)]
        assert s.put([icmp(39)]) == 0  # a duplicate adds nothing, so evicts nothing
        # Acknowledged records make room; they do not count as dropped.
        s.ack([f"{i:032x}" for i in range(30, 33)])
        assert s.put([icmp(i) for i in range(40, 43)]) == 0
        assert s.stats().dropped_total == 30


def model_evictions(
    puts: list[list[Record]], cap: int, priority: dict[str, int]
) -> tuple[list[int], list[str]]:
    """Reference model of the cap: per put, how many records were evicted; and what is left.

    Kept deliberately naive (a list, a sort) to check the SQL implementation against.
    """
    stored: list[tuple[int, int, str, int]] = []  # (priority, arrival, id, size)
    arrival = 0
    evicted: list[int] = []
    for batch in puts:
        for r in batch:
            if r.id in {x[2] for x in stored}:
                continue
            arrival += 1
            stored.append((priority.get(r.kind, 1), arrival, r.id, size(r)))
        n = 0
        while sum(x[3] for x in stored) > cap:
            stored.remove(min(stored))
            n += 1
        evicted.append(n)
    return evicted, [x[2] for x in sorted(stored, key=lambda x: x[1])]


def test_cap_with_varied_sizes_matches_the_model(tmp_path: Path) -> None:
    rng = random.Random(7)
    puts = [[sample_record(rng, i * 10 + j) for j in range(rng.randint(1, 6))] for i in range(120)]
    sizes = [size(r) for b in puts for r in b]
    assert max(sizes) - min(sizes) > 50  # the sizes really vary
    cap = 6000
    expected, left = model_evictions(puts, cap, {})
    with Spool(tmp_path / "spool.sqlite3", max_bytes=cap) as s:
        assert [s.put(b) for b in puts] == expected
        st = s.stats()
        assert st.dropped_total == sum(expected) > 0
        assert all_ids(s) == left
    records = check_consistent(tmp_path / "spool.sqlite3")
    assert sum(size(r) for r in records) <= cap


def test_cap_evicts_heartbeats_before_measurements(tmp_path: Path) -> None:
    s_m, s_a = size(icmp(0)), size(heartbeat(0))
    assert s_a < s_m
    cap = 4 * s_a + 6 * s_m  # exactly full after the first two puts
    beats = [heartbeat(i) for i in range(4)]
    first = [icmp(i) for i in range(6)]
    with Spool(tmp_path / "spool.sqlite3", max_bytes=cap) as s:
        assert s.put(beats) == 0
        assert s.put(first) == 0
        # One more measurement: the oldest heartbeats make room, not the older measurements.
        k = -(-s_m // s_a)  # heartbeats needed to free one measurement's bytes
        assert k <= 4
        assert s.put([icmp(6)]) == k
        assert s.ids() == {b.id for b in beats[k:]} | {r.id for r in [*first, icmp(6)]}
        # Four more: the remaining heartbeats go first, then the oldest measurements.
        more = [icmp(i) for i in range(7, 11)]
        expected, left = model_evictions([beats, first, [icmp(6)], more], cap, {"agent": 0})
        assert expected[:3] == [0, 0, k]
        assert s.put(more) == expected[3]
        assert s.ids() == set(left)
        assert not any(i.startswith("a") for i in left)  # no heartbeat outlived a measurement
        assert s.stats().dropped_total == sum(expected)
        assert all_ids(s) == left  # only measurements left, so batch() can decode them
        # A heartbeat put into a full spool is itself the first to go.
        n = len(left)
        assert s.put([heartbeat(9)]) == 1
        assert s.stats().by_kind == {"icmp": n}


def test_a_record_of_a_kind_the_contract_does_not_know_yet_never_blocks_the_upload(
    spool: Spool,
) -> None:
    # Heartbeats ('agent') are not in agent.contract.record.MEASUREMENTS yet: batch() cannot decode
    # them, so the uploader sends the spooled JSON undecoded (batch_raw) and the collector
    # accepts or rejects each record on its own.
    spool.put([heartbeat(1), icmp(1)])
    assert [json.loads(body)["kind"] for _, body in spool.batch_raw()] == ["agent", "icmp"]
    with pytest.raises(ContractError):
        spool.batch()


# --- latest --------------------------------------------------------------------------------


def test_latest_keeps_the_newest_record_per_series(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite3"
    with Spool(path, max_bytes=3 * size(icmp(0))) as s:
        s.put([icmp(1), icmp(2, target="kpu"), icmp(3, uplink="indosat")])
        s.put([icmp(10)])  # newer in the telkomsel/google-dns series
        s.put([icmp(5)])  # arrives later but was measured earlier: not the latest
        s.ack(all_ids(s))
        assert s.stats().records == 0
        assert s.stats().dropped_total > 0  # the cap evicted some too
        latest = {(r.tags["uplink"], r.tags["target"]): r.id for r in s.latest()}
    assert latest == {
        ("telkomsel", "google-dns"): f"{10:032x}",
        ("telkomsel", "kpu"): f"{2:032x}",
        ("indosat", "google-dns"): f"{3:032x}",
    }
    with Spool(path) as s:  # and it is durable
        assert {r.id for r in s.latest()} == set(latest.values())


def test_latest_separates_kinds_and_dns_resolvers(spool: Spool) -> None:
    rng = random.Random(3)
    records = [sample_record(rng, i) for i in range(200)]
    spool.put(records)
    newest: dict[tuple[str, ...], Record] = {}
    for r in records:
        key = (r.kind, r.tags["uplink"], r.tags.get("target", ""), r.tags.get("resolver", ""))
        if key not in newest or r.measured_at >= newest[key].measured_at:
            newest[key] = r
    assert sorted(r.id for r in spool.latest()) == sorted(r.id for r in newest.values())


# --- concurrent writers --------------------------------------------------------------------


@dataclass
class Writer:
    proc: subprocess.Popen[str]
    lines: list[str]
    reader: threading.Thread
    stderr: Path

    def promised(self) -> list[str]:
        """The ids this writer printed: each one a put() that returned."""
        self.reader.join(timeout=10)
        assert not self.reader.is_alive()
        # A killed writer may leave half a line; only a complete line counts.
        return [ln[:-1] for ln in self.lines if ln.endswith("\n") and len(ln) == 33]

    def wait(self) -> int:
        rc = self.proc.wait(timeout=30)
        assert rc in (0, -signal.SIGKILL), f"writer failed ({rc}): {self.stderr.read_text()}"
        return rc


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., Writer]]:
    """launch(spool_path, count=, seed=, batch=, threads=) starts tests/harness/spool_writer.py."""
    started: list[Writer] = []

    def start(path: Path, *, count: int, seed: int, batch: int, threads: int = 1) -> Writer:
        err = tmp_path / f"writer-{len(started)}.err"
        with err.open("w") as err_file:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    str(WRITER),
                    str(path),
                    f"--count={count}",
                    f"--seed={seed}",
                    f"--batch={batch}",
                    f"--threads={threads}",
                ],
                stdout=subprocess.PIPE,
                stderr=err_file,
                text=True,
                cwd=ROOT,
            )
        lines: list[str] = []
        stdout = proc.stdout
        assert stdout is not None
        # Drain stdout as it comes, so a writer never blocks on a full pipe.
        reader = threading.Thread(target=lambda: lines.extend(stdout), daemon=True)
        reader.start()
        w = Writer(proc, lines, reader, err)
        started.append(w)
        return w

    yield start
    for w in started:  # a failed test leaves no writer behind
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait()


def test_concurrent_processes_and_threads(tmp_path: Path, launch: Callable[..., Writer]) -> None:
    path = tmp_path / "spool.sqlite3"
    Spool(path).close()
    in_process: list[str] = []
    acked: list[str] = []
    out_lock = threading.Lock()
    done = threading.Event()

    def local_writer(seed: int) -> None:
        rng = random.Random(seed)
        with Spool(path) as s:  # its own connection, like another process
            for i in range(150):
                records = [sample_record(rng, i)]
                s.put(records)
                with out_lock:
                    in_process.extend(r.id for r in records)

    upload_spool = Spool(path)  # opened first: it then competes only for writes

    def uploader() -> None:
        # Takes batches and acknowledges them while the writers write, and once after.
        with upload_spool as s:
            while True:
                last = done.is_set()
                ids = [r.id for r in s.batch(limit=37)]
                assert s.ack(ids) == len(ids)
                acked.extend(ids)
                if last:
                    return
                time.sleep(0.01)

    local = [threading.Thread(target=local_writer, args=(100 + i,)) for i in range(2)]
    up = threading.Thread(target=uploader)
    writers = [launch(path, count=150, seed=s, batch=4, threads=2) for s in range(1, 4)]
    for t in [*local, up]:
        t.start()
    for w in writers:
        assert w.wait() == 0
    for t in local:
        t.join(timeout=30)
    done.set()
    up.join(timeout=30)

    promised = [i for w in writers for i in w.promised()] + in_process
    assert len(promised) == 3 * 2 * 150 + 2 * 150
    assert len(set(promised)) == len(promised)
    assert acked, "the uploader acknowledged nothing: the test did not exercise ack()"
    assert len(set(acked)) == len(acked)  # nothing was handed out again after its ack
    assert set(acked) <= set(promised)
    records = check_consistent(path)
    assert sorted(r.id for r in records) == sorted(set(promised) - set(acked))


# --- kill -9 -------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigkill_during_writes_loses_no_promised_record(
    tmp_path: Path, launch: Callable[..., Writer]
) -> None:
    path = tmp_path / "spool.sqlite3"
    rng = random.Random(20261122)
    promised: set[str] = set()
    kills = killed_mid_stream = 0
    rounds = 10
    for rnd in range(rounds):
        writers = [
            launch(path, count=100_000, seed=rnd * 10 + i, batch=5, threads=1 + i % 2)
            for i in range(3)
        ]
        # Kill each writer at its own random moment: now and then while it starts or opens
        # the spool, mostly in the middle of a stream of commits.
        deadline = time.monotonic() + rng.uniform(0.05, 0.3)
        for w in writers:
            time.sleep(max(0.0, deadline - time.monotonic()))
            w.proc.send_signal(signal.SIGKILL)
            deadline += rng.uniform(0.0, 0.15)
        for w in writers:
            assert w.wait() == -signal.SIGKILL
            kills += 1
            ids = w.promised()
            killed_mid_stream += bool(ids)
            promised.update(ids)
        records = check_consistent(path)
        missing = promised - {r.id for r in records}
        assert not missing, f"round {rnd}: {len(missing)} promised record(s) lost"
    assert kills == 3 * rounds
    assert killed_mid_stream >= kills // 2, "most writers died before writing anything"
    assert len(promised) > 1000, "the writers wrote too little before being killed"
    print(
        f"{kills} kills ({killed_mid_stream} mid-stream), {len(promised)} promised ids verified,"
        f" {len(records)} stored"
    )


# --- full disk -----------------------------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    require(done.returncode == 0, f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.root
def test_full_disk_evicts_the_oldest_and_recovers(tiny_disk: Path) -> None:
    path = tiny_disk / "spool.sqlite3"
    rng = random.Random(5)
    stored: list[str] = []
    filler = tiny_disk / "filler"
    with Spool(path, reserve_bytes=2**20) as s:
        assert (tiny_disk / "spool.sqlite3.reserve").stat().st_size == 2**20
        # A spool already holding thousands of records, as after a long outage.
        first = [sample_record(rng, i) for i in range(3000)]
        s.put(first)
        stored += [r.id for r in first]
        # Leave ~512 KiB free, then write until the disk is full and the spool makes room
        # by evicting its oldest records, as at its size cap.
        st = os.statvfs(tiny_disk)
        filler.write_bytes(b"\0" * max(0, st.f_bavail * st.f_frsize - 512 * 1024))
        for i in range(10_000):
            batch = [sample_record(rng, 1000 + i * 5 + j) for j in range(5)]
            s.put(batch)
            stored += [r.id for r in batch]
            if s.stats().dropped_total:
                break
        dropped = s.stats().dropped_total
        assert dropped > 0 and len(stored) > 3020 and s.disk_full
        assert not (tiny_disk / "spool.sqlite3.reserve").exists()
        kept = all_ids(s)
        # exactly the oldest `dropped` records are gone (heartbeats first: none here)
        assert kept == stored[dropped:]
        assert s.integrity_ok()
        stored = kept
        # A put that cannot fit even after evicting is refused as a whole: SpoolFullError,
        # and nothing evicted, nothing half-written.
        with pytest.raises(SpoolFullError) as info:
            s.put([sample_record(rng, 100_000 + i) for i in range(20_000)])
        assert info.value.errno == 28
        assert isinstance(info.value.__cause__, sqlite3.OperationalError)
        assert all_ids(s) == stored and s.stats().dropped_total == dropped
        with Spool(path) as again:  # an agent restarting on the full disk can still read
            assert all_ids(again) == stored

        filler.unlink()
        after = [sample_record(rng, 200_000 + i) for i in range(10)]
        assert s.put(after) == 0
        assert not s.disk_full and (tiny_disk / "spool.sqlite3.reserve").exists()
        stored += [r.id for r in after]
        assert s.ack(stored[:10]) == 10
    records = check_consistent(path)
    assert [r.id for r in records] == stored[10:]
