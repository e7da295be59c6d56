"""From an agent's upload to database lines: admission (collector/admission.py), the fast
path (collector/fastpath.py), the reference path for anything unusual.

The HTTP layer (collector/app.py) only routes; everything a record must pass lives in
admission and is testable without a server. Two entry points, one per form the records come
in: prepare_decoded() for an envelope FastPath.decode_envelope() decoded whole (the usual
case), prepare_raw() for JSON-decoded records (then each record is tried on the fast path
and, failing that, decoded by Record.from_dict). Both give exactly what the reference
(Record.from_dict, admission, record_to_point) gives.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from agent.contract.record import ContractError, Record, record_id_of
from collector.admission import Admission, Prepared, RegistryLike, Rejection, ScopeLike
from collector.config import Limits
from collector.fastpath import FastPath, Hit, count_records
from collector.lineproto import time_ns

__all__ = [
    "FastPath",
    "Prepared",
    "Rejection",
    "count_records",
    "prepare_decoded",
    "prepare_raw",
]


def prepare_decoded(
    hits: Sequence[Hit],
    scope: ScopeLike,
    registry: RegistryLike,
    limits: Limits,
    now: datetime,
    fast: FastPath,
) -> Prepared:
    """The records of an envelope FastPath.decode_envelope() decoded whole."""
    return _prepare(((h, h) for h in hits), scope, registry, limits, now, fast)


def prepare_raw(
    raw_records: Sequence[Any],
    scope: ScopeLike,
    registry: RegistryLike,
    limits: Limits,
    now: datetime,
    fast: FastPath,
) -> Prepared:
    """An envelope's raw (JSON-decoded) records: the fast path where it applies, the
    reference decoder for the rest."""
    return _prepare(
        ((raw, fast.decode(raw)) for raw in raw_records), scope, registry, limits, now, fast
    )


def _prepare(
    items: Iterable[tuple[Any, Hit | None]],
    scope: ScopeLike,
    registry: RegistryLike,
    limits: Limits,
    now: datetime,
    fast: FastPath,
) -> Prepared:
    out = Prepared()
    invalid: list[Rejection] = []
    admission = Admission(scope, registry, limits, now)
    for i, (raw, hit) in enumerate(items):
        if hit is None:
            try:
                record = Record.from_dict(raw, f"records[{i}]")
            except ContractError as exc:
                invalid.append(Rejection(record_id_of(raw), "invalid", str(exc), i))
                continue
        else:
            record = hit.record
        station = admission.admit(record, out.rejected, hit is not None and hit.plausible)
        if station is None:
            continue
        if hit is None:
            line = admission.reference_line(record, station, out.rejected)
            if line is None:
                continue
        else:
            t_ns = time_ns(record.measured_at)
            if record.seq is not None:
                t_ns += record.seq % 1000
            prefix = fast.prefix(record, hit.tag_values, station.province, station.regency)
            line = f"{prefix} {hit.encoded_fields} {t_ns}"
        out.records.append(record)
        out.stations.append(station)
        out.lines.append(line)
    out.rejected[:0] = invalid
    return out
