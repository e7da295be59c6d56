"""The ingest API end to end: a real collector (uvicorn) writing to a real InfluxDB 1.6.7."""

from __future__ import annotations

import gzip
import json
import os
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.contract.record import format_time
from tests.conftest import GOLDEN_RECORDS, require_tool
from tests.harness.collector_stack import (
    STATION,
    Stack,
    collector_config_file,
    envelope,
    free_port,
    golden,
    running_collector,
    status_written,
)
from tests.harness.dbs import InfluxServer, influxd

GOLDEN = GOLDEN_RECORDS


@pytest.fixture
def stack(tmp_path: Path, influxdb: InfluxServer, influx_database: str) -> Iterator[Stack]:
    cfg = collector_config_file(tmp_path, influxdb.url, influx_database,
                                limits={"max_body_bytes": 256 * 1024})  # fmt: skip
    with running_collector(cfg) as s:
        yield s


def post(stack: Stack, body: dict[str, Any] | bytes, token: str | None = None,
         gz: bool = False) -> httpx.Response:  # fmt: skip
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if gz:
        data = gzip.compress(data)
        headers["Content-Encoding"] = "gzip"
    tok = stack.token if token is None else token
    if tok:
        headers["Authorization"] = f"Bearer {tok}"
    return httpx.post(f"{stack.url}/api/v1/measurements", content=data, headers=headers,
                      timeout=30)  # fmt: skip


def stored(influx: InfluxServer, db: str, kind: str, rid: str) -> list[dict[str, Any]]:
    return influx.query(f'SELECT * FROM "{kind}" WHERE "id" = \'{rid}\'', db)


def test_golden_records_are_stored_with_their_values(
    stack: Stack,
    influxdb: InfluxServer,
) -> None:
    records = [golden(n) for n in GOLDEN]
    r = post(stack, envelope(records), gz=True)
    assert r.status_code == 200, r.text
    body = r.json()
    assert sorted(body["accepted"]) == sorted(x["id"] for x in records)
    assert body["rejected"] == []
    assert "server_time" in body
    db = stack.cfg.sink.database
    for rec in records:
        rows = stored(influxdb, db, rec["kind"], rec["id"])
        assert len(rows) == 1, rec["kind"]
        row = rows[0]
        for k, v in rec["fields"].items():
            assert row[k] == v, (rec["kind"], k)
        for k, v in rec["tags"].items():
            assert row[k] == v
        assert row["province"] == "DKI Jakarta"  # enriched from the registry
        assert row["regency"]
        assert row.get("error") == rec.get("error")
        t = datetime.fromisoformat(rec["measured_at"].replace("Z", "+00:00"))
        assert row["time"] == int(t.timestamp()) * 10**9 + t.microsecond * 1000


def test_resend_does_not_duplicate(stack: Stack, influxdb: InfluxServer) -> None:
    rec = golden("icmp-ok")
    for _ in range(3):
        assert post(stack, envelope([rec])).json()["accepted"] == [rec["id"]]
    assert len(stored(influxdb, stack.cfg.sink.database, "icmp", rec["id"])) == 1


def test_wrong_missing_and_revoked_tokens_get_401(stack: Stack) -> None:
    body = envelope([golden("icmp-ok")])
    assert post(stack, body, token="sny_wrong").status_code == 401
    assert post(stack, body, token="").status_code == 401
    assert post(stack, body).status_code == 200
    # Revoked through another Registry instance (as `sinyal-collector agents revoke` does):
    # the server sees it within its refresh bound (5 s).
    assert stack.registry.revoke(stack.token_id)
    t0 = time.monotonic()
    while (r := post(stack, body)).status_code == 200 and time.monotonic() - t0 < 8:
        time.sleep(0.25)
    assert r.status_code == 401
    assert time.monotonic() - t0 <= 6.0
    assert stack.token not in r.text


def test_other_station_is_rejected_per_record(stack: Stack) -> None:
    mine, other = golden("icmp-ok"), golden("icmp-ok", station="3273011001001")
    r = post(stack, envelope([mine, other]))
    assert r.status_code == 200
    assert r.json()["accepted"] == [mine["id"]]
    assert r.json()["rejected"] == [
        {"id": other["id"], "reason": "out_of_scope",
         "detail": "station 3273011001001 is outside the token"}
    ]  # fmt: skip
    # An envelope that claims another station is refused whole.
    assert post(stack, envelope([mine], station="3273011001001")).status_code == 403


def test_region_token_covers_its_prefix_only(stack: Stack) -> None:
    inside = golden("dns-ok")  # 3171011001001 starts with 3171
    outside = golden("dns-ok", station="7371011001001")
    r = post(stack, envelope([inside, outside]), token=stack.region_token)
    assert r.json()["accepted"] == [inside["id"]]
    assert [x["reason"] for x in r.json()["rejected"]] == ["out_of_scope"]


def test_unknown_station_and_times_out_of_range(stack: Stack) -> None:
    unknown = golden("icmp-ok", station="3171019999999")
    old = golden("icmp-ok", age_s=36 * 86400)
    future = golden("icmp-ok", age_s=-600)
    r = post(stack, envelope([unknown, old, future]), token=stack.region_token)
    reasons = {x["id"]: x["reason"] for x in r.json()["rejected"]}
    assert reasons == {unknown["id"]: "unknown_station", old["id"]: "time_out_of_range",
                       future["id"]: "time_out_of_range"}  # fmt: skip
    assert r.json()["accepted"] == []


def test_unknown_times_are_refused_and_seq_keeps_same_time_records_apart(
    stack: Stack, influxdb: InfluxServer
) -> None:
    untimed = golden("icmp-ok")
    untimed["clock"]["source"] = "unknown"
    corrected = golden("icmp-ok")
    corrected["clock"]["source"] = "collector"
    # Two different records of one series measured in the same microsecond (a clock
    # stepped back): their spool sequence numbers keep them apart in InfluxDB.
    a, b = golden("icmp-ok"), golden("icmp-ok")
    b["measured_at"] = a["measured_at"]
    a["seq"], b["seq"] = 41, 42
    r = post(stack, envelope([untimed, corrected, a, b]))
    assert r.json()["accepted"] == [corrected["id"], a["id"], b["id"]]
    (rej,) = r.json()["rejected"]
    assert (rej["id"], rej["reason"]) == (untimed["id"], "time_unknown")
    assert "could not be established" in rej["detail"]
    db = stack.cfg.sink.database
    (pa,), (pb,) = stored(influxdb, db, "icmp", a["id"]), stored(influxdb, db, "icmp", b["id"])
    assert pb["time"] - pa["time"] == 1  # ns: 42 - 41
    # resending either one still lands on its own point
    assert post(stack, envelope([b])).json()["accepted"] == [b["id"]]
    assert len(stored(influxdb, db, "icmp", b["id"])) == 1


def test_implausible_and_invalid_records_are_rejected_with_reasons(stack: Stack) -> None:
    above = golden("icmp-ok")
    above["fields"]["rtt_max_ms"] = above["fields"]["timeout_ms"] + 1
    bad_loss = golden("icmp-ok")
    bad_loss["fields"]["loss_pct"] = 101
    nan = golden("icmp-ok")
    nan["fields"]["rtt_avg_ms"] = "NaN"
    good = golden("http-ok")
    r = post(stack, envelope([above, bad_loss, nan, good]))
    assert r.status_code == 200
    body = r.json()
    assert body["accepted"] == [good["id"]]
    reasons = {x["id"]: (x["reason"], x.get("detail", "")) for x in body["rejected"]}
    assert reasons[above["id"]][0] == "implausible"
    assert reasons[bad_loss["id"]] == ("invalid", "records[1].fields.loss_pct: got 101.0, "
                                       "expected 0..100 %")  # fmt: skip
    assert reasons[nan["id"]][0] == "invalid"


def test_malformed_and_oversized_bodies(stack: Stack) -> None:
    assert post(stack, b"{not json").status_code == 422
    bad_schema = envelope([golden("icmp-ok")])
    bad_schema["schema"] = 2
    r = post(stack, bad_schema)
    assert r.status_code == 422 and "schema" in r.json()["error"]
    big = envelope([golden("icmp-ok") for _ in range(1000)])  # ~700 KB > 256 KiB limit
    assert post(stack, big).status_code == 413
    # A gzip bomb: small on the wire, over the limit once decompressed.
    bomb = gzip.compress(b"[" + b" " * (1024 * 1024) + b"]")
    r = httpx.post(f"{stack.url}/api/v1/measurements", content=bomb, timeout=30,
                   headers={"Authorization": f"Bearer {stack.token}",
                            "Content-Encoding": "gzip"})  # fmt: skip
    assert r.status_code == 413


INJECTIONS = [
    "a,b=c d=1 1",  # line protocol: extra tag, field and point
    'x" OR 1=1 --',  # InfluxQL-looking
    "x' OR '1'='1",
    "sp ace,com=ma",
    'quo"te',
    "back\\slash",
    "emoji ✓ tanda",
]


def test_injection_attempts_are_stored_verbatim(stack: Stack, influxdb: InfluxServer) -> None:
    records = []
    for text in INJECTIONS:
        rec = golden("http-ok")
        rec["tags"]["target"] = text
        rec["tags"]["uplink"] = text
        records.append(rec)
    r = post(stack, envelope(records))
    assert r.status_code == 200
    assert len(r.json()["accepted"]) == len(INJECTIONS), r.json()
    db = stack.cfg.sink.database
    for rec, text in zip(records, INJECTIONS, strict=True):
        [row] = stored(influxdb, db, "http", rec["id"])
        assert row["target"] == text and row["uplink"] == text
    # Nothing else appeared: no extra measurement, tag key or point.
    status_written(stack)
    measurements = {row["name"] for row in influxdb.query("SHOW MEASUREMENTS", db)}
    assert measurements == {"http", "station_status"}  # the station's first status point
    keys = {row["tagKey"] for row in influxdb.query('SHOW TAG KEYS FROM "http"', db)}
    assert keys == {"station", "uplink", "operator", "target", "province", "regency"}
    assert influxdb.query('SELECT count("id") FROM "http"', db)[0]["count"] == len(INJECTIONS)


def test_newline_in_a_tag_is_rejected_not_interpreted(stack: Stack, influxdb: InfluxServer) -> None:
    rec = golden("http-ok")
    rec["tags"]["target"] = "x\nhttp,station=1 ok=1i 1"
    r = post(stack, envelope([rec]))
    assert r.json()["accepted"] == []
    assert r.json()["rejected"][0]["reason"] == "invalid"
    assert influxdb.query("SHOW MEASUREMENTS", stack.cfg.sink.database) == []


def test_database_down_answers_503_and_acknowledges_nothing(
    tmp_path: Path,
    influx_database: str,
) -> None:
    """A dedicated influxd is stopped (SIGSTOP: it hangs, the worst case) and refused
    (closed port); the API answers 503 with Retry-After and acknowledges nothing; once it
    runs again the same batch is accepted exactly once."""
    with influxd(require_tool("influxd")) as db:
        db.create_database("s")
        cfg = collector_config_file(tmp_path, db.url, "s", sink={"timeout_s": 1})
        rec = golden("icmp-ok")
        with running_collector(cfg) as s:
            os.kill(db.process.pid, signal.SIGSTOP)
            try:
                t0 = time.monotonic()
                r = post(s, envelope([rec]))
                assert r.status_code == 503, r.text
                assert time.monotonic() - t0 < 5
                assert r.headers["retry-after"] == "7"
                assert "accepted" not in r.json()
                assert httpx.get(f"{s.url}/readyz", timeout=10).status_code == 503
            finally:
                os.kill(db.process.pid, signal.SIGCONT)
            assert post(s, envelope([rec])).json()["accepted"] == [rec["id"]]
            assert len(stored(db, "s", "icmp", rec["id"])) == 1
        closed = collector_config_file(tmp_path / "closed", f"http://127.0.0.1:{free_port()}", "s")
        with running_collector(closed) as s:
            r = post(s, envelope([golden("icmp-ok")]))
            assert r.status_code == 503 and r.headers["retry-after"] == "7"


def test_health_time_metrics_and_openapi(stack: Stack) -> None:
    assert httpx.get(f"{stack.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{stack.url}/readyz", timeout=10).status_code == 200
    t = httpx.get(f"{stack.url}/api/v1/time").json()
    server = datetime.fromisoformat(t["server_time"].replace("Z", "+00:00"))
    assert abs(server - datetime.now(UTC)) < timedelta(seconds=5)
    post(stack, envelope([golden("icmp-ok")]))
    post(stack, envelope([golden("icmp-ok", station="3273011001001")]))
    metrics = httpx.get(f"{stack.url}/metrics").text
    assert "sinyal_records_accepted_total 1.0" in metrics
    assert 'sinyal_records_rejected_total{reason="out_of_scope"} 1.0' in metrics
    assert 'sinyal_requests_total{status="200"}' in metrics
    assert "sinyal_database_write_seconds_bucket" in metrics
    spec = httpx.get(f"{stack.url}/openapi.json").json()
    assert "/api/v1/measurements" in spec["paths"]
    assert format_time(datetime.now(UTC))  # the helper used by agents parses the same format


def test_station_status_points_are_written(stack: Stack, influxdb: InfluxServer) -> None:
    # Five rounds of total loss from one station: critical after breach_m (3) of 5.
    recs = [golden("icmp-total-loss", age_s=300 - 60 * i) for i in range(5)]
    r = post(stack, envelope(recs))
    assert len(r.json()["accepted"]) == 5
    # The status writer writes it after the acknowledgement, within its batching pause.
    deadline = time.monotonic() + 10
    while not (rows := influxdb.query('SELECT * FROM "station_status"', stack.cfg.sink.database)):
        assert time.monotonic() < deadline, "a status change writes a station_status point"
        time.sleep(0.05)
    last = rows[-1]
    assert last["station"] == STATION
    assert last["status"] == 2
    assert last["lat"] == pytest.approx(-6.1754, abs=0.01)
    assert last["shard"] == stack.cfg.shard_id


def test_speedtest_endpoint_in_the_collector_and_records_in_influxdb(
    stack: Stack, influxdb: InfluxServer, tmp_path: Path
) -> None:
    """The agent's throughput and upload probes measure against the collector's own
    /speedtest endpoint, and their records land in InfluxDB like any other."""
    import asyncio

    from agent import config as agent_config
    from agent.probes.base import ProbeEnv
    from agent.probes.throughput import ThroughputProbe
    from agent.probes.upload import UploadProbe
    from tests.conftest import base_config, write_config

    doc = base_config(tmp_path)
    # The speedtest endpoint needs a ticket, which the probes get with the agent's token.
    doc["collector"] = {"url": stack.url, "token": stack.token}
    doc["probes"] = {
        "throughput": {"backend": "mini", "url": f"{stack.url}/speedtest/", "duration_s": 1},
        "upload": {"targets": [{"url": f"{stack.url}/speedtest/sink", "name": "collector"}]},
    }
    cfg = agent_config.load(write_config(tmp_path, doc), environ={})
    env = ProbeEnv(cfg)
    assert cfg.probes.throughput is not None and cfg.probes.upload is not None
    tp = asyncio.run(ThroughputProbe(cfg.probes.throughput, env).run())
    up = asyncio.run(UploadProbe(cfg.probes.upload, env).run())
    records = [r.to_dict() for r in (*tp, *up)]
    assert [r["error"] for r in records] == [None, None], records
    r = post(stack, envelope(records))
    assert r.status_code == 200 and len(r.json()["accepted"]) == 2, r.text
    db = stack.cfg.sink.database
    (row,) = stored(influxdb, db, "throughput", records[0]["id"])
    assert row["download_mbps"] == records[0]["fields"]["download_mbps"] > 0
    assert row["backend"] == "mini" and row["province"] == "DKI Jakarta"
    (row,) = stored(influxdb, db, "upload", records[1]["id"])
    assert row["sent_bytes"] == row["payload_bytes"] == 2_000_000 and row["ok"] == 1
