"""The one small interface every probe implements."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from agent.clock import clock_info
from agent.config import AgentConfig, Uplink
from agent.contract.record import ClockInfo, ErrorCode, FieldValue, Record, utcnow


@dataclass(frozen=True)
class ProbeEnv:
    """What a probe needs from its surroundings, decided once at start-up (preflight)."""

    config: AgentConfig
    icmp_privileged: bool = False


class Probe(Protocol):
    """A probe measures one kind of thing and returns records.

    `run` returns one record per (uplink, target) outcome: a target that is
    down, a name that does not resolve, a refused connection are records with
    ok=0 and an error code. It raises only for bugs.
    """

    kind: str
    interval_s: float
    exclusive: bool  # when True nothing else runs beside it

    async def run(self) -> list[Record]: ...


class Stamp:
    """The measured-at time of one measurement and the clock facts that go with it."""

    __slots__ = ("clock", "time")

    def __init__(self) -> None:
        self.time: datetime = utcnow()
        self.clock: ClockInfo = clock_info()


def make_record(
    kind: str,
    stamp: Stamp,
    station: str,
    uplink: Uplink,
    tags: Mapping[str, str],
    fields: Mapping[str, FieldValue | None],
    error: ErrorCode | None = None,
) -> Record:
    all_tags = {"station": station, "uplink": uplink.name, "operator": uplink.operator, **tags}
    clean = {k: v for k, v in fields.items() if v is not None}
    return Record(
        kind, stamp.time, all_tags, clean, error.value if error else None, clock=stamp.clock
    )
