"""POST /api/v1/stations/{station}/measurements against a real collector and InfluxDB: the
station in the URL is the one a proxy routes by, so it must be the envelope's, every
record's, and the token's; anything else in that place is refused, however it is encoded."""

from __future__ import annotations

import gzip
import json
import socket
from typing import Any

import httpx
import pytest

from agent.uploader import upload_path
from tests.harness.collector_stack import STATION, Stack, envelope, golden

OTHER = "3273011001001"  # outside the test token
NEIGHBOUR = "3171011002004"  # in region 3171 (the region token's)


def post(stack: Stack, path: str, body: dict[str, Any], token: str | None = None) -> httpx.Response:
    return httpx.post(
        f"{stack.url}{path}",
        content=gzip.compress(json.dumps(body).encode()),
        headers={
            "Authorization": f"Bearer {token or stack.token}",
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
        },
        timeout=30,
    )


def raw_post(stack: Stack, raw_path: bytes, body: bytes, token: str) -> tuple[int, bytes]:
    """A request line sent byte for byte (httpx would normalise the path)."""
    host, port = stack.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(
            b"POST " + raw_path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Authorization: Bearer " + token.encode() + b"\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    head, _, payload = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), payload


def test_both_paths_store_and_only_the_old_one_is_deprecated(stack: Stack) -> None:
    new, old = golden("icmp-ok"), golden("icmp-ok")
    r = post(stack, upload_path(STATION), envelope([new]))
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == [new["id"]]
    assert "deprecation" not in r.headers
    r = post(stack, "/api/v1/measurements", envelope([old]))
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == [old["id"]]
    assert r.headers["deprecation"] == "true"
    assert "/api/v1/stations/{station}/measurements" in r.headers["link"]
    spec = httpx.get(f"{stack.url}/openapi.json").json()
    assert spec["paths"]["/api/v1/measurements"]["post"]["deprecated"] is True
    assert "post" in spec["paths"]["/api/v1/stations/{station}/measurements"]


def test_url_station_must_be_the_envelope_s_and_the_token_s(stack: Stack) -> None:
    # The envelope names another station than the URL: refused whole, with both named.
    r = post(stack, upload_path(STATION), envelope([golden("icmp-ok")], station=OTHER))
    assert r.status_code == 403
    assert OTHER in r.json()["error"] and STATION in r.json()["error"]
    # The URL names a station outside the token: refused before the body is read.
    r = post(stack, upload_path(OTHER), envelope([golden("icmp-ok", station=OTHER)], OTHER))
    assert r.status_code == 403
    assert f"token may not write for station {OTHER}" in r.json()["error"]
    # A region token, the URL and envelope one station of the region, a record for a
    # neighbour in the same region: the neighbour's record is routed elsewhere by the
    # proxy, so this process refuses it (the old path, without routing, takes it).
    mine, neighbour = golden("dns-ok"), golden("dns-ok", station=NEIGHBOUR)
    r = post(stack, upload_path(STATION), envelope([mine, neighbour]), stack.region_token)
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == [mine["id"]]
    assert r.json()["rejected"] == [
        {"id": neighbour["id"], "reason": "out_of_scope",
         "detail": f"station {NEIGHBOUR} is not the URL's station {STATION}"}
    ]  # fmt: skip
    neighbour2 = golden("dns-ok", station=NEIGHBOUR)
    r = post(stack, "/api/v1/measurements", envelope([neighbour2]), stack.region_token)
    assert r.json()["accepted"] == [neighbour2["id"]]


def test_missing_token_is_401_before_anything_else(stack: Stack) -> None:
    r = httpx.post(f"{stack.url}{upload_path(STATION)}", content=b"{}", timeout=30)
    assert r.status_code == 401


@pytest.mark.parametrize(
    "raw_path",
    [
        b"/api/v1/stations/3171011001001%2F..%2F3273011001001/measurements",  # %2F: a slash
        b"/api/v1/stations/../measurements",
        b"/api/v1/stations/%2E%2E/measurements",
        b"/api/v1/stations/.hidden/measurements",
        b"/api/v1/stations//measurements",
        b"/api/v1/stations/%00/measurements",
        b"/api/v1/stations/3171011001001%0A/measurements",  # a newline after a valid id
        b"/api/v1/stations/%C5%9Ftation/measurements",  # unicode
        b"/api/v1/stations/%EF%BC%93171011001001/measurements",  # a fullwidth digit 3
        b"/api/v1/stations/" + b"1" * 65 + b"/measurements",
        b"/api/v1/stations/a%20b/measurements",
    ],
)
def test_a_url_station_that_is_not_a_station_id_is_404(stack: Stack, raw_path: bytes) -> None:
    rec = golden("icmp-ok")
    body = json.dumps(envelope([rec])).encode()
    status, payload = raw_post(stack, raw_path, body, stack.region_token)
    assert status == 404, payload
    assert rec["id"].encode() not in payload


def test_percent_encoded_station_is_the_same_station(stack: Stack) -> None:
    """A proxy hashes the decoded path; the collector judges the same decoded station."""
    rec = golden("icmp-ok")
    body = json.dumps(envelope([rec])).encode()
    encoded = b"".join(b"%%%02X" % c for c in STATION.encode())
    status, payload = raw_post(
        stack, b"/api/v1/stations/" + encoded + b"/measurements", body, stack.token
    )
    assert status == 200, payload
    assert json.loads(payload)["accepted"] == [rec["id"]]


def test_other_methods_and_near_paths_are_not_ingest(stack: Stack) -> None:
    url = f"{stack.url}{upload_path(STATION)}"
    assert httpx.get(url, timeout=30).status_code == 405
    body = envelope([golden("icmp-ok")])
    for path in (
        f"/api/v1/stations/{STATION}/measurements/",
        f"/api/v1/stations/{STATION}/measurementsx",
        f"/api/v1/stations/{STATION}",
    ):
        # 307: FastAPI's redirect of a trailing slash, which does not ingest either
        assert post(stack, path, body).status_code in (307, 404, 405), path
