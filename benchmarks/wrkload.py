"""A cheap load generator: wrk (Debian's wrk 4.1) replaying pre-built agent uploads.

The fleet simulator (benchmarks/simulate.py) costs more CPU per envelope than the collector
it drives (benchmarks/results/load.md, in its history), so it cannot show what a machine's
collectors hold. Here the envelopes are built before the run, in Python, and replayed by wrk
with benchmarks/wrk/replay.lua; what wrk costs is measured in every run.

What is replayed is what agents send: for every station (its own token, from the registry's
bulk `agents add --all-stations --out`) one gzip envelope a round of `targets` icmp records
and the heartbeat, made by the fleet simulator's station (benchmarks.simulate.SimStation:
the agent's own ICMP summary, its clock info and spool sequence numbers) and encoded by the
contract's encoder (agent.contract.record: Record.to_json, encode_envelope_records). The first
round of a station is simulated; its later rounds repeat its fields under a new record id,
measurement time, sequence number and monotonic clock (simulating every round costs several
times more and would make a 100,000-station build take minutes). Every record id is unique.

Times: envelope i of the plan (station s's round k is i = k * stations + s) is planned to be
sent at start + i / rate and its records are measured at that time, so a station reports
every stations / rate seconds and, when wrk keeps up, every record is current when it is
sent (the collector refuses records more than limits.future_s ahead of its clock).

Pacing: Debian's wrk has no constant-rate mode (that is wrk2). replay.lua's delay() gives
each request the time left until its planned send time, so requests leave on schedule as
long as a connection is free; with enough connections (a few times rate x latency) the
schedule holds, and when it does not, how late requests left is measured and reported
rather than hidden (wrk's own latency starts at the send). A fixed per-connection delay
(connections / rate) would drift: the latency adds to every interval.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import json
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trustme

from agent.contract.record import ClockInfo, Record, encode_envelope_records, new_id
from agent.contract.version import AGENT_USER_AGENT, __version__
from benchmarks.simulate import SimConfig, SimStation, StationToken

LUA = Path(__file__).resolve().parent / "wrk" / "replay.lua"
STATION_PATH = "/api/v1/stations/{station}/measurements"  # routed by station (nginx hash)
LEGACY_PATH = "/api/v1/measurements"
HEADER = "%010d%014d"  # byte length, planned send time (epoch ms): replay.lua reads it
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Plan:
    tokens: Sequence[StationToken]
    rate: float  # envelopes per second, all stations
    rounds: int  # envelopes per station
    start: float  # epoch seconds: envelope 0's planned send (and measurement) time
    threads: int = 2  # wrk threads: one request file each
    host: str = "127.0.0.1"
    path: str = STATION_PATH
    targets: int = 3  # icmp records per envelope (plus the heartbeat)

    @property
    def envelopes(self) -> int:
        return len(self.tokens) * self.rounds

    @property
    def span_s(self) -> float:
        return self.envelopes / self.rate


@dataclass(frozen=True)
class Built:
    envelopes: int
    records: int
    bytes: int  # request bytes in all (headers and gzip bodies)
    seconds: float


def _request(plan: Plan, st: SimStation, records: list[Record], at: float) -> bytes:
    body = gzip.compress(
        encode_envelope_records(
            st.id,
            __version__,
            datetime.fromtimestamp(at, UTC),
            [r.to_json() for r in records],
            st.boot,
        ),
        6,
    )
    head = (
        f"POST {plan.path.format(station=st.id)} HTTP/1.1\r\nHost: {plan.host}\r\n"
        f"User-Agent: {AGENT_USER_AGENT}\r\nAuthorization: Bearer {st.token}\r\n"
        "Content-Type: application/json\r\nContent-Encoding: gzip\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


def next_round(st: SimStation, first: list[Record], k: int, at: float) -> list[Record]:
    """Round k of a station: its first round's fields, a new id, time, seq and clock."""
    measured = datetime.fromtimestamp(at, UTC)
    mono_ns = st.mono_start_ns + int((at - first[0].measured_at.timestamp()) * 1e9)
    out = []
    for r in first:
        st.seq += 1
        fields = r.fields
        if r.kind == "agent":
            fields = {**fields, "uptime_s": round(float(fields["uptime_s"]) + 60.0 * k, 3)}
        clock = r.clock or ClockInfo()
        out.append(
            dataclasses.replace(
                r,
                id=new_id(),
                measured_at=measured,
                seq=st.seq,
                fields=fields,
                clock=dataclasses.replace(clock, monotonic_ns=mono_ns),
            )
        )
    return out


def _build_thread(plan: Plan, thread: int, out: Path) -> tuple[int, int, int]:
    """Write thread `thread`'s file (stations s with s % threads == thread), in send order;
    (envelopes, records, bytes)."""
    n = len(plan.tokens)
    cfg = SimConfig("http://unused", plan.tokens, targets=plan.targets, interval_s=n / plan.rate)
    t0 = time.monotonic_ns()
    mine = range(thread, n, plan.threads)
    stations = {s: SimStation(s, plan.tokens[s], "good4g", cfg, t0) for s in mine}
    firsts: dict[int, list[Record]] = {}
    envelopes = records = size = 0
    with out.open("wb") as f:
        for k in range(plan.rounds):
            for s in mine:
                at = plan.start + (k * n + s) / plan.rate
                st = stations[s]
                if k == 0:
                    recs = firsts[s] = st.make_round(at, cfg.interval_s)
                else:
                    recs = next_round(st, firsts[s], k, at)
                req = _request(plan, st, recs, at)
                f.write((HEADER % (len(req), round(at * 1000))).encode())
                f.write(req)
                envelopes += 1
                records += len(recs)
                size += len(req)
    return envelopes, records, size


def build(plan: Plan, out_dir: Path) -> Built:
    """The request files for `plan`, one per wrk thread, built in one process per thread."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("thread-*"):
        old.unlink()
    t0 = time.monotonic()
    jobs = [(plan, t, out_dir / f"thread-{t + 1}.bin") for t in range(plan.threads)]
    with mp.get_context("fork").Pool(min(plan.threads, os.cpu_count() or 1)) as pool:
        parts = pool.starmap(_build_thread, jobs)
    return Built(
        envelopes=sum(p[0] for p in parts),
        records=sum(p[1] for p in parts),
        bytes=sum(p[2] for p in parts),
        seconds=time.monotonic() - t0,
    )


def estimate_build_s(plan: Plan, out_dir: Path, sample: int = 500) -> float:
    """Seconds `build(plan)` will take on this machine now: a sample of `sample` stations'
    first two rounds built in this process, timed, scaled to the plan and its processes."""
    rounds = min(2, plan.rounds)
    small = dataclasses.replace(plan, tokens=plan.tokens[:sample], rounds=rounds, threads=1)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    _build_thread(small, 0, out_dir / "estimate.bin")
    per_envelope = (time.monotonic() - t0) / small.envelopes
    (out_dir / "estimate.bin").unlink()
    return per_envelope * plan.envelopes / min(plan.threads, os.cpu_count() or 1)


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) a process has used, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@dataclass
class WrkResult:
    summary: dict[str, Any]  # what replay.lua's done() printed
    seconds: float  # from wrk's start until every thread had its answers (or the deadline)
    cpu: dict[str, float]  # CPU seconds over that window: "wrk" and each watched process
    finished: bool  # every thread sent everything and had every answer

    @property
    def rate(self) -> float:
        """Envelopes answered 200 per second over the window."""
        return float(self.summary["ok"]) / self.seconds if self.seconds else 0.0


def run(
    url: str,
    out_dir: Path,
    plan: Plan,
    connections: int,
    deadline_s: float,
    watch: dict[str, int] | None = None,
) -> WrkResult:
    """Replay the plan's files against `url` (scheme://host:port) with wrk; stop when every
    thread is done or `deadline_s` after the plan's start. CPU of wrk and of the `watch`
    processes is sampled from /proc over the same window."""
    for done in out_dir.glob("thread-*.done"):
        done.unlink()
    watch = dict(watch or {})
    duration = int(max(1.0, plan.start + deadline_s - time.time())) + 5
    proc = subprocess.Popen(
        ["wrk", "-t", str(plan.threads), "-c", str(connections), "-d", f"{duration}s",
         "--timeout", "60s", "-s", str(LUA), url, "--", str(out_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    pids = {"wrk": proc.pid, **watch}
    before = {k: cpu_seconds(p) for k, p in pids.items()}
    t0 = time.monotonic()
    finished = False
    end = plan.start + deadline_s
    while time.time() < end and proc.poll() is None:
        if len(list(out_dir.glob("thread-*.done"))) == plan.threads:
            finished = True
            break
        time.sleep(0.2)
    seconds = time.monotonic() - t0
    after = {}
    for k, p in pids.items():
        try:
            after[k] = cpu_seconds(p)
        except OSError:
            after[k] = before[k]
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # wrk stops its threads and runs done()
    stdout, stderr = proc.communicate(timeout=60)
    line = next((ln for ln in stdout.splitlines() if ln.startswith("SINYAL-WRK ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary (exit {proc.returncode}): {stderr.strip()}")
    return WrkResult(
        summary=json.loads(line.split(" ", 1)[1]),
        seconds=seconds,
        cpu={k: after[k] - before[k] for k in pids},
        finished=finished,
    )


SITE = Path(__file__).resolve().parent.parent / "deploy" / "nginx" / "collector.conf"
SHIPPED_SERVERS = (
    "    server 127.0.0.1:8081 max_fails=1 fail_timeout=10s;\n"
    "    server 127.0.0.1:8082 max_fails=1 fail_timeout=10s;\n"
)


def nginx_config(tmp: Path, port: int, upstreams: Sequence[str], workers: int = 2) -> str:
    """deploy/nginx/collector.conf as shipped, with its listen address, certificate (a
    throw-away CA's, made here) and collector processes replaced, in a main config of its own
    (temp paths in `tmp`, enough connections for the benchmark's clients and upstreams)."""
    site = SITE.read_text()
    if SHIPPED_SERVERS not in site or "listen 443 ssl" not in site:
        raise RuntimeError(f"{SITE}: no longer has the lines this benchmark replaces")
    ca = trustme.CA()
    leaf = ca.issue_cert("collector.example.org", "127.0.0.1")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    leaf.private_key_pem.write_to_path(str(key))
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    for extra in leaf.cert_chain_pems[1:]:
        extra.write_to_path(str(cert), append=True)
    servers = "".join(
        f"    server {u.removeprefix('http://')} max_fails=1 fail_timeout=10s;\n" for u in upstreams
    )
    site = site.replace(SHIPPED_SERVERS, servers)
    site = site.replace("listen 443 ssl", f"listen 127.0.0.1:{port} ssl")
    site = site.replace("/etc/letsencrypt/live/collector.example.org/fullchain.pem", str(cert))
    site = site.replace("/etc/letsencrypt/live/collector.example.org/privkey.pem", str(key))
    (tmp / "site.conf").write_text(site)
    return f"""\
worker_processes {workers};
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 8192; }}
http {{
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  include {tmp}/site.conf;
}}
"""


@contextlib.contextmanager
def nginx(tmp: Path, upstreams: Sequence[str], workers: int = 2) -> Iterator[tuple[int, str]]:
    """Debian's nginx with nginx_config on a free loopback port: (master pid, https base
    URL; wrk does not check the certificate)."""
    tmp.mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    conf = tmp / "nginx.conf"
    conf.write_text(nginx_config(tmp, port, upstreams, workers))
    proc = subprocess.Popen(
        ["nginx", "-c", str(conf), "-e", str(tmp / "error.log"), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=(tmp / "stderr.log").open("wb"),
    )
    try:
        for _ in range(100):
            if proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {(tmp / 'stderr.log').read_text().strip()}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"nginx did not listen on 127.0.0.1:{port}")
        yield proc.pid, f"https://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
