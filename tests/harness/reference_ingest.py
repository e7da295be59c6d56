"""The reference ingest path, for tests: Record.from_dict validates (decode_envelope_lenient),
admission checks, record_to_point encodes. collector.ingest's two entry points must give
exactly its answer (tests/unit/test_ingest_fastpath.py)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from agent.contract.record import ContractError, Envelope
from collector.admission import Admission, Prepared, RegistryLike, Rejection, ScopeLike, index_of
from collector.config import Limits


def prepare(
    envelope: Envelope,
    contract_errors: Sequence[tuple[str | None, ContractError]],
    scope: ScopeLike,
    registry: RegistryLike,
    limits: Limits,
    now: datetime,
) -> Prepared:
    out = Prepared()
    for rid, err in contract_errors:
        index = index_of(err.path)
        out.rejected.append(Rejection(rid, "invalid", str(err), index))
    checks = Admission(scope, registry, limits, now)
    for record in envelope.records:
        station = checks.admit(record, out.rejected)
        if station is None:
            continue
        line = checks.reference_line(record, station, out.rejected)
        if line is None:
            continue
        out.records.append(record)
        out.stations.append(station)
        out.lines.append(line)
    return out
