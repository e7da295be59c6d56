"""The collector's one station model: a registry row, as ingest, status and reports use it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Station:
    """A polling station as the registry knows it. `tz` is its IANA zone (Asia/Jakarta
    WIB, Asia/Makassar WITA, Asia/Jayapura WIT); `expected_operator` the operator its
    uplink should be on, when known."""

    id: str
    name: str
    province: str
    regency: str
    lat: float
    lon: float
    tz: str
    expected_operator: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
