"""Admission: what a decoded record must pass besides the contract, and the rejection it gets.

A record is rejected individually, with a stable reason code, never silently dropped:

  invalid             the record breaks the contract (agent/contract/record.py); detail says where
  out_of_scope        the token may not write for this record's station (or, on the
                      station route, the record is for another station than the URL's)
  unknown_station     the station is not in the registry
  time_unknown        the agent says measured_at could not be established (clock.source unknown)
  time_out_of_range   measured_at is older than limits.past_s or newer than now + limits.future_s
  implausible         values that contradict each other (RTT above the round's timeout,
                      received > sent, loss that does not match sent/received)
  database            the database refused the line; detail is its reason
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from agent.contract.record import Record
from collector.config import Limits
from collector.lineproto import record_to_point
from collector.station import Station

RTT_FIELDS = ("rtt_min_ms", "rtt_avg_ms", "rtt_p50_ms", "rtt_p95_ms", "rtt_max_ms")


class ScopeLike(Protocol):
    def allows(self, station_id: str) -> bool: ...


class RouteScope:
    """A token narrowed to the one station its upload URL names
    (POST /api/v1/stations/{station}/measurements): a proxy routes by that station, so a
    record for any other station would reach a process that does not own it."""

    def __init__(self, token: ScopeLike, station: str) -> None:
        self.token = token
        self.station = station

    def allows(self, station_id: str) -> bool:
        return station_id == self.station and self.token.allows(station_id)

    def refusal(self, station_id: str) -> str:
        if station_id != self.station:
            return f"station {station_id} is not the URL's station {self.station}"
        return f"station {station_id} is outside the token"


class RegistryLike(Protocol):
    def get_station(self, station_id: str) -> Station | None: ...


@dataclass(frozen=True)
class Rejection:
    id: str | None
    reason: str
    detail: str = ""
    index: int | None = None  # position in the request's records, for records without an id

    def to_dict(self) -> dict[str, object]:
        d: dict[str, object] = {"id": self.id, "reason": self.reason}
        if self.detail:
            d["detail"] = self.detail
        if self.index is not None:
            d["index"] = self.index
        return d


@dataclass
class Prepared:
    """What survived the checks: one line per record, in the same order."""

    records: list[Record] = field(default_factory=list)
    stations: list[Station] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)


def plausibility(record: Record) -> str | None:
    """Why a record's values contradict each other, or None."""
    f = record.fields
    if record.kind == "icmp":
        timeout = f.get("timeout_ms")
        if isinstance(timeout, int | float):
            for name in RTT_FIELDS:
                v = f.get(name)
                if isinstance(v, int | float) and v > timeout:
                    return f"{name} {v} above the round's timeout_ms {timeout}"
        sent, received = f.get("sent"), f.get("received")
        if isinstance(sent, int) and isinstance(received, int):
            if received > sent:
                return f"received {received} > sent {sent}"
            loss = f.get("loss_pct")
            if sent > 0 and isinstance(loss, int | float):
                expected = 100.0 * (sent - received) / sent
                if abs(loss - expected) > 0.01:
                    return f"loss_pct {loss} does not match sent {sent}, received {received}"
    return None


class Admission:
    """What a decoded record must pass besides the contract, with the rejection it gets."""

    def __init__(self, scope: ScopeLike, registry: RegistryLike, limits: Limits, now: datetime):
        self.scope = scope
        self.registry = registry
        self.oldest = now - timedelta(seconds=limits.past_s)
        self.newest = now + timedelta(seconds=limits.future_s)
        self.station: Station | None = None  # of the previous record: uploads are per station

    def admit(
        self, record: Record, rejected: list[Rejection], plausible: bool = False
    ) -> Station | None:
        """The record's registry station, or None after appending why it is rejected.
        plausible: the caller knows plausibility() would find nothing."""
        station_id = record.tags["station"]
        station = self.station
        if station is None or station.id != station_id:
            if not self.scope.allows(station_id):
                refusal = (
                    self.scope.refusal(station_id)
                    if isinstance(self.scope, RouteScope)
                    else f"station {station_id} is outside the token"
                )
                rejected.append(Rejection(record.id, "out_of_scope", refusal))
                return None
            station = self.station = self.registry.get_station(station_id)
            if station is None:
                rejected.append(
                    Rejection(record.id, "unknown_station", f"station {station_id} not registered")
                )
                return None
        if record.clock is not None and record.clock.source == "unknown":
            rejected.append(
                Rejection(
                    record.id,
                    "time_unknown",
                    "measured_at could not be established: the agent's clock was not"
                    " synchronised and it could not be related to the collector's clock",
                )
            )
            return None
        if not self.oldest <= record.measured_at <= self.newest:
            rejected.append(
                Rejection(
                    record.id,
                    "time_out_of_range",
                    f"measured_at {record.measured_at.isoformat()} outside "
                    f"[{self.oldest.isoformat()}, {self.newest.isoformat()}]",
                )
            )
            return None
        why = None if plausible else plausibility(record)
        if why is not None:
            rejected.append(Rejection(record.id, "implausible", why))
            return None
        return station

    @staticmethod
    def reference_line(record: Record, station: Station, rejected: list[Rejection]) -> str | None:
        extra = {"province": station.province, "regency": station.regency}
        try:
            return record_to_point(record, extra)
        except ValueError as exc:  # a value line protocol cannot carry verbatim
            rejected.append(Rejection(record.id, "invalid", str(exc)))
            return None


def index_of(path: str) -> int | None:
    if path.startswith("records[") and "]" in path:
        try:
            return int(path[len("records[") : path.index("]")])
        except ValueError:
            return None
    return None
