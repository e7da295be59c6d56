"""Comparing what agents produced (their --record-log) with what InfluxDB holds: the same
count, every id once, the same values and times. Shared by the outage and chaos tests."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.contract.record import parse_time
from tests.harness.dbs import InfluxServer


def produced(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def stored(influx: InfluxServer, db: str, kinds: set[str]) -> dict[str, list[dict[str, Any]]]:
    """Every point of these measurements by record id (a list: duplicates show up)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for kind in kinds:
        for row in influx.query(f'SELECT * FROM "{kind}"', db):
            out.setdefault(row["id"], []).append(row)
    return out


def unix_us(text: str) -> int:
    d = parse_time(text) - datetime(1970, 1, 1, tzinfo=UTC)
    return (d.days * 86400 + d.seconds) * 10**6 + d.microseconds


def compare(
    made: list[dict[str, Any]],
    points: dict[str, list[dict[str, Any]]],
    absent: set[str],
    shift: Any = None,
) -> None:
    """Every record made is stored once with its values, except the ids in `absent`; no
    other point exists; each at the time it was made, or (`shift(record) -> µs`, or a record
    made without an established time) within a second of the true time."""
    ids = [r["id"] for r in made]
    assert len(ids) == len(set(ids))
    assert absent <= set(ids)
    expected = set(ids) - absent
    assert set(points) == expected, (len(set(points) - expected), len(expected - set(points)))
    assert all(len(rows) == 1 for rows in points.values()), "a record stored twice"
    for r in made:
        if r["id"] in absent:
            continue
        (row,) = points[r["id"]]
        for k, v in r["fields"].items():
            assert row[k] == v, (r["id"], k, row[k], v)
        for k, v in r["tags"].items():
            assert row[k] == v, (r["id"], k)
        want_us = unix_us(r["measured_at"]) if shift is None else shift(r)
        # A record whose time was not established when it was made (this machine's kernel
        # may say its clock is not synchronised) got it from the collector's clock: within
        # half a round trip plus the few µs between reading the two clocks.
        corrected = shift is not None or (r.get("clock") or {}).get("source") == "unknown"
        assert abs(row["time"] // 1000 - want_us) <= (1_000_000 if corrected else 0), r
