"""The drill's stations: real-looking TPS codes across provinces, written as a registry CSV.

A TPS code is the 10-digit village code (2 province, 2 regency, 2 district, 4 village digits)
plus a 3-digit TPS number. Real agents' stations are spread over three provinces in three
time zones; simulated stations (the fleet simulator's) get a province of their own, so the
two never share a series and the report can tell them apart.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from collector.station import Station

OPERATORS = ("telkomsel", "indosat", "xlsmart")


@dataclass(frozen=True)
class Region:
    province: str
    regency: str
    regency_code: str  # 4 digits: province + regency
    lat: float
    lon: float
    tz: str
    share: float  # of the real stations


# Where the real agents are: WIB, WITA and WIT (Kota Bandung, Kota Makassar, Kota Jayapura).
REAL_REGIONS = (
    Region("Jawa Barat", "Kota Bandung", "3273", -6.9147, 107.6098, "Asia/Jakarta", 0.4),
    Region("Sulawesi Selatan", "Kota Makassar", "7371", -5.1477, 119.4327, "Asia/Makassar", 0.3),
    Region("Papua", "Kota Jayapura", "9171", -2.5337, 140.7181, "Asia/Jayapura", 0.3),
)
# The simulated fleet: Kota Semarang.
SIM_REGION = Region("Jawa Tengah", "Kota Semarang", "3374", -6.9667, 110.4167, "Asia/Jakarta", 1)


def label(station: Station) -> str:
    """The lab's name for a station's namespace: its TPS code."""
    return station.id


def _stations(region: Region, n: int) -> list[Station]:
    out = []
    for i in range(n):
        # ten TPS per village (a dense kelurahan), ten villages per district
        district, village, tps = 1 + i // 100, 1001 + i % 100 // 10, i % 10 + 1
        sid = f"{region.regency_code}{district:02d}{village:04d}{tps:03d}"
        out.append(
            Station(
                id=sid,
                name=f"TPS {tps:03d} {region.regency} {village}",
                province=region.province,
                regency=region.regency,
                # a few hundred metres apart, so the map shows them side by side
                lat=round(region.lat + 0.004 * (i % 7), 5),
                lon=round(region.lon + 0.004 * (i // 7), 5),
                tz=region.tz,
                expected_operator=OPERATORS[i % len(OPERATORS)],
            )
        )
    return out


def real_fleet(n: int) -> list[Station]:
    """`n` (>= 6) real stations over the three provinces; in each, operators take turns."""
    if n < 6:
        raise ValueError(f"real stations: got {n}, expected at least 6 (two per province)")
    counts = [max(2, round(n * r.share)) for r in REAL_REGIONS]
    counts[0] += n - sum(counts)
    out: list[Station] = []
    for region, count in zip(REAL_REGIONS, counts, strict=True):
        out += _stations(region, count)
    return out


def simulated_fleet(n: int) -> list[Station]:
    return _stations(SIM_REGION, n)


def write_csv(path: Path, stations: Sequence[Station]) -> None:
    """The registry CSV (`sinyal-collector stations import`, docs/collector.md)."""
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "name", "province", "regency", "lat", "lon", "tz", "expected_operator"])
        for s in stations:
            w.writerow(
                [s.id, s.name, s.province, s.regency, s.lat, s.lon, s.tz, s.expected_operator]
            )


def read_tokens(path: Path) -> dict[str, str]:
    """station -> token from the `station,token_id,token` file of `agents add --all-stations`."""
    with path.open(newline="", encoding="utf-8") as f:
        return {row["station"]: row["token"] for row in csv.DictReader(f)}
