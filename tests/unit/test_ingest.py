"""collector.ingest: both entry points (prepare_raw for JSON-decoded records, prepare_decoded
for an envelope the fast path decoded whole) give what the reference path
(tests/harness/reference_ingest.py) gives on the golden records, accepted and rejected alike
(generated inputs: tests/unit/test_fastpath.py)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from agent.contract.record import decode_envelope_lenient
from collector.admission import Prepared
from collector.config import Limits
from collector.fastpath import FastPath
from collector.ingest import prepare_decoded, prepare_raw
from tests.conftest import FIXTURES, GOLDEN_RECORDS
from tests.harness.fake_registry import STATIONS, Registry, Scope
from tests.harness.reference_ingest import prepare

NOW = datetime(2026, 11, 22, 6, 45, tzinfo=UTC)  # just after the golden envelope's last record
LIMITS = Limits()
ENVELOPE: dict[str, Any] = orjson.loads((FIXTURES / "records" / "envelope.json").read_bytes())
MINUTELY = {"icmp", "dns", "http"}  # the kinds decode_envelope() takes whole


def envelope(records: list[Any]) -> dict[str, Any]:
    return {**ENVELOPE, "records": copy.deepcopy(records)}


def reference(records: list[Any]) -> Prepared:
    env, bad = decode_envelope_lenient(orjson.dumps(envelope(records)), orjson.loads)
    return prepare(env, bad, Scope(), Registry(), LIMITS, NOW)


def assert_same(got: Prepared, want: Prepared) -> None:
    assert got.lines == want.lines
    assert [r.to_dict() for r in got.records] == [r.to_dict() for r in want.records]
    assert [r.clock for r in got.records] == [r.clock for r in want.records]
    assert got.stations == want.stations
    assert [r.to_dict() for r in got.rejected] == [r.to_dict() for r in want.rejected]


def test_the_golden_envelope_is_every_golden_record() -> None:
    assert len(ENVELOPE["records"]) == len(GOLDEN_RECORDS)
    for raw, name in zip(ENVELOPE["records"], GOLDEN_RECORDS, strict=True):
        assert raw == orjson.loads((FIXTURES / "records" / f"{name}.json").read_bytes())


def test_prepare_raw_gives_the_references_answer_on_the_golden_records() -> None:
    want = reference(ENVELOPE["records"])
    assert len(want.lines) == len(GOLDEN_RECORDS) and want.rejected == []
    assert want.stations == [STATIONS["3171011001001"]] * len(GOLDEN_RECORDS)
    got = prepare_raw(copy.deepcopy(ENVELOPE["records"]), Scope(), Registry(), LIMITS, NOW,
                      FastPath())  # fmt: skip
    assert_same(got, want)


def test_prepare_decoded_gives_the_references_answer_on_the_golden_records() -> None:
    records = [r for r in ENVELOPE["records"] if r["kind"] in MINUTELY]
    wire = FastPath().decode_envelope(orjson.dumps(envelope(records)))
    assert wire is not None and len(wire["records"]) == len(records) == 6
    fast = FastPath()
    got = prepare_decoded(wire["records"], Scope(), Registry(), LIMITS, NOW, fast)
    assert_same(got, reference(records))
    again = prepare_decoded(wire["records"], Scope(), Registry(), LIMITS, NOW, fast)
    assert again.lines == got.lines  # the second upload of a series uses the cached prefix


@pytest.mark.parametrize("seq", [None, 0, 1999, 2**53])
def test_seq_goes_into_the_nanoseconds_on_both_paths(seq: int | None) -> None:
    records = copy.deepcopy(ENVELOPE["records"][:1])
    if seq is not None:
        records[0]["seq"] = seq
    want = reference(records)
    (line,) = want.lines
    assert line.endswith(f"{123456000 + (seq or 0) % 1000}")
    assert_same(prepare_raw(copy.deepcopy(records), Scope(), Registry(), LIMITS, NOW,
                            FastPath()), want)  # fmt: skip
    wire = FastPath().decode_envelope(orjson.dumps(envelope(records)))
    assert wire is not None
    assert_same(prepare_decoded(wire["records"], Scope(), Registry(), LIMITS, NOW,
                                FastPath()), want)  # fmt: skip


def test_rejections_are_the_references_with_invalid_ones_first() -> None:
    records = copy.deepcopy(ENVELOPE["records"])
    records[1]["tags"]["station"] = "5171011001001"  # registered, outside the token
    records[2]["tags"]["station"] = "3171019999999"  # inside the token, not registered
    records[3]["measured_at"] = "2026-01-01T00:00:00.000000Z"  # too old
    records[4]["kind"] = "smoke"  # breaks the contract
    records[7]["fields"]["download_mbps"] = -1.0  # out of the contract's range
    records[8]["clock"] = {"synced": 0, "source": "unknown"}
    want = reference(records)
    got = prepare_raw(copy.deepcopy(records), Scope(), Registry(), LIMITS, NOW, FastPath())
    assert_same(got, want)
    reasons = [(r.reason, r.index) for r in got.rejected]
    assert reasons == [("invalid", 4), ("invalid", 7), ("out_of_scope", None),
                       ("unknown_station", None), ("time_out_of_range", None),
                       ("time_unknown", None)]  # fmt: skip
    kept = (0, 5, 6, *range(9, len(records)))  # the golden envelope may grow at its end
    assert [r.id for r in got.records] == [records[i]["id"] for i in kept]


def test_a_record_that_is_not_an_object_is_invalid_by_index() -> None:
    records = [ENVELOPE["records"][0], "text", None]
    got = prepare_raw(copy.deepcopy(records), Scope(), Registry(), LIMITS, NOW, FastPath())
    assert_same(got, reference(records))
    assert [(r.id, r.reason, r.index) for r in got.rejected] == [
        (None, "invalid", 1), (None, "invalid", 2),
    ]  # fmt: skip
