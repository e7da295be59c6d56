"""Abuse: what one abusive token, and a flood of idle and slowloris sockets, do to a
well-behaved station's uploads (issue 15, findings 7 and 2).

Results: benchmarks/results/hardening.md.

Starts a real influxd (Debian's 1.6.7 on loopback, `tests.harness.dbs.influxd`) and
`sinyal-collector serve` as a process of its own (`tests.harness.collector_process`), then:

1. per-token limits: one station uploads 10 records per request at 4 requests/s (its limit is 5)
   (open loop: each request leaves on time, answered or not) and its ack latency is kept,
   for 2 x SECONDS in windows of WINDOW_S seconds, quiet and abused in turn: in an abused
   window another token floods max_records-record envelopes from ABUSERS processes. The
   windows alternate so that both see the same machine (it is shared: a load that comes and
   goes would otherwise land on one side); the first SETTLE_S of each quiet window is left
   out. The abuser's bucket fills while it is paused, so it gets a full envelope through
   at the start of each abused window.
   Run twice: with the default limits, and with the limits raised out of reach (as on the
   old main). Reported: p50/p99 of the good station's acks, quiet and abused, what the
   abuser got through, and how many 429s it was answered.
2. connection flood: the collector's open-file limit set to 1024 (the usual default), and
   1,100 sockets held open against it (half idle, half slowloris, each reopened when the
   collector closes it) while the station uploads as above. Reported: acknowledged
   uploads, p50/p99, the guard's closes by reason (from /metrics).

Run: PYTHONPATH=. .venv/bin/python benchmarks/abuse.py [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

# Run as a script (python benchmarks/X.py): the checkout's packages come first.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import RESULTS
from collector.config import Limits
from tests.harness.collector_process import (
    OTHER_STATION,
    Attack,
    CollectorProcess,
    collector_config_file,
    collector_process,
)
from tests.harness.collector_stack import envelope, golden
from tests.harness.dbs import InfluxServer, influxd

ABUSERS = 4
ABUSE_RECORDS = Limits().max_records  # the largest envelope the collector takes
RATE = 4.0  # the good station's requests per second, within its token's limit
WINDOW_S = 10.0  # quiet and abused windows alternate
SETTLE_S = 1.0  # left out at the start of each window (abusers starting or stopping)
# The shipped defaults, written out: the test harness's config relaxes them.
DEFAULT_LIMITS: dict[str, Any] = {
    key: getattr(Limits(), key)
    for key in ("max_records", "records_per_s", "records_burst", "requests_per_s", "requests_burst")
}
UNLIMITED = {
    "records_per_s": 1e7,
    "records_burst": 10**9,
    "requests_per_s": 1e6,
    "requests_burst": 10**7,
}


def good_station(
    c: CollectorProcess, seconds: float, abuser: Abuser | None = None
) -> dict[str, Any]:
    """The good station's acks for `seconds`: their summary, or with an abuser, the
    summaries of its quiet and its abused windows ({"quiet": ..., "abused": ...})."""
    body = json.dumps(envelope([golden("icmp-ok") for _ in range(10)])).encode()
    headers = {"Authorization": f"Bearer {c.token}"}
    per_window = int(WINDOW_S * RATE)

    def abused(i: int) -> bool:
        return (i // per_window) % 2 == 1

    def window(i: int) -> str | None:
        """The window request i is sent in (None: the first SETTLE_S of a quiet one, while
        the abuser's last requests are answered, left out)."""
        if abused(i):
            return "abused"
        return None if i % per_window < SETTLE_S * RATE else "quiet"

    async def run() -> list[float | None]:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(
            base_url=c.url, headers=headers, timeout=30, limits=limits
        ) as client:

            async def one() -> float | None:
                t0 = time.perf_counter()
                try:
                    r = await client.post("/api/v1/measurements", content=body)
                except httpx.HTTPError:
                    return None
                return time.perf_counter() - t0 if r.status_code == 200 else None

            tasks = []
            start = time.perf_counter()
            for i in range(int(seconds * RATE)):
                await asyncio.sleep(max(0.0, start + i / RATE - time.perf_counter()))
                if abuser is not None and i % per_window == 0:
                    abuser.run(abused(i))
                tasks.append(asyncio.create_task(one()))
            if abuser is not None:
                abuser.run(False)
            return list(await asyncio.gather(*tasks))

    results = asyncio.run(run())
    if abuser is None:
        return summary(results)
    return {
        name: summary([r for i, r in enumerate(results) if window(i) == name])
        for name in ("quiet", "abused")
    }


def summary(results: list[float | None]) -> dict[str, Any]:
    ok = [r for r in results if r is not None]
    q = statistics.quantiles(ok, n=100) if len(ok) > 2 else [float("nan")] * 99
    return {"sent": len(results), "acked": len(ok), "p50_ms": q[49] * 1e3, "p99_ms": q[98] * 1e3}


def abuse_loop(
    url: str, token: str, body: bytes, stop: Any, go: Any, accepted: Any, limited: Any
) -> None:
    """One abusive client (a process of its own, as an attacker's would be): while `go` is
    set, posts `body` back to back, ignoring Retry-After. At the lowest CPU priority: a
    remote attacker's CPU is not the collector's, and on this small machine an abuser at
    normal priority mostly measures the CPU it takes from everything else."""
    os.nice(19)
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
        while not stop.is_set():
            if not go.wait(0.1):
                continue
            try:
                r = client.post("/api/v1/measurements", content=body)
            except httpx.HTTPError:
                continue
            if r.status_code == 200:
                with accepted.get_lock():
                    accepted.value += len(r.json()["accepted"])
            elif r.status_code == 429:
                with limited.get_lock():
                    limited.value += 1


class Abuser:
    """Floods max_records-record envelopes with another station's token from ABUSERS
    processes, while run(True)."""

    def __init__(self, c: CollectorProcess) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.stop = ctx.Event()
        self.go = ctx.Event()
        self.running_s = 0.0  # time spent flooding
        self._since: float | None = None
        self.accepted_v = ctx.Value("q", 0)
        self.limited_v = ctx.Value("q", 0)
        recs = [golden("icmp-ok", OTHER_STATION) for _ in range(ABUSE_RECORDS)]
        body = json.dumps(envelope(recs, OTHER_STATION)).encode()
        args = (c.url, c.other_token, body, self.stop, self.go, self.accepted_v, self.limited_v)
        self.procs = [ctx.Process(target=abuse_loop, args=args) for _ in range(ABUSERS)]

    @property
    def accepted(self) -> int:
        return int(self.accepted_v.value)

    @property
    def limited(self) -> int:
        return int(self.limited_v.value)

    def run(self, on: bool) -> None:
        now = time.monotonic()
        if self._since is not None:
            self.running_s += now - self._since
        self._since = now if on else None
        if on:
            self.go.set()
        else:
            self.go.clear()

    def __enter__(self) -> Abuser:
        for p in self.procs:
            p.start()
        time.sleep(3.0)  # the processes start (and wait for run(True))
        return self

    def __exit__(self, *exc: object) -> None:
        self.run(False)
        self.stop.set()
        for p in self.procs:
            p.join(60)


def guard_counts(c: CollectorProcess) -> dict[str, float]:
    out = {}
    for line in httpx.get(f"{c.url}/metrics", timeout=10).text.splitlines():
        if line.startswith("sinyal_connections_closed_total{"):
            reason = line.split('"')[1]
            out[reason] = float(line.rsplit(" ", 1)[1])
    return out


def rate_limit_runs(
    tmp: Path, influx: InfluxServer, seconds: float, repeat: int = 1
) -> list[dict[str, Any]]:
    """The good station under the abuser: `repeat` runs with the default limits (each with
    its own collector and database), then one with the limits out of reach."""
    rows: list[dict[str, Any]] = []
    settings = (
        *((f"default limits, run {i + 1}", DEFAULT_LIMITS) for i in range(repeat)),
        ("per-token limits out of reach (as on the old main)", UNLIMITED),
    )
    for name, limits in settings:
        db = f"abuse{len(rows)}"
        influx.create_database(db)
        cfg = collector_config_file(tmp / db, influx.url, db, limits=limits)
        with collector_process(cfg) as c:
            good_station(c, 3)  # warm up
            with Abuser(c) as abuser:
                good = good_station(c, 2 * seconds, abuser)
            rows.append(
                {
                    "setting": name,
                    "quiet": good["quiet"],
                    "abused": good["abused"],
                    "abuser_records_per_s": abuser.accepted / abuser.running_s,
                    "abuser_429": abuser.limited,
                }
            )
            print(rows[-1], flush=True)
    return rows


def flood_run(tmp: Path, influx: InfluxServer, seconds: float) -> dict[str, Any]:
    db = "flood"
    influx.create_database(db)
    cfg = collector_config_file(tmp / db, influx.url, db, limits=DEFAULT_LIMITS)
    with collector_process(cfg, file_limit=1024) as c:
        quiet = good_station(c, seconds)
        with Attack(c.host_port, 1100) as attack:
            deadline = time.monotonic() + 60
            while attack.opened < 1100 and time.monotonic() < deadline:
                time.sleep(0.2)
            busy = good_station(c, seconds)
            fds = c.open_fds()
        row = {
            "quiet": quiet,
            "flooded": busy,
            "sockets_opened": attack.opened,
            "collector_fds": fds,
            "closed": guard_counts(c),
        }
    print(row, flush=True)
    return row


# What follows this line in hardening.md is written by hand (analyses, the runs' history) and
# kept when the benchmark rewrites the tables above it.
MARKER = "<!-- history: kept by benchmarks/abuse.py -->"


def fmt(d: dict[str, Any]) -> str:
    return f"{d['acked']}/{d['sent']} acked, p50 {d['p50_ms']:.1f} ms, p99 {d['p99_ms']:.1f} ms"


def report(rows: list[dict[str, Any]], flood: dict[str, Any], seconds: float) -> str:
    lines = [
        "# Hardening: abuse against the collector (issue 15)",
        "",
        f"`benchmarks/abuse.py --seconds {seconds:g}` on {platform.node()}"
        f" ({platform.machine()}, Python {platform.python_version()}), InfluxDB 1.6.7 on"
        " loopback, `sinyal-collector serve` as its own process. A machine shared with other"
        " work: compare figures within one run, not across runs.",
        "",
        "## Finding 7: one abusive token (per-token limits)",
        "",
        f"A well-behaved station: 10 records per request, {RATE:g} requests/s, open loop, for"
        f" {2 * seconds:g} s in windows of {WINDOW_S:g} s, quiet and abused in turn (so that"
        " both see the same shared machine; the first"
        f" {SETTLE_S:g} s of each quiet window left out); its acknowledgement latency. The"
        " abuser,"
        f" in the abused windows: another station's token, {ABUSE_RECORDS:,}-record envelopes"
        f" (limits.max_records) from {ABUSERS} processes back to back, ignoring Retry-After,"
        " at the lowest CPU priority (on this 2-core machine an abuser at normal priority"
        " mostly measures the CPU it takes). Its records/s are per second of abuse: its bucket"
        " fills while it pauses, so each abused window starts with a full bucket.",
        "",
        "| setting | good station quiet | good station under abuse | p99 ratio |"
        " abuser's records/s acknowledged | abuser's 429s |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = r["abused"]["p99_ms"] / r["quiet"]["p99_ms"]
        lines.append(
            f"| {r['setting']} | {fmt(r['quiet'])} | {fmt(r['abused'])} | {ratio:.2f} |"
            f" {r['abuser_records_per_s']:,.0f} | {r['abuser_429']:,} |"
        )
    limited = [r for r in rows if r["setting"].startswith("default limits")]
    ratios = [r["abused"]["p99_ms"] / r["quiet"]["p99_ms"] for r in limited]
    met = sum(x <= 2 for x in ratios)
    verdict = "met" if met == len(ratios) else "NOT met"
    shown = ", ".join(f"{x:.2f}x" for x in ratios)
    lines += [
        "",
        f"Target (issue 15): under one abusive token, the good station's p99 within 2x of its"
        f" quiet value, with the default limits: {verdict} ({met} of {len(ratios)} runs:"
        f" {shown}). The p99 of {limited[0]['quiet']['sent']} answers lies among their"
        f" {limited[0]['quiet']['sent'] // 100 + 1} slowest: a few coincidences with an"
        " abusive write, or with anything else on the machine, move it.",
    ]
    closed = ", ".join(f"{k} {v:,.0f}" for k, v in flood["closed"].items() if v)
    lines += [
        "",
        "## Finding 2: idle and slowloris sockets beyond the file limit",
        "",
        f"The collector's open-file limit 1024 (connection cap {1024 - 128}); 1,100 sockets held"
        f" open against it, half idle, half sending a header byte every 0.2 s, each reopened"
        f" when closed ({flood['sockets_opened']:,} opened in all).",
        "",
        "| | good station |",
        "|---|---|",
        f"| quiet | {fmt(flood['quiet'])} |",
        f"| during the flood | {fmt(flood['flooded'])} |",
        "",
        f"Collector's open descriptors during the flood: {flood['collector_fds']}."
        f" Connections the guard closed: {closed}.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--only-rate", action="store_true", help="finding 7 only; no report")
    ap.add_argument(
        "--repeat", type=int, default=3, help="runs with the default limits (finding 7)"
    )
    ap.add_argument(
        "--max-records",
        type=int,
        default=None,
        help="set limits.max_records and limits.records_burst to this (and the abuser's envelopes)",
    )
    args = ap.parse_args()
    if args.max_records is not None:
        DEFAULT_LIMITS.update(max_records=args.max_records, records_burst=args.max_records)
        global ABUSE_RECORDS
        ABUSE_RECORDS = args.max_records
    with (
        tempfile.TemporaryDirectory(prefix="sinyal-abuse-") as d,
        influxd("/usr/bin/influxd") as db,
    ):
        tmp = Path(d)
        rows = rate_limit_runs(tmp, db, args.seconds, args.repeat)
        if args.only_rate:
            return
        flood = flood_run(tmp, db, args.seconds)
    text = report(rows, flood, args.seconds)
    out = RESULTS / "hardening.md"
    if out.exists() and MARKER in out.read_text():
        text += "\n" + MARKER + out.read_text().split(MARKER, 1)[1]
    else:
        text += "\n" + MARKER + "\n"
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
