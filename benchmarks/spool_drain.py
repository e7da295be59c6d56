"""Spool drain: how fast one agent delivers a backlog once its collector is reachable again.

Starts InfluxDB 1.6.7 (Debian `influxd`, loopback) and one `sinyal-collector serve` process
with its default limits (the per-token rate limit included), registers one station and its
token with the real CLI, fills an agent spool (agent.spool.Spool) with --hours of that
station's rounds (the fleet simulator's station: 3 icmp records + the heartbeat a minute,
measured in the past), then runs the agent's own uploader (agent.uploader.Uploader.run: 500
records an upload, newest first, backoff and Retry-After as in the field) until the spool is
empty. Reports the time to drain, records/s, the answers by status and the agent's CPU.

    .venv/bin/python benchmarks/spool_drain.py [--hours 1,24]
Writes benchmarks/results/spool-drain.md.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.config import CollectorEndpoint
from agent.spool import Spool
from agent.uploader import Outcome, Uploader
from benchmarks.common import RESULTS, machine
from benchmarks.load import collectors, setup_registry, stored_records
from benchmarks.simulate import SimConfig, SimStation
from tests.harness.dbs import influxd


class CountingUploader(Uploader):
    """The agent's uploader, counting the collector's answers by status (0: no answer)."""

    statuses: Counter[int]

    async def upload_once(self) -> Outcome | None:
        outcome = await super().upload_once()
        if outcome is not None:
            self.statuses[outcome.status or 0] += 1
        return outcome


async def drain(spool: Spool, url: str, station: str, token: str) -> tuple[float, Counter[int]]:
    up = CountingUploader(spool, CollectorEndpoint(url=url, token=token, timeout_s=30), station)
    up.statuses = Counter()
    stop, wake = asyncio.Event(), asyncio.Event()
    t0 = time.monotonic()
    task = asyncio.create_task(up.run(stop, wake, idle_s=0.2))
    while spool.stats().records > 0:
        await asyncio.sleep(0.05)
    seconds = time.monotonic() - t0
    stop.set()
    await task
    return seconds, up.statuses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hours", default="1,24")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp_s, influxd("/usr/bin/influxd") as db:
        tmp = Path(tmp_s)
        tokens, _ = setup_registry(tmp, db.url, 1)
        st_tok = tokens[0]
        for hours in (float(h) for h in args.hours.split(",")):
            name = f"drain_{int(hours * 60)}m"
            with collectors(tmp, db.url, name, 1) as procs:
                spool = Spool(tmp / f"{name}.sqlite3", max_bytes=2**30)
                cfg = SimConfig("http://unused", [st_tok])
                st = SimStation(0, st_tok, "good4g", cfg, time.monotonic_ns())
                start = time.time() - hours * 3600
                made = 0
                for k in range(int(hours * 60)):
                    records = st.make_round(start + 60 * k, 60.0)
                    spool.put(records)
                    made += len(records)
                cpu0 = time.process_time()
                seconds, statuses = asyncio.run(drain(spool, procs[0][1], st.id, st_tok.token))
                cpu = time.process_time() - cpu0
                spool.close()
            time.sleep(1)
            stored = stored_records(db, name)
            rows.append((hours, made, stored, seconds, statuses, cpu))
            print(rows[-1], flush=True)
    lines = [
        "# Spool drain: one agent's backlog after an outage",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC on {machine()}, a"
        " machine shared with other work. Command:",
        "",
        f"    .venv/bin/python benchmarks/spool_drain.py {' '.join(sys.argv[1:])}",
        "",
        "One agent (agent.spool.Spool + agent.uploader.Uploader.run, as `sinyal-agent run`"
        " uploads) and one `sinyal-collector serve` with its default limits (per token: 50"
        " records/s sustained, a burst of 1,000; 5 requests/s, a burst of 30) writing to"
        " InfluxDB 1.6.7 on loopback. The spool holds the station's rounds of the outage (3 icmp"
        " records and the heartbeat a minute, measured in the past).",
        "",
        "| outage | records in the spool | stored | time to drain | records/s | answers"
        " | agent CPU |",
        "|---|---|---|---|---|---|---|",
    ]
    for hours, made, stored, seconds, statuses, cpu in rows:
        answers = ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items()))
        lines.append(
            f"| {hours:g} h | {made:,} | {stored:,} | {seconds:.1f} s | {made / seconds:,.0f} "
            f"| {answers} | {cpu:.2f} s |"
        )
    lines += [
        "",
        "An answer of 429 is the per-token rate limit: the agent waits its Retry-After and"
        " sends the next 500 records. Benchmarks are not timed tests: compare figures from one"
        " run.",
        "",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "spool-drain.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
