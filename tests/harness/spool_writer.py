"""A spool writer for the durability tests, run as a separate process.

    python tests/harness/spool_writer.py SPOOL_PATH --count N [--seed S] [--batch B] [--threads T]

Puts N records (in batches of 1..B, from T threads sharing one Spool) and prints
each record's id on its own line, flushed, only after the put() that stored it
returned: a printed id is a promise that the record is on disk. The tests kill
this process with SIGKILL at random moments and then hold the spool to every
promise it printed.

`sample_record` is also imported by the tests, so both build the same records.
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
from datetime import UTC, datetime, timedelta

from agent.contract.record import ClockInfo, Record
from agent.spool import Spool

_STATION = "3171011001001"
_UPLINKS = (("telkomsel", "Telkomsel"), ("indosat", "Indosat Ooredoo"), ("xl", "XL Axiata"))
_BASE_TIME = datetime(2026, 11, 22, 4, 13, tzinfo=UTC)


def sample_record(rng: random.Random, seq: int = 0) -> Record:
    """A realistic icmp, dns or http record; floats are floats, so to_json is canonical."""
    uplink, operator = rng.choice(_UPLINKS)
    tags = {"station": _STATION, "uplink": uplink, "operator": operator}
    at = _BASE_TIME + timedelta(seconds=seq, microseconds=rng.randrange(1_000_000))
    clock = ClockInfo("9f0c6f1e2d3b4a5c8e7f6a5b4c3d2e1f", rng.randrange(10**9, 10**13), 1)
    kind = rng.choice(("icmp", "dns", "http"))
    rid = f"{rng.getrandbits(128):032x}"
    if kind == "icmp":
        received = rng.randint(0, 10)
        fields: dict[str, int | float] = {
            "sent": 10,
            "received": received,
            "loss_pct": float(100 * (10 - received) / 10),
            "timeout_ms": 2000.0,
            "ok": 1 if received else 0,
        }
        if received:
            low = round(rng.uniform(8, 60), 3)
            fields.update(rtt_min_ms=low, rtt_avg_ms=round(low * 1.2, 3), mos=4.3)
        else:
            fields["mos"] = 1.0
        return Record(
            kind,
            at,
            {**tags, "target": rng.choice(("google-dns", "cloudflare", "kpu"))},
            fields,
            None if received else "timeout",
            rid,
            clock,
        )
    if kind == "dns":
        return Record(
            kind,
            at,
            {**tags, "resolver": "operator", "qname": "kpu.go.id", "qtype": "A"},
            {"resolve_ms": round(rng.uniform(5, 400), 3), "rcode": 0, "answers": 2, "ok": 1},
            None,
            rid,
            clock,
        )
    return Record(
        kind,
        at,
        {**tags, "target": "sirekap"},
        {
            "dns_ms": round(rng.uniform(1, 90), 3),
            "connect_ms": round(rng.uniform(10, 300), 3),
            "total_ms": round(rng.uniform(200, 3000), 3),
            "status": 200,
            "bytes": rng.randrange(1, 200_000),
            "ok": 1,
        },
        None,
        rid,
        clock,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("path")
    ap.add_argument("--count", type=int, required=True, help="records per thread")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=1, help="largest put() batch")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    out_lock = threading.Lock()
    spool = Spool(args.path)

    def write(thread_no: int) -> None:
        rng = random.Random(args.seed * 1000 + thread_no)
        seq = 0
        while seq < args.count:
            n = min(rng.randint(1, args.batch), args.count - seq)
            records = [sample_record(rng, seq + i) for i in range(n)]
            spool.put(records)
            seq += n
            with out_lock:
                sys.stdout.write("".join(f"{r.id}\n" for r in records))
                sys.stdout.flush()

    threads = [threading.Thread(target=write, args=(i,)) for i in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spool.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
