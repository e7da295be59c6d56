"""Fleet simulator: many stations' records, uploaded through the real protocol.

`python -m benchmarks.simulate` (and `run(config)` for benchmarks and drills) plays a fleet of
stations
against a collector: each station has its own token (the CSV of
`sinyal-collector agents add --all-stations --out FILE`), its own boot id, CLOCK_MONOTONIC
and spool sequence numbers, and uploads exactly what the real agent uploads: one gzip envelope
per station (agent.uploader's envelope code) to POST /api/v1/stations/{id}/measurements with
its Bearer token. The ICMP fields come from simulated RTT samples through the agent's own summary
(agent.probes.icmp.summarise: percentiles, jitter and the E-model MOS of agent.stats).

Schedule: every station runs a round every `interval_s` in the slots k*interval + offset of
the real scheduler (agent.scheduler.station_offset), so a fleet's rounds are spread over the
interval. A round makes `targets` icmp records; a heartbeat (`agent` record) is added every
60 s worth of rounds (every round at the default interval of 60 s).

Profiles (docs/simulate.md has the numbers): good4g, congested, flapping, deadzone,
clockwrong. A station's profile follows from a hash of its id and the shares asked for, so a
station keeps its profile from run to run; its random values come from a generator seeded
with its id (and `seed`).

Uploads behave like the agent's uploader: records stay in the station's pending list (its
spool) until the collector acknowledged or rejected them; a 503 or a failed connection keeps
them and backs off (agent.uploader.Backoff, honouring Retry-After), and they go out again
with the next attempt. When the run's duration is over no new rounds start and what is
pending is uploaded for at most `drain_s` more.

Stdlib and httpx only (nothing from the collector), so it runs wherever the agent runs. It
lives with the benchmarks, not in the agent package: a load generator is a tool of the
control room's test bench (benchmarks/load.py, the drill in tests/drill), and an agent
installed on a polling station's Raspberry Pi has no use for it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import hashlib
import heapq
import json
import logging
import math
import random
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import httpx

from agent.config import IcmpProbeConfig
from agent.contract.record import ClockInfo, FieldValue, Record, new_id
from agent.contract.version import AGENT_USER_AGENT, __version__
from agent.heartbeat import HEARTBEAT_INTERVAL_S
from agent.probes.icmp import RoundResult, summarise
from agent.scheduler import next_slot, station_offset
from agent.stats import percentile
from agent.timekeeper import TimeKeeper
from agent.uploader import (
    BATCH_SIZE,
    CLOCK_SYNC_EVERY_S,
    TIME_PATH,
    Backoff,
    upload_body,
    upload_headers,
    upload_path,
)

PROFILES = ("good4g", "congested", "flapping", "deadzone", "clockwrong")
TOKEN_PREFIX = "sny_"  # what `sinyal-collector agents add` issues
TOKENS_HEADER = ["station", "token_id", "token"]
# What a real agent does, from the modules that do it.
BATCH_MAX = BATCH_SIZE
HEARTBEAT_S = HEARTBEAT_INTERVAL_S
PINGS = IcmpProbeConfig.count  # echo requests per round
TIMEOUT_S = IcmpProbeConfig.timeout_s  # Tmax
TARGET_NAMES = ("kpu-sirekap", "dns-google", "nix-jakarta", "dns-cloudflare", "idx-surabaya")
OPERATORS = ("telkomsel", "indosat", "xl", "smartfren", "tri")
UPLINK = "modem0"
POOL_SIZE = 8  # connections per httpx client (see run)


class SimulateError(ValueError):
    """Bad simulator input (tokens file, profile spec, option); the message says what."""


@dataclass(frozen=True)
class StationToken:
    station: str
    token: str


@dataclass(frozen=True)
class SimConfig:
    collector: str
    stations: Sequence[StationToken]
    profiles: tuple[tuple[str, float], ...] = (("good4g", 1.0),)
    interval_s: float = 60.0
    targets: int = 3
    duration_s: float | None = None  # None: until `stop` is set
    concurrency: int = 50
    ca_bundle: Path | None = None
    timeout_s: float = 30.0
    drain_s: float = 10.0
    seed: int = 0
    record_log: Path | None = None  # append every record made, one JSON line each


# --- input -------------------------------------------------------------------------------


def load_tokens(path: Path, limit: int | None = None) -> list[StationToken]:
    """The first `limit` rows (all when None) of a `station,token_id,token` CSV."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as exc:
        raise SimulateError(f"{path}: cannot read: {exc}") from None
    expected = (
        f"expected the header {','.join(TOKENS_HEADER)}"
        " (the file of sinyal-collector agents add --all-stations --out FILE)"
    )
    if not rows:
        raise SimulateError(f"{path}:1: got an empty file, {expected}")
    if [c.strip() for c in rows[0]] != TOKENS_HEADER:
        # A file without its header starts with a token: never show one.
        first = [TOKEN_PREFIX + "…" if c.strip().startswith(TOKEN_PREFIX) else c for c in rows[0]]
        raise SimulateError(f"{path}:1: got {','.join(first)!r}, {expected}")
    out: list[StationToken] = []
    seen: set[str] = set()
    for n, row in enumerate(rows[1:], 2):
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if len(row) != 3:
            raise SimulateError(
                f"{path}:{n}: got {len(row)} columns, expected 3 (station,token_id,token)"
            )
        station, _, token = (c.strip() for c in row)
        if not station or not station.isprintable() or len(station) > 256:
            raise SimulateError(
                f"{path}:{n}: column station: got {station!r}, expected a station id"
            )
        if station in seen:
            raise SimulateError(
                f"{path}:{n}: column station: got {station!r} again, expected each station once"
            )
        if not token.startswith(TOKEN_PREFIX) or len(token) < 8 or not token.isprintable():
            # The token itself is never shown.
            raise SimulateError(
                f"{path}:{n}: column token: got a value of {len(token)} characters that is not"
                f" a token, expected {TOKEN_PREFIX}... as issued by sinyal-collector agents add"
            )
        seen.add(station)
        out.append(StationToken(station, token))
        if limit is not None and len(out) >= limit:
            return out
    if not out:
        raise SimulateError(f"{path}: got no station rows, expected at least one")
    if limit is not None and len(out) < limit:
        raise SimulateError(
            f"--stations: got {limit}, expected at most {len(out)} (the stations in {path})"
        )
    return out


def parse_profiles(spec: str) -> tuple[tuple[str, float], ...]:
    """`good4g=0.9,congested=0.1`; names without a share split what the others leave."""
    named: list[tuple[str, float | None]] = []
    for part in spec.split(","):
        name, eq, share_s = part.strip().partition("=")
        name = name.strip()
        if name not in PROFILES:
            raise SimulateError(
                f"--profile: got {name!r}, expected one of {', '.join(PROFILES)}"
                " (NAME[=SHARE][,NAME=SHARE...])"
            )
        if any(name == n for n, _ in named):
            raise SimulateError(f"--profile: got {name!r} twice, expected each profile once")
        share: float | None = None
        if eq:
            try:
                share = float(share_s)
            except ValueError:
                share = math.nan
            if not 0 < share <= 1:
                raise SimulateError(
                    f"--profile: {name}: got share {share_s!r}, expected a number in (0, 1]"
                )
        named.append((name, share))
    given = sum(s for _, s in named if s is not None)
    free = [n for n, s in named if s is None]
    rest = 1.0 - given
    if (free and rest <= 1e-9) or (not free and abs(rest) > 1e-6):
        raise SimulateError(f"--profile: shares add up to {given:g}, expected 1 ({spec!r})")
    return tuple((n, s if s is not None else rest / len(free)) for n, s in named)


def _unit(text: str) -> float:
    """A number in [0, 1) from a hash of the text: the same on every run and machine."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2**64


def profile_of(station: str, profiles: Sequence[tuple[str, float]]) -> str:
    u = _unit(f"{station}/profile")
    acc = 0.0
    for name, share in profiles:
        acc += share
        if u < acc:
            return name
    return profiles[-1][0]


# --- the simulated stations ---------------------------------------------------------------


class Pending:
    """One record in a station's simulated spool; body is None while its time is unknown."""

    __slots__ = ("body", "made", "record")

    def __init__(self, record: Record, body: str | None, made: float) -> None:
        self.record = record
        self.body = body
        self.made = made  # time.monotonic() when it was measured


class SimStation:
    def __init__(self, index: int, st: StationToken, profile: str, cfg: SimConfig, t0_mono_ns: int):
        self.index = index
        self.targets = cfg.targets
        self.id = st.station
        self.token = st.token
        self.profile = profile
        self.rng = random.Random(f"{cfg.seed}/{st.station}")
        rng = self.rng
        self.boot = uuid.UUID(int=rng.getrandbits(128), version=4).hex
        self.operator = OPERATORS[int(_unit(f"{st.station}/operator") * len(OPERATORS))]
        # The station's CLOCK_MONOTONIC at the start of the run: it booted a while ago.
        self.mono_start_ns = int(rng.uniform(600, 3 * 86400) * 1e9)
        self.t0_mono_ns = t0_mono_ns
        self.started_uptime_s = rng.uniform(60, 86400)
        self.seq = rng.randint(1, 1_000_000)
        self.offset_s = station_offset(st.station, "icmp", cfg.interval_s)
        self.base_rtt_ms = rng.uniform(120, 220) if profile == "congested" else rng.uniform(25, 60)
        self.rounds = 0
        self.pending: list[Pending] = []
        self.queued = False  # in the upload queue or being uploaded
        self.retry_at = 0.0  # time.time() before which it does not try again
        self.backoff = Backoff(rng=rng)
        self.dead_letters = 0
        # flapping: the current spell, bad or good, and the rounds left in it
        self.bad_spell = rng.random() < 0.5
        self.spell_left = rng.randint(1, 4)
        # clockwrong: the system clock is this far behind the true time (a board without a
        # real-time clock that booted with the last saved date), not synchronised
        self.clock_error_s = -rng.uniform(86400, 90 * 86400) if profile == "clockwrong" else 0.0
        self.timekeeper = (
            TimeKeeper(None, "kernel", boot=self.boot) if profile == "clockwrong" else None
        )
        self.last_sync = -math.inf
        self.clock_offset_ms = rng.uniform(-40, 40)

    def mono_ns(self) -> int:
        return self.mono_start_ns + time.monotonic_ns() - self.t0_mono_ns

    def uploadable(self) -> bool:
        if self.profile == "deadzone":
            return False
        if self.timekeeper is not None and any(p.body is None for p in self.pending):
            return True  # it needs the collector's clock
        return any(p.body is not None for p in self.pending)

    # values per profile ----------------------------------------------------------------

    def _rtts(self, target: int) -> list[float | None]:
        """Per request: the RTT in ms, or None when lost."""
        rng = self.rng
        extra = 3.0 * target  # farther targets are a little slower
        profile = self.profile
        if profile == "flapping":
            if self.spell_left <= 0:
                self.bad_spell = not self.bad_spell
                self.spell_left = rng.randint(2, 5) if self.bad_spell else rng.randint(3, 6)
            if self.bad_spell:
                if rng.random() < 0.3:
                    return [None] * PINGS  # the link is down for the whole round
                base = rng.uniform(300, 600)
                return [
                    None if rng.random() < 0.4 else base + extra + rng.expovariate(1 / 150)
                    for _ in range(PINGS)
                ]
        if profile == "deadzone":
            return [None] * PINGS
        if profile == "congested":
            return [
                None if rng.random() < 0.03 else self.base_rtt_ms + extra + rng.expovariate(1 / 60)
                for _ in range(PINGS)
            ]
        # good4g, clockwrong, flapping's good spells: a healthy LTE link
        return [
            None
            if rng.random() < 0.001
            else max(1.0, self.base_rtt_ms + extra + rng.expovariate(1 / 4) + rng.gauss(0, 1.5))
            for _ in range(PINGS)
        ]

    def make_round(self, now: float, interval_s: float) -> list[Record]:
        """One round's records, measured now (time.time())."""
        wall = now + self.clock_error_s
        measured_at = datetime.fromtimestamp(wall, UTC)
        synced = 0 if self.timekeeper is not None else 1
        source = None if self.timekeeper is not None else "system"
        records: list[Record] = []
        for t in range(self.targets):
            rtts = self._rtts(t)
            result = RoundResult(sent=PINGS)
            result.rtts_by_seq = {
                i: r for i, r in enumerate(rtts) if r is not None and r <= TIMEOUT_S * 1000
            }
            fields, error = summarise(result, TIMEOUT_S)
            tags = {
                "station": self.id,
                "uplink": UPLINK,
                "operator": self.operator,
                "target": TARGET_NAMES[t] if t < len(TARGET_NAMES) else f"target{t + 1}",
            }
            records.append(self._record("icmp", measured_at, tags, fields, error, synced, source))
        if self.profile == "flapping":
            self.spell_left -= 1
        every = max(1, round(HEARTBEAT_S / interval_s))
        if self.rounds % every == 0:
            records.append(self._heartbeat(now, measured_at, synced, source))
        self.rounds += 1
        return records

    def _heartbeat(
        self, now: float, measured_at: datetime, synced: int, source: str | None
    ) -> Record:
        rng = self.rng
        oldest = min((p.made for p in self.pending), default=None)
        fields: dict[str, FieldValue | None] = {
            "uptime_s": round(
                self.started_uptime_s + (time.monotonic_ns() - self.t0_mono_ns) / 1e9, 3
            ),
            "spool_records": len(self.pending),
            "oldest_unsent_s": None if oldest is None else round(time.monotonic() - oldest, 3),
            "dropped_total": 0,
            "dead_letters": self.dead_letters,
            "lost_total": 0,
            "disk_full": 0,
            "untimed": sum(1 for p in self.pending if p.body is None) if self.timekeeper else None,
            "clock_offset_ms": round(
                -self.clock_error_s * 1000 if self.timekeeper else self.clock_offset_ms, 1
            ),
            "clock_synced": synced,
            "cpu_pct": round(rng.uniform(0.5, 3.0), 3),
            "rss_mb": round(rng.uniform(38, 48), 2),
            "temp_c": round(rng.uniform(42, 61), 1),
        }
        tags = {"station": self.id, "version": __version__}
        return self._record("agent", measured_at, tags, fields, None, synced, source)

    def _record(
        self,
        kind: str,
        measured_at: datetime,
        tags: dict[str, str],
        fields: dict[str, FieldValue | None],
        error: str | None,
        synced: int,
        source: str | None,
    ) -> Record:
        self.seq += 1
        clock = ClockInfo(self.boot, self.mono_ns(), synced, source)
        clean = {k: v for k, v in fields.items() if v is not None}
        return Record(kind, measured_at, tags, clean, error, new_id(), clock, self.seq)


# --- the report --------------------------------------------------------------------------


@dataclass
class Report:
    stations: int = 0
    profiles: dict[str, int] = field(default_factory=dict)
    interval_s: float = 0.0
    rounds: int = 0
    records_made: int = 0
    records_sent: int = 0  # in requests, resends included
    records_accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)  # reason -> records
    held: Counter[str] = field(default_factory=Counter)  # profile -> records still pending
    requests: Counter[str] = field(default_factory=Counter)  # HTTP status or error -> count
    clock_reads: int = 0
    ack_latencies_s: list[float] = field(default_factory=list)  # per 200 answer
    delivery_s: list[float] = field(default_factory=list)  # measured -> acknowledged, per record
    round_lag_s: list[float] = field(default_factory=list)  # round started late by, per round
    elapsed_s: float = 0.0  # rounds phase
    drain_s: float = 0.0

    @property
    def errors(self) -> int:
        return sum(n for k, n in self.requests.items() if k != "200")

    def merge(self, other: Report) -> None:
        """Add another generator process's report (one fleet split over processes)."""
        self.stations += other.stations
        for name, n in other.profiles.items():
            self.profiles[name] = self.profiles.get(name, 0) + n
        self.rounds += other.rounds
        self.records_made += other.records_made
        self.records_sent += other.records_sent
        self.records_accepted += other.records_accepted
        self.clock_reads += other.clock_reads
        self.rejected.update(other.rejected)
        self.held.update(other.held)
        self.requests.update(other.requests)
        self.ack_latencies_s += other.ack_latencies_s
        self.delivery_s += other.delivery_s
        self.round_lag_s += other.round_lag_s
        self.elapsed_s = max(self.elapsed_s, other.elapsed_s)
        self.drain_s = max(self.drain_s, other.drain_s)

    def to_dict(self) -> dict[str, Any]:
        def pct(xs: list[float], q: float, scale: float = 1.0) -> float | None:
            return round(percentile(xs, q) * scale, 3) if xs else None

        total = self.elapsed_s + self.drain_s
        return {
            "stations": self.stations,
            "profiles": dict(self.profiles),
            "interval_s": self.interval_s,
            "rounds": self.rounds,
            "records": {
                "made": self.records_made,
                "sent": self.records_sent,
                "accepted": self.records_accepted,
                "rejected": dict(self.rejected),
                "held": dict(self.held),
            },
            "requests": {"total": sum(self.requests.values()), **dict(self.requests)},
            "errors": self.errors,
            "clock_reads": self.clock_reads,
            "ack_latency_ms": {
                "p50": pct(self.ack_latencies_s, 50, 1000),
                "p99": pct(self.ack_latencies_s, 99, 1000),
                "max": round(max(self.ack_latencies_s) * 1000, 3) if self.ack_latencies_s else None,
            },
            "delivery_s": {"p50": pct(self.delivery_s, 50), "p99": pct(self.delivery_s, 99)},
            "round_lag_s": {"p99": pct(self.round_lag_s, 99), "max": pct(self.round_lag_s, 100)},
            "elapsed_s": round(self.elapsed_s, 3),
            "drain_s": round(self.drain_s, 3),
            "records_per_s": round(self.records_accepted / total, 1) if total > 0 else None,
            "offered_records_per_s": round(self.records_made / self.elapsed_s, 1)
            if self.elapsed_s > 0
            else None,
        }

    def summary(self) -> str:
        d = self.to_dict()
        rec, ack = d["records"], d["ack_latency_ms"]
        rejected = ", ".join(f"{k} {v}" for k, v in sorted(rec["rejected"].items())) or "none"
        held = ", ".join(f"{k} {v}" for k, v in sorted(rec["held"].items())) or "none"
        profiles = ", ".join(f"{k} {v}" for k, v in d["profiles"].items())
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(self.requests.items())) or "none"
        return "\n".join(
            [
                f"stations {d['stations']} ({profiles}), {d['rounds']} rounds every"
                f" {d['interval_s']:g} s, {d['elapsed_s']:.1f} s (+{d['drain_s']:.1f} s drain)",
                f"records: made {rec['made']}, sent {rec['sent']}, accepted {rec['accepted']},"
                f" rejected {rejected}, held {held}",
                f"requests: {statuses}; ack p50 {ack['p50']} ms, p99 {ack['p99']} ms;"
                f" {d['records_per_s']} records/s accepted",
            ]
        )


# --- the run -----------------------------------------------------------------------------

_ROUND, _RETRY = 0, 1


class _Fleet:
    def __init__(self, cfg: SimConfig, report: Report) -> None:
        self.cfg = cfg
        self.report = report
        t0 = time.monotonic_ns()
        self.stations = []
        for i, st in enumerate(cfg.stations):
            self.stations.append(SimStation(i, st, profile_of(st.station, cfg.profiles), cfg, t0))
        self.queue: asyncio.Queue[SimStation] = asyncio.Queue()
        self.heap: list[tuple[float, int, int]] = []
        self.in_flight = 0
        self.record_log: IO[str] | None = None

    def enqueue(self, st: SimStation, now: float) -> None:
        if not st.queued and now >= st.retry_at and st.uploadable():
            st.queued = True
            self.queue.put_nowait(st)

    def retry_later(self, st: SimStation, retry_after_s: float | None) -> None:
        delay = st.backoff.next_delay(retry_after_s)
        st.retry_at = time.time() + delay
        heapq.heappush(self.heap, (st.retry_at, _RETRY, st.index))

    async def worker(self, client: httpx.AsyncClient) -> None:
        while True:
            st = await self.queue.get()
            self.in_flight += 1
            try:
                ok = await self.upload(st, client)
            finally:
                self.in_flight -= 1
                st.queued = False
            if ok:
                self.enqueue(st, time.time())  # more came in meanwhile, or a backlog

    async def sync_clock(self, st: SimStation, client: httpx.AsyncClient) -> bool:
        """What the agent's uploader does for a TimeKeeper: read GET /api/v1/time and
        relate it to the station's monotonic clock; held records then get their time."""
        assert st.timekeeper is not None
        m0 = st.mono_ns()
        try:
            response = await client.get(TIME_PATH)
            m1 = st.mono_ns()
            response.raise_for_status()
            server_ns = int(response.json()["unix_ns"])
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            self.report.requests[f"clock:{type(exc).__name__}"] += 1
            return False
        self.report.clock_reads += 1
        st.last_sync = time.monotonic()
        st.timekeeper.learn(server_ns, m0, m1)
        for p in st.pending:
            if p.body is None:
                p.record = st.timekeeper.stamp([p.record])[0]
                if p.record.clock is not None and p.record.clock.source == "collector":
                    p.body = p.record.to_json()
        return True

    async def upload(self, st: SimStation, client: httpx.AsyncClient) -> bool:
        report = self.report
        if (
            st.timekeeper is not None
            and (
                time.monotonic() - st.last_sync > CLOCK_SYNC_EVERY_S
                or any(p.body is None for p in st.pending)
            )
            and not await self.sync_clock(st, client)
        ):
            self.retry_later(st, None)
            return False
        batch = [p for p in st.pending if p.body is not None][:BATCH_MAX]
        if not batch:
            return False
        body = upload_body(st.id, [p.body for p in batch if p.body is not None], st.boot)
        report.records_sent += len(batch)
        t0 = time.perf_counter()
        try:
            response = await client.post(
                upload_path(st.id), content=body, headers=upload_headers(st.token)
            )
        except httpx.HTTPError as exc:
            report.requests[type(exc).__name__] += 1
            self.retry_later(st, None)
            return False
        latency = time.perf_counter() - t0
        status = response.status_code
        report.requests[str(status)] += 1
        if status == 200:
            try:
                payload = response.json()
                accepted = {str(i) for i in payload["accepted"]}
                rejected = {str(r["id"]): str(r.get("reason", "")) for r in payload["rejected"]}
            except (ValueError, KeyError, TypeError):
                report.requests["unreadable_answer"] += 1
                self.retry_later(st, None)
                return False
            report.ack_latencies_s.append(latency)
            now_mono = time.monotonic()
            settled = set()
            for p in batch:
                rid = p.record.id
                if rid in accepted:
                    report.records_accepted += 1
                    report.delivery_s.append(now_mono - p.made)
                    settled.add(rid)
                elif rid in rejected:
                    report.rejected[rejected[rid]] += 1
                    st.dead_letters += 1
                    settled.add(rid)
            st.pending = [p for p in st.pending if p.record.id not in settled]
            st.backoff.reset()
            return True
        if status in (413, 422):
            # The agent halves the batch to find the culprit; envelopes here are a few
            # records, so the simulator dead-letters the batch with the status as reason.
            report.rejected[f"http_{status}"] += len(batch)
            ids = {p.record.id for p in batch}
            st.pending = [p for p in st.pending if p.record.id not in ids]
            return False
        retry = response.headers.get("retry-after", "")
        self.retry_later(st, float(retry) if retry.strip().isdigit() else None)
        return False

    def uploading_left(self) -> bool:
        return (
            self.in_flight > 0
            or not self.queue.empty()
            or any(s.uploadable() for s in self.stations)
        )

    def start_round(self, st: SimStation, now: float, due: float) -> None:
        cfg, report = self.cfg, self.report
        for r in st.make_round(now, cfg.interval_s):
            timed = r.clock is not None and r.clock.source is not None
            body = r.to_json() if timed else None
            st.pending.append(Pending(r, body, time.monotonic()))
            report.records_made += 1
            if self.record_log is not None:
                self.record_log.write((body or r.to_json()) + "\n")
        report.rounds += 1
        report.round_lag_s.append(max(0.0, now - due))
        heapq.heappush(self.heap, (due + cfg.interval_s, _ROUND, st.index))

    async def run(self, stop: asyncio.Event) -> None:
        cfg, report = self.cfg, self.report
        start = time.time()
        t_end = start + cfg.duration_s if cfg.duration_s is not None else math.inf
        for s in self.stations:
            self.heap.append((next_slot(start, cfg.interval_s, s.offset_s), _ROUND, s.index))
        heapq.heapify(self.heap)
        t_start = time.monotonic()
        rounds_over = False
        drain_deadline = math.inf
        drain_started = 0.0
        popped = 0
        while True:
            now = time.time()
            if not rounds_over and (now >= t_end or stop.is_set()):
                rounds_over = True
                report.elapsed_s = time.monotonic() - t_start
                drain_started = time.monotonic()
                drain_deadline = drain_started + cfg.drain_s
                self.heap = [e for e in self.heap if e[1] == _RETRY]  # no more rounds
                heapq.heapify(self.heap)
            if self.heap and self.heap[0][0] <= now and time.monotonic() < drain_deadline:
                due, kind, i = heapq.heappop(self.heap)
                st = self.stations[i]
                if kind == _ROUND:
                    self.start_round(st, now, due)
                self.enqueue(st, now)
                popped += 1
                if popped % 32 == 0:
                    await asyncio.sleep(0)  # let the uploads run when many rounds are due
                continue
            # Scanning every station for what is left is O(fleet): only here, when idle.
            if rounds_over and (time.monotonic() >= drain_deadline or not self.uploading_left()):
                break
            nxt = self.heap[0][0] if self.heap else now + 0.1
            await _sleep_or(stop, min(0.1, max(0.0, nxt - now)))
        report.drain_s = time.monotonic() - drain_started


async def _sleep_or(stop: asyncio.Event, seconds: float) -> None:
    if stop.is_set():
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def run(cfg: SimConfig, stop: asyncio.Event | None = None) -> Report:
    """Simulate the fleet until cfg.duration_s has passed or `stop` is set; then drain."""
    stop = stop or asyncio.Event()
    report = Report(stations=len(cfg.stations), interval_s=cfg.interval_s)
    fleet = _Fleet(cfg, report)
    report.profiles = dict(Counter(s.profile for s in fleet.stations))
    verify: str | bool = str(cfg.ca_bundle) if cfg.ca_bundle else True
    # Several small connection pools rather than one large one: httpcore's pool does work
    # proportional to its connections for every request (benchmarks/results/load.md).
    per_pool = min(cfg.concurrency, POOL_SIZE)
    pools = math.ceil(cfg.concurrency / per_pool)
    limits = httpx.Limits(max_connections=per_pool, max_keepalive_connections=per_pool)
    with contextlib.ExitStack() as files:
        if cfg.record_log is not None:
            fleet.record_log = files.enter_context(cfg.record_log.open("a", encoding="utf-8"))
        async with contextlib.AsyncExitStack() as clients:
            pool = [
                await clients.enter_async_context(
                    httpx.AsyncClient(
                        base_url=cfg.collector.rstrip("/"),
                        timeout=cfg.timeout_s,
                        verify=verify,
                        limits=limits,
                        headers={"User-Agent": f"{AGENT_USER_AGENT} (simulate)"},
                    )
                )
                for _ in range(pools)
            ]
            workers = [
                asyncio.create_task(fleet.worker(pool[k % pools])) for k in range(cfg.concurrency)
            ]
            try:
                await fleet.run(stop)
            finally:
                for w in workers:
                    w.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
    for s in fleet.stations:
        if s.pending:
            report.held[s.profile] += len(s.pending)
    return report


# -- command line ------------------------------------------------------------------------------

log = logging.getLogger("sinyal.simulate")
EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
DESCRIPTION = (
    "Play many stations against a collector through the real upload protocol: each\n"
    "station uses its own token from FILE (written by sinyal-collector agents add\n"
    "--all-stations --out FILE), makes --targets icmp records per round every\n"
    "--interval-s (spread over the interval like the real scheduler) plus a heartbeat a\n"
    "minute, and uploads them gzip-compressed as the agent does. No agent config is read.\n"
    "Profiles: good4g, congested, flapping, deadzone (never uploads), clockwrong (wrong\n"
    "clock; times from the collector's clock). docs/simulate.md has the details."
)


def parser() -> argparse.ArgumentParser:
    sim = argparse.ArgumentParser(
        prog="python -m benchmarks.simulate",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sim.add_argument("--collector", required=True, metavar="URL", help="collector base URL")
    sim.add_argument("--tokens", required=True, metavar="FILE", help="station,token_id,token CSV")
    sim.add_argument("--stations", type=int, metavar="N", help="use the first N rows (default all)")
    sim.add_argument(
        "--profile",
        default="good4g",
        metavar="NAME[=SHARE][,NAME=SHARE...]",
        help="profiles and their shares of the fleet, e.g. good4g=0.9,congested=0.1"
        " (default good4g)",
    )
    sim.add_argument(
        "--interval-s", type=float, default=60.0, metavar="S", help="round interval (default 60)"
    )
    sim.add_argument(
        "--targets", type=int, default=3, metavar="N", help="icmp targets per round (default 3)"
    )
    sim.add_argument(
        "--duration", type=float, metavar="S", help="stop after S seconds (default: Ctrl-C)"
    )
    sim.add_argument(
        "--concurrency",
        type=int,
        default=50,
        metavar="C",
        help="uploads in flight at most (default 50)",
    )
    sim.add_argument("--report", metavar="FILE.json", help="write the report as JSON")
    sim.add_argument("--ca-bundle", metavar="FILE", help="CA certificates for an https collector")
    sim.add_argument(
        "--drain-s",
        type=float,
        default=10.0,
        metavar="S",
        help="after the duration, upload what is pending for at most this long (default 10)",
    )
    sim.add_argument(
        "--seed", type=int, default=0, metavar="N", help="seed of the stations' random values"
    )
    sim.add_argument(
        "--record-log",
        metavar="FILE",
        help="append every record made to FILE, one JSON line each (to compare with the database)",
    )
    return sim


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    def bad(message: str) -> int:
        print(f"simulate: {message}", file=sys.stderr)
        return EXIT_USAGE

    checks = (
        (
            "--stations",
            args.stations,
            args.stations is None or args.stations >= 1,
            "an integer >= 1",
        ),
        ("--interval-s", args.interval_s, 0.1 <= args.interval_s <= 86400, "seconds, 0.1..86400"),
        ("--targets", args.targets, 1 <= args.targets <= 100, "an integer 1..100"),
        ("--duration", args.duration, args.duration is None or args.duration > 0, "seconds > 0"),
        ("--concurrency", args.concurrency, 1 <= args.concurrency <= 10_000, "1..10000"),
        ("--drain-s", args.drain_s, 0 <= args.drain_s <= 3600, "seconds, 0..3600"),
    )
    for option, value, ok, expected in checks:
        if not ok:
            return bad(f"{option}: got {value}, expected {expected}")
    if not args.collector.startswith(("http://", "https://")):
        return bad(f"--collector: got {args.collector!r}, expected an http:// or https:// URL")
    for option, value in (("--report", args.report), ("--record-log", args.record_log)):
        if value is not None and not Path(value).resolve().parent.is_dir():
            return bad(f"{option}: {value}: its directory does not exist")
    ca = Path(args.ca_bundle) if args.ca_bundle else None
    if ca is not None and not ca.is_file():
        return bad(f"--ca-bundle: {ca}: no such file")
    try:
        profiles = parse_profiles(args.profile)
        stations = load_tokens(Path(args.tokens), args.stations)
    except SimulateError as exc:
        return bad(str(exc))
    cfg = SimConfig(
        collector=args.collector,
        stations=stations,
        profiles=profiles,
        interval_s=args.interval_s,
        targets=args.targets,
        duration_s=args.duration,
        concurrency=args.concurrency,
        ca_bundle=ca,
        drain_s=args.drain_s,
        seed=args.seed,
        record_log=Path(args.record_log) if args.record_log else None,
    )

    async def main_() -> Report:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        return await run(cfg, stop)

    log.info(
        "simulating %d stations (%s) against %s, a round every %g s",
        len(stations),
        ", ".join(f"{n}={s:g}" for n, s in profiles),
        args.collector,
        args.interval_s,
    )
    report = asyncio.run(main_())
    print(report.summary())
    if args.report:
        Path(args.report).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    # Nothing acknowledged while requests failed: the collector was not usable.
    return EXIT_FAIL if report.errors and not report.records_accepted else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
