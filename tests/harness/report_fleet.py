"""A known fleet for the report tests and benchmark: stations over three provinces in three time
zones, three operators, rounds with known degradations and silences.

`fleet(n)` gives the registry; `records(...)` the agent records of every round (dicts as the
agents upload them). The degradations are a pure function of (station index, local time), so
a test can say which station should fail which threshold. PYTEST_DONT_REWRITE.
"""

from __future__ import annotations

import csv
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from agent.contract.record import format_time
from collector.regions import tps_code

OPERATORS = ("telkomsel", "indosat", "xlsmart")
# (province, code, tz, ((regency, code), ...), (lat, lon) centre)
PROVINCES = (
    ("Jawa Barat", "32", "Asia/Jakarta", (("Kota Bandung", "73"), ("Kabupaten Bogor", "01")),
     (-6.9, 107.6)),
    ("Sulawesi Selatan", "73", "Asia/Makassar",
     (("Kota Makassar", "71"), ("Kabupaten Gowa", "06")), (-5.15, 119.45)),
    ("Papua", "91", "Asia/Jayapura", (("Kota Jayapura", "71"), ("Kabupaten Jayapura", "03")),
     (-2.55, 140.7)),
)  # fmt: skip


@dataclass(frozen=True)
class FleetStation:
    index: int
    id: str
    name: str
    province: str
    regency: str
    lat: float
    lon: float
    tz: str
    operator: str

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.tz)


def fleet(n: int = 50) -> list[FleetStation]:
    out = []
    for i in range(n):
        prov, pcode, tz, regs, (lat, lon) = PROVINCES[i % 3]
        reg, rcode = regs[(i // 3) % 2]
        # One Papua station keeps WITA (a tz that differs from its province's usual zone).
        if i == 5:
            tz = "Asia/Makassar"
        sid = tps_code(pcode + rcode, i)  # a well-formed TPS code of that regency
        out.append(
            FleetStation(
                i,
                sid,
                f"TPS {i % 1000:03d} {reg}",
                prov,
                reg,
                round(lat + (i % 7) * 0.05, 5),
                round(lon + (i % 5) * 0.05, 5),
                tz,
                OPERATORS[(i // 2) % 3],
            )
        )
    return out


def write_registry_csv(stations: list[FleetStation], path: Path) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "name", "province", "regency", "lat", "lon", "tz", "expected_operator"])
        for s in stations:
            w.writerow([s.id, s.name, s.province, s.regency, s.lat, s.lon, s.tz, s.operator])
    return path


SILENT_ALL = 3  # station index silent for the whole period
SILENT_DAY2 = 4  # silent from 12:00 local on the second day


def _state(s: FleetStation, local: datetime, day: int) -> str:
    """The known degradations: 'ok', 'slow' (latency over warn), 'lossy' (loss over alert),
    'down' (no reply) or 'silent' (nothing sent)."""
    if s.index == SILENT_ALL:
        return "silent"
    if s.index == SILENT_DAY2 and day == 1 and local.hour >= 12:
        return "silent"
    if s.index % 5 == 1 and day == 0 and 8 <= local.hour < 11:
        return "slow"
    if s.index % 7 == 2 and day == 1 and 9 <= local.hour < 10:
        return "down"
    if s.index % 11 == 6 and 18 <= local.hour < 20:
        return "lossy"
    return "ok"


def _rec(kind: str, s: FleetStation, t: datetime, tags: dict[str, str], fields: dict[str, Any],
         error: str | None = None) -> dict[str, Any]:  # fmt: skip
    return {
        "id": uuid.uuid4().hex,
        "kind": kind,
        "measured_at": format_time(t),
        "tags": {"station": s.id, "uplink": "modem0", "operator": s.operator, **tags},
        "fields": fields,
        "error": error,
    }


def records(
    s: FleetStation,
    first_day: datetime,
    days: int = 2,
    icmp_every_s: int = 600,
    seed: int = 7,
    slow_kinds: bool = True,
) -> Iterator[dict[str, Any]]:
    """Every record of station `s` from local midnight of `first_day` (a date) for `days`."""
    rnd = random.Random(seed * 100_003 + s.index)
    tz = s.zone
    start = datetime.combine(first_day.date(), time(), tz)
    end = start + timedelta(days=days)
    t = start
    step = timedelta(seconds=icmp_every_s)
    k = 0
    while t < end:
        local = t.astimezone(tz)
        day = (local.date() - start.date()).days
        state = _state(s, local, day)
        utc = t.astimezone(UTC)
        if state != "silent":
            yield _icmp(s, utc, state, rnd)
            if slow_kinds and k % 3 == 0:
                ok = state not in ("down",)
                yield _rec("dns", s, utc + timedelta(seconds=20),
                           {"resolver": "operator", "qname": "kpu.go.id", "qtype": "A"},
                           {"resolve_ms": round(rnd.uniform(20, 90) * (4 if state == "slow"
                            else 1), 3), "rcode": 0 if ok else 2, "answers": 1 if ok else 0,
                            "ok": 1 if ok else 0}, None if ok else "dns_servfail")  # fmt: skip
                http_ok = state not in ("down",) and rnd.random() > 0.02
                f: dict[str, Any] = {"ok": 1 if http_ok else 0}
                if http_ok:
                    ttfb = round(rnd.uniform(80, 400) * (4 if state == "slow" else 1), 3)
                    f.update(ttfb_ms=ttfb, total_ms=round(ttfb + rnd.uniform(200, 900), 3),
                             status=200, bytes=50_000)  # fmt: skip
                yield _rec("http", s, utc + timedelta(seconds=30), {"target": "kpu-web"}, f,
                           None if http_ok else "timeout")  # fmt: skip
            if slow_kinds and k % 6 == 0:
                ok = state not in ("down",) and rnd.random() > 0.05
                f = {"payload_bytes": 2_000_000, "ok": 1 if ok else 0, "connected": 1,
                     "cut_off": 0 if ok else 1}  # fmt: skip
                if ok:
                    d = round(rnd.uniform(2, 25), 3)
                    f.update(duration_s=d, rate_mbps=round(16 / d, 3), status=200,
                             sent_bytes=2_000_000)  # fmt: skip
                yield _rec("upload", s, utc + timedelta(seconds=40), {"target": "collector"}, f,
                           None if ok else "connection_reset")  # fmt: skip
            if slow_kinds and k % 36 == 0:
                dl = round(rnd.uniform(0.5, 30), 3)
                ul = round(rnd.uniform(0.1, 10), 3)
                yield _rec("throughput", s, utc + timedelta(seconds=50),
                           {"backend": "mini", "server": "collector"},
                           {"download_mbps": dl, "upload_mbps": ul, "ok": 1,
                            "idle_latency_ms": 40.0,
                            "loaded_latency_ms": 40.0 + rnd.uniform(0, 300),
                            "duration_s": 20.0})  # fmt: skip
        t += step
        k += 1


def _icmp(s: FleetStation, t: datetime, state: str, rnd: random.Random) -> dict[str, Any]:
    tags = {"target": "kpu"}
    if state == "down":
        return _rec("icmp", s, t, tags,
                    {"sent": 10, "received": 0, "loss_pct": 100.0, "mos": 1.0, "ok": 0},
                    "timeout")  # fmt: skip
    base = {"Asia/Jakarta": 25.0, "Asia/Makassar": 45.0, "Asia/Jayapura": 70.0}[s.tz]
    rtt = round(base + rnd.uniform(0, 40) + (180 if state == "slow" else 0), 3)
    received = 10 if state != "lossy" else 7
    if state == "ok" and rnd.random() < 0.03:
        received = 9
    return _rec("icmp", s, t, tags, {
        "sent": 10, "received": received, "loss_pct": 100.0 * (10 - received) / 10,
        "rtt_min_ms": round(rtt * 0.9, 3), "rtt_avg_ms": rtt, "rtt_p50_ms": rtt,
        "rtt_p95_ms": round(rtt * 1.2, 3), "rtt_max_ms": round(rtt * 1.3, 3),
        "jitter_ms": round(rnd.uniform(1, 12) + (25 if state == "slow" else 0), 3),
        "mos": 4.2 if state == "ok" else 3.0, "ok": 1,
    })  # fmt: skip


def edge_records(s: FleetStation, day: datetime) -> list[dict[str, Any]]:
    """Rounds at 06:59, 07:00, 12:59 and 13:00 local on `day`, for the voting-hours edges."""
    out = []
    for hh, mm, rtt in ((6, 59, 901.0), (7, 0, 902.0), (12, 59, 903.0), (13, 0, 904.0)):
        t = datetime.combine(day.date(), time(hh, mm), s.zone).astimezone(UTC)
        r = _rec("icmp", s, t, {"target": "edge"}, {
            "sent": 10, "received": 10, "loss_pct": 0.0, "rtt_p50_ms": rtt, "rtt_avg_ms": rtt,
            "jitter_ms": 1.0, "mos": 4.0, "ok": 1,
        })  # fmt: skip
        out.append(r)
    return out


def line(rec: dict[str, Any], s: FleetStation) -> str:
    """The record as the collector stores it (registry tags added), for direct writes."""
    from collector.lineproto import encode_point

    t = datetime.fromisoformat(rec["measured_at"].replace("Z", "+00:00"))
    ns = int(t.timestamp()) * 1_000_000_000 + t.microsecond * 1000
    tags = {**rec["tags"], "province": s.province, "regency": s.regency}
    return encode_point(rec["kind"], tags, rec["fields"], ns)
