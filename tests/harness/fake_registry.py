"""A registry and a token scope in memory, implementing collector.admission's StationLike,
RegistryLike and ScopeLike Protocols, for the unit tests of admission and ingest (the real
SQLite registry is collector/registry.py, tested in tests/unit/test_registry.py)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Station:
    id: str
    province: str
    regency: str


STATIONS = {
    s.id: s
    for s in (
        Station("3171011001001", "DKI Jakarta", "Kota Jakarta Pusat"),
        Station("3171011001002", 'DKI, "Jakarta"', "Kota=Pusat\\x"),
        Station("5171011001001", "Bali", ""),
    )
}


class Registry:
    """STATIONS, and nothing else, are registered."""

    def get_station(self, station_id: str) -> Station | None:
        return STATIONS.get(station_id)


class Scope:
    """A region token for the stations whose id starts with `prefix`."""

    def __init__(self, prefix: str = "31") -> None:
        self.prefix = prefix

    def allows(self, station_id: str) -> bool:
        return station_id.startswith(self.prefix)
