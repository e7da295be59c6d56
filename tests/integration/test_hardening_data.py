"""Issue 15, finding 8 and the data-boundary low items, against the real collector and a real
InfluxDB 1.6.7: a record may not overwrite another's point (history rewrite), the same id
twice in one envelope is stored once, gzip bodies are read strictly, `"schema": true` is not
schema 1, and tag values with control, bidi or zero-width characters or a leading spreadsheet
formula character are refused (so are such registry values)."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from collector.registry import Registry, RegistryError
from tests.harness.collector_stack import (
    STATION,
    Stack,
    collector_config_file,
    envelope,
    golden,
    running_collector,
)
from tests.harness.dbs import InfluxServer


@pytest.fixture
def stack(tmp_path: Path, influxdb: InfluxServer, influx_database: str) -> Iterator[Stack]:
    cfg = collector_config_file(tmp_path, influxdb.url, influx_database)
    with running_collector(cfg) as s:
        yield s


def post_body(stack: Stack, body: bytes, token: str, gz: bool = False) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    if gz:
        headers["Content-Encoding"] = "gzip"
    return httpx.post(f"{stack.url}/api/v1/measurements", content=body, headers=headers, timeout=30)


def post(stack: Stack, records: list[dict[str, Any]], token: str | None = None) -> Any:
    body = json.dumps(envelope(records)).encode()
    r = post_body(stack, body, token or stack.token)
    assert r.status_code == 200, r.text
    return r.json()


def stored(influx: InfluxServer, stack: Stack, target: str) -> list[dict[str, Any]]:
    return influx.query(
        f'SELECT * FROM "icmp" WHERE "target" = \'{target}\'', stack.cfg.sink.database
    )


# --- finding 8: history rewrite ---------------------------------------------------------


def test_a_new_id_may_not_overwrite_a_stored_point(stack: Stack, influxdb: InfluxServer) -> None:
    original = golden("icmp-ok")
    original["tags"]["target"] = "rewrite"
    original["seq"] = 7
    assert post(stack, [original])["accepted"] == [original["id"]]
    forged = json.loads(json.dumps(original))
    forged["id"] = "f" * 32
    forged["fields"]["rtt_p50_ms"] = 1.0
    forged["fields"]["rtt_min_ms"] = 1.0
    for token in (stack.token, stack.region_token):  # the station's, and its region's
        answer = post(stack, [forged], token)
        assert answer["accepted"] == []
        assert [r["reason"] for r in answer["rejected"]] == ["point_conflict"]
    (row,) = stored(influxdb, stack, "rewrite")
    assert row["id"] == original["id"]
    assert row["rtt_p50_ms"] == original["fields"]["rtt_p50_ms"]
    # The same record again (the agent's retry) is the idempotent resend: accepted.
    assert post(stack, [original])["accepted"] == [original["id"]]
    # Two ids for one point inside a single envelope: the first wins.
    a, b = golden("icmp-ok"), golden("icmp-ok")
    a["tags"]["target"] = b["tags"]["target"] = "pair"
    b["measured_at"] = a["measured_at"]
    answer = post(stack, [a, b])
    assert answer["accepted"] == [a["id"]]
    assert [r["reason"] for r in answer["rejected"]] == ["point_conflict"]


def test_the_same_id_twice_in_one_envelope_is_stored_once(
    stack: Stack, influxdb: InfluxServer
) -> None:
    first = golden("icmp-ok", age_s=120)
    first["tags"]["target"] = "twice"
    second = golden("icmp-ok", age_s=60)  # another time: on main, a second point
    second["tags"]["target"] = "twice"
    second["id"] = first["id"]
    answer = post(stack, [first, second])
    assert answer["accepted"] == [first["id"]]
    rows = stored(influxdb, stack, "twice")
    assert [r["id"] for r in rows] == [first["id"]]


# --- gzip, schema -------------------------------------------------------------------------


def envelope_bytes() -> bytes:
    return json.dumps(envelope([golden("icmp-ok")])).encode()


def test_gzip_bodies_are_read_strictly(stack: Stack) -> None:
    good = gzip.compress(envelope_bytes())
    assert post_body(stack, good, stack.token, gz=True).status_code == 200
    second_member = gzip.compress(envelope_bytes()) + gzip.compress(b"{}")
    trailing = gzip.compress(envelope_bytes()) + b"garbage after the end"
    z = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    no_crc = z.compress(envelope_bytes()) + z.flush(zlib.Z_SYNC_FLUSH)  # never finished
    for body, words in ((second_member, "after its end"), (trailing, "after its end"),
                        (no_crc, "truncated")):  # fmt: skip
        r = post_body(stack, body, stack.token, gz=True)
        assert r.status_code == 422, r.text
        assert words in r.json()["error"]


@pytest.mark.parametrize("schema", [True, 1.0, "1"])
def test_schema_must_be_the_integer_1(stack: Stack, schema: Any) -> None:
    doc = envelope([golden("icmp-ok")])
    doc["schema"] = schema
    r = post_body(stack, json.dumps(doc).encode(), stack.token)
    assert r.status_code == 422, r.text
    assert "schema" in r.json()["error"]


# --- unsafe text --------------------------------------------------------------------------

UNSAFE_TAGS = {
    "c1": "kp\x85u",
    "csi": "kpu\x9b31m",
    "bidi_override": "kpu\u202egnp.exe",
    "bidi_isolate": "\u2067kpu",
    "zero_width": "k\u200bpu",
    "bom": "\ufeffkpu",
    "formula_eq": '=HYPERLINK("http://e.test","x")',
    "formula_plus": "+62811",
    "formula_minus": "-2+3",
    "formula_at": "@SUM(A1)",
}


def test_unsafe_tag_values_are_refused(stack: Stack, influxdb: InfluxServer) -> None:
    records = []
    for value in UNSAFE_TAGS.values():
        r = golden("icmp-ok")
        r["tags"]["target"] = value
        records.append(r)
    fine = golden("icmp-ok")
    fine["tags"]["target"] = "kpu-1 (a=b) @x"  # such characters inside a value are fine
    answer = post(stack, [*records, fine])
    assert answer["accepted"] == [fine["id"]]
    assert len(answer["rejected"]) == len(UNSAFE_TAGS)
    for rejection in answer["rejected"]:
        assert rejection["reason"] == "invalid"
        assert "tags.target" in rejection["detail"]
    rows = influxdb.query('SELECT count("id") FROM "icmp"', stack.cfg.sink.database)
    assert rows[0]["count"] == 1


@pytest.mark.parametrize("value", list(UNSAFE_TAGS.values()), ids=list(UNSAFE_TAGS))
def test_unsafe_registry_values_are_refused(tmp_path: Path, value: str) -> None:
    csv = tmp_path / "stations.csv"
    name = value.replace('"', '""')
    csv.write_text(
        "id,name,province,regency,lat,lon,tz,expected_operator\n"
        f'3171011001001,"{name}",DKI Jakarta,Kota Jakarta Pusat,-6.1,106.8,Asia/Jakarta,\n',
        encoding="utf-8",
    )
    with Registry(tmp_path / "registry.sqlite3") as reg, pytest.raises(RegistryError) as info:
        reg.import_stations_csv(csv)
    (error,) = info.value.errors
    assert ":2: column name:" in error
    if value[0] in "=+-@":
        assert "spreadsheet formula" in error
    assert STATION not in [s.id for s in Registry(tmp_path / "registry.sqlite3").stations()]
