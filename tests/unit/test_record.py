"""agent.contract.record: the wire contract, checked against the golden records.

tests/fixtures/records/*.json are read by the collector's tests too: a change that
breaks one of these files breaks the contract between agent and collector.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from agent.contract import record
from agent.contract.record import (
    MEASUREMENTS,
    SCHEMA_VERSION,
    ContractError,
    Record,
    decode_envelope,
    decode_envelope_lenient,
    encode_envelope,
)
from tests.conftest import FIXTURES, GOLDEN_RECORDS

RECORDS = FIXTURES / "records"
CASES = GOLDEN_RECORDS


def load(name: str) -> Any:
    return json.loads((RECORDS / f"{name}.json").read_text())


def canon(obj: Any) -> str:
    """JSON text that tells 0 from 0.0, so a round trip must keep number types too."""
    return json.dumps(obj, sort_keys=True, allow_nan=False)


def test_every_golden_file_is_covered() -> None:
    assert sorted(p.stem for p in RECORDS.glob("*.json")) == sorted([*CASES, "envelope"])


@pytest.mark.parametrize("name", CASES)
def test_golden_record_round_trips(name: str) -> None:
    raw = load(name)
    rec = Record.from_dict(raw)
    assert canon(rec.to_dict()) == canon(raw)
    assert canon(Record.from_json(rec.to_json()).to_dict()) == canon(raw)


@pytest.mark.parametrize("name", CASES)
def test_golden_record_is_realistic(name: str) -> None:
    rec = Record.from_dict(load(name))
    assert rec.kind == name.split("-")[0]
    assert set(rec.tags) == set(MEASUREMENTS[rec.kind].tags)
    assert rec.measured_at.year == 2026 and rec.measured_at.utcoffset() is not None
    if rec.fields.get("skipped") == 1:  # a skipped heavy test measured nothing
        assert rec.error is None and "ok" not in rec.fields and rec.fields["skip_reason"]
    else:
        assert (rec.error is None) == (rec.fields["ok"] == 1)


def test_total_loss_stores_no_rtt() -> None:
    rec = Record.from_dict(load("icmp-total-loss"))
    assert rec.error == "timeout"
    assert (rec.fields["ok"], rec.fields["received"], rec.fields["loss_pct"]) == (0, 0, 100.0)
    assert not [k for k in rec.fields if k.startswith("rtt_") or k == "jitter_ms"]


def test_golden_envelope_round_trips() -> None:
    text = (RECORDS / "envelope.json").read_text()
    env = decode_envelope(text)
    assert env.schema == SCHEMA_VERSION == 1
    assert env.station == "3171011001001"
    assert [r.id for r in env.records] == [load(n)["id"] for n in CASES]
    # The envelope carries exactly the single-record golden files.
    assert [canon(r.to_dict()) for r in env.records] == [canon(load(n)) for n in CASES]
    assert canon(json.loads(encode_envelope(env))) == canon(json.loads(text))
    assert decode_envelope(encode_envelope(env)) == env


# --- invalid records -----------------------------------------------------------------------


def variant(name: str, path: str, value: Any) -> dict[str, Any]:
    """The golden record `name` with the element at dotted `path` set (or removed: ...)."""
    d: dict[str, Any] = copy.deepcopy(load(name))
    *parents, last = path.split(".")
    target = d
    for p in parents:
        target = target[p]
    if value is ...:
        del target[last]
    else:
        target[last] = value
    return d


INVALID = [
    # (golden record, element changed, new value or ... to remove it, expected error path)
    ("icmp-ok", "kind", "ping", "kind"),
    ("icmp-ok", "kind", "signal", "kind"),  # signal records are not in the contract yet
    ("icmp-ok", "fields.rtt_median_ms", 26.7, "fields.rtt_median_ms"),
    ("icmp-ok", "extra", 1, "extra"),
    ("icmp-ok", "fields.loss_pct", 101.0, "fields.loss_pct"),
    ("icmp-ok", "fields.loss_pct", -0.5, "fields.loss_pct"),
    ("icmp-ok", "fields.rtt_min_ms", float("nan"), "fields.rtt_min_ms"),
    ("icmp-ok", "fields.rtt_max_ms", float("inf"), "fields.rtt_max_ms"),
    ("icmp-ok", "fields.rtt_avg_ms", "27.905", "fields.rtt_avg_ms"),
    ("icmp-ok", "fields.ok", True, "fields.ok"),
    ("icmp-ok", "fields.sent", False, "fields.sent"),
    ("icmp-ok", "fields.sent", 10.5, "fields.sent"),
    ("icmp-ok", "fields.mos", 4.6, "fields.mos"),
    ("http-ok", "fields.status", 600, "fields.status"),
    ("icmp-ok", "measured_at", "2026-11-22T04:13:00.123456", "measured_at"),
    ("icmp-ok", "measured_at", "22/11/2026 04:13", "measured_at"),
    ("icmp-ok", "measured_at", 1795322580, "measured_at"),
    ("icmp-ok", "measured_at", ..., "measured_at"),
    ("icmp-ok", "id", "0B6F3E2A9C8D4E17A5B3C1D2E4F60789", "id"),
    ("icmp-ok", "id", "0b6f3e2a-9c8d-4e17-a5b3-c1d2e4f60789", "id"),
    ("icmp-ok", "id", "0b6f3e2a9c8d4e17a5b3c1d2e4f6078", "id"),
    ("icmp-ok", "id", 12345, "id"),
    ("icmp-total-loss", "error", "packet_loss", "error"),
    ("http-refused", "error", "refused", "error"),
    ("icmp-ok", "tags.resolver", "google", "tags.resolver"),
    ("icmp-ok", "tags.target", "", "tags.target"),
    ("icmp-ok", "tags.target", "x" * 257, "tags.target"),
    ("dns-ok", "tags.qtype", 1, "tags.qtype"),
    ("icmp-ok", "tags.station", ..., "tags.station"),  # every tag of the kind is required
    ("dns-ok", "tags.resolver", ..., "tags.resolver"),
    ("dns-ok", "fields", [], "fields"),
    ("icmp-ok", "clock.synced", 2, "clock.synced"),
    ("icmp-ok", "clock.synced", True, "clock.synced"),
    ("icmp-ok", "clock.monotonic_ns", -1, "clock.monotonic_ns"),
]


@pytest.mark.parametrize(
    ("name", "element", "value", "path"),
    INVALID,
    ids=[f"{n}:{e}={v!r:.24}" for n, e, v, _ in INVALID],
)
def test_invalid_record_names_the_element(name: str, element: str, value: Any, path: str) -> None:
    with pytest.raises(ContractError) as info:
        Record.from_dict(variant(name, element, value))
    assert info.value.path == path
    assert str(info.value).startswith(f"{path}: ")


def test_a_record_that_is_not_an_object() -> None:
    with pytest.raises(ContractError) as info:
        Record.from_dict([load("icmp-ok")], "records[0]")
    assert info.value.path == "records[0]"


def test_not_measured_is_absent_never_zero() -> None:
    # null is "not measured": accepted, and the field is simply absent afterwards.
    rec = Record.from_dict(variant("icmp-ok", "fields.jitter_ms", None))
    assert "jitter_ms" not in rec.fields


def test_an_integral_float_is_accepted_for_an_int_field() -> None:
    rec = Record.from_dict(variant("icmp-ok", "fields.sent", 10.0))
    assert rec.fields["sent"] == 10 and type(rec.fields["sent"]) is int


# --- envelopes -----------------------------------------------------------------------------


def envelope_with(records: list[Any], /, **header: Any) -> dict[str, Any]:
    env = load("envelope")
    env["records"] = records
    env.update(header)
    return dict(env)


def test_bad_record_in_an_envelope_is_named_by_its_index() -> None:
    records = [load(n) for n in CASES]
    records[2] = variant("dns-ok", "fields.rcode", 5000)
    with pytest.raises(ContractError) as info:
        decode_envelope(json.dumps(envelope_with(records)))
    assert info.value.path == "records[2].fields.rcode"


def test_nan_in_envelope_text_is_rejected() -> None:
    # Python's json module reads the non-standard NaN literal; the contract must not.
    text = json.dumps(envelope_with([load("icmp-ok")])).replace("27.905", "NaN")
    assert "NaN" in text
    with pytest.raises(ContractError) as info:
        decode_envelope(text)
    assert info.value.path == "records[0].fields.rtt_avg_ms"


def test_lenient_decoding_keeps_the_good_and_lists_the_bad() -> None:
    good = [load(n) for n in CASES]
    bad: list[Any] = [
        variant("icmp-ok", "fields.loss_pct", 101.0),
        variant("dns-ok", "kind", "signal"),
        {"kind": "icmp"},  # no id at all
        "not a record",
    ]
    bad[0]["id"] = "1" * 32
    bad[1]["id"] = "2" * 32
    mixed = [good[0], bad[0], good[1], good[2], bad[1], good[3], bad[2], good[4], bad[3], *good[5:]]
    env, errors = decode_envelope_lenient(json.dumps(envelope_with(mixed)))
    assert [r.id for r in env.records] == [g["id"] for g in good]
    assert [(rid, err.path) for rid, err in errors] == [
        ("1" * 32, "records[1].fields.loss_pct"),
        ("2" * 32, "records[4].kind"),
        (None, "records[6].id"),
        (None, "records[8]"),
    ]
    assert env.station == "3171011001001"


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"schema": 2}, "schema"),
        ({"schema": "1"}, "schema"),
        ({"agent": {"version": "0.1.0"}}, "agent.station"),
        ({"agent": {"station": "3171011001001", "version": ""}}, "agent.version"),
        ({"agent": "3171011001001"}, "agent"),
        ({"sent_at": "2026-11-22T04:17:00"}, "sent_at"),
        ({"records": {}}, "records"),
    ],
)
def test_invalid_envelope_header(change: dict[str, Any], path: str) -> None:
    doc = envelope_with([load("icmp-ok")], **change)
    for decode in (decode_envelope, decode_envelope_lenient):
        with pytest.raises(ContractError) as info:
            decode(json.dumps(doc))
        assert info.value.path == path


@pytest.mark.parametrize("data", [b"", b"{", b"[1, 2]", b"\xff\xfe", "null"])
def test_envelope_that_is_not_a_json_object(data: bytes | str) -> None:
    with pytest.raises(ContractError) as info:
        decode_envelope(data)
    assert info.value.path == ""


def test_encoded_envelope_is_strict_json() -> None:
    env = decode_envelope((RECORDS / "envelope.json").read_bytes())
    data = encode_envelope(env)
    assert b"NaN" not in data and b"Infinity" not in data
    assert json.loads(data)["schema"] == SCHEMA_VERSION


def test_encoding_refuses_a_non_finite_field() -> None:
    rec = Record.from_dict(load("icmp-ok"))
    broken = Record(rec.kind, rec.measured_at, rec.tags, {**rec.fields, "rtt_avg_ms": float("nan")})
    with pytest.raises(ValueError):
        broken.to_json()


def test_the_openapi_envelope_schema_is_the_contract() -> None:
    """The collector's OpenAPI schema is derived from the contract: the golden envelope (with
    seq and clock) validates, and what the decoder refuses the schema refuses too."""
    import jsonschema

    schema = record.envelope_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    env = json.loads((FIXTURES / "records" / "envelope.json").read_text())
    for i, raw in enumerate(env["records"]):
        raw["seq"] = i
    validator.validate(env)
    record.decode_envelope(json.dumps(env))
    item = schema["properties"]["records"]["items"]["oneOf"]
    assert {s["properties"]["kind"]["const"] for s in item} == set(record.MEASUREMENTS)
    for s in item:
        assert set(s["properties"]) == record.RECORD_KEYS
    bad = json.loads(json.dumps(env))
    bad["records"][0]["fields"]["loss_pct"] = 250
    assert not validator.is_valid(bad)
    with pytest.raises(record.ContractError):
        record.decode_envelope(json.dumps(bad))


def test_the_uploaders_envelope_is_the_contracts_encoding() -> None:
    from agent.uploader import envelope_bytes

    env = record.decode_envelope((FIXTURES / "records" / "envelope.json").read_bytes())
    raw = envelope_bytes(env.station, [r.to_json() for r in env.records], "b" * 32)
    again = record.decode_envelope(raw)
    assert again.records == env.records
    assert set(json.loads(raw)) == record.ENVELOPE_KEYS
    assert set(json.loads(raw)["agent"]) == record.AGENT_KEYS
