"""What a shard reads back of `station_status`: the latest point per station at start (to
rebuild its stations' status, not from zero) and, before the sweeper marks a station silent,
whether another shard wrote a newer point for it (it was re-routed: not silent).

Both are InfluxQL queries, so they need a sink that speaks it: InfluxDB 1.x (the v1 sink).
A v2 sink (VictoriaMetrics, InfluxDB 2.x) is not read: its collector starts with no status
and checks no takeover (docs/scaling.md says how to run that).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from collector.config import SinkConfig
from collector.sinks import query_influxql
from collector.status import MEASUREMENT, Restored, Status

# How far back a restarting shard looks for its stations' latest points. Every station with
# state on a running shard gets a point at least every refresh (5 minutes).
RESTORE_WINDOW = timedelta(hours=24)
# How far back the takeover check looks (twice the 5-minute refresh).
TAKEOVER_WINDOW = timedelta(minutes=10)


def readable(cfg: SinkConfig | None) -> bool:
    """Whether station_status can be read back from this sink."""
    return cfg is not None and cfg.kind == "v1"


def _quote(value: str) -> str:
    """An InfluxQL string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _time(ns: Any) -> datetime:
    return datetime.fromtimestamp(int(ns) / 1e9, UTC)


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


_PLAIN_ID = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")


def latest(
    cfg: SinkConfig,
    shard: str,
    window: timedelta = RESTORE_WINDOW,
    stations: Sequence[str] | None = None,
) -> list[Restored]:
    """Each station's latest current (not history) station_status point within `window`
    (only of `stations`, when given). Raises SinkUnavailable or QueryError (collector.sinks)."""
    where = f"time > now() - {int(window.total_seconds())}s"
    if stations is not None:
        ids = sorted({sid.replace(".", "\\.") for sid in stations if _PLAIN_ID.fullmatch(sid)})
        if not ids:
            return []
        where += f' AND "station" =~ /^(?:{"|".join(ids)})$/'
    q = (
        'SELECT "status", "reasons", "causes", "status_age_s", "last_seen_s", "shard",'
        f' "history" FROM "{MEASUREMENT}" WHERE {where}'
        ' GROUP BY "station" ORDER BY time DESC LIMIT 3'
    )
    seen: set[str] = set()
    out: list[Restored] = []
    for row in query_influxql(cfg, q):
        sid = row.get("station")
        status = row.get("status")
        if not sid or sid in seen or row.get("history") or not isinstance(status, int):
            continue
        if not 0 <= status <= 3:
            continue
        seen.add(sid)
        at = _time(row["time"])
        age = _num(row.get("status_age_s")) or 0.0
        last_seen = _num(row.get("last_seen_s"))
        out.append(
            Restored(
                station=sid,
                status=Status(status),
                reasons=tuple(x for x in str(row.get("reasons") or "").split("; ") if x),
                causes=tuple(x for x in str(row.get("causes") or "").split(",") if x),
                at=at,
                since=at - timedelta(seconds=max(0.0, age)),
                last_rx=None if last_seen is None else at - timedelta(seconds=max(0.0, last_seen)),
                owned=row.get("shard") == shard,
            )
        )
    return out


def newest_rounds(cfg: SinkConfig, window: timedelta) -> dict[str, datetime]:
    """Each station's newest icmp round stored within `window` (its measured_at): a restarted
    shard's lower bound for the station's last upload, which status points (written on
    changes and every few minutes) may tell too early. Raises SinkUnavailable or QueryError."""
    q = (
        'SELECT last("sent") FROM "icmp" WHERE time > now() -'
        f' {int(window.total_seconds())}s GROUP BY "station"'
    )
    return {row["station"]: _time(row["time"]) for row in query_influxql(cfg, q)}


def taken_over(
    cfg: SinkConfig, shard: str, overdue: list[tuple[str, datetime]], now: datetime
) -> set[str]:
    """The overdue stations another shard received an upload from after their last upload
    here: its latest point's time minus its last_seen_s (points without last_seen_s, such as
    "never reported", say nothing of uploads). Only the last TAKEOVER_WINDOW is read: a
    shard that owns a station writes its point at least every refresh. Raises
    SinkUnavailable or QueryError."""
    if not overdue:
        return set()
    since = max(min(t for _, t in overdue), now - TAKEOVER_WINDOW)
    since_ns = int((since - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds() * 1e9)
    q = (
        f'SELECT "last_seen_s" FROM "{MEASUREMENT}" WHERE time > {since_ns}'
        f' AND "shard" <> {_quote(shard)} AND "last_seen_s" >= 0'
        ' GROUP BY "station" ORDER BY time DESC LIMIT 1'
    )
    seen: dict[str, datetime] = {}
    for row in query_influxql(cfg, q):
        ago = _num(row.get("last_seen_s"))
        if ago is not None:
            seen[row["station"]] = _time(row["time"]) - timedelta(seconds=ago)
    return {sid for sid, last in overdue if sid in seen and seen[sid] > last}
