"""What one token may do to the database beyond writing valid records: checks on a request's
prepared records before they are written, with state kept across requests.

- **The same id twice in one request** is stored once: later copies are dropped (the id is
  acknowledged once), so a record cannot be written as two points.
- **Series per station** (`limits.max_series_per_station`): a series is a kind and its tag
  values (target, uplink, resolver, server, operator...). A record that would open a series
  beyond the cap for its station is refused with `series_limit`; the station's known series
  go on being accepted. This bounds what one token can add to the database's index (InfluxDB
  keeps every series for ever and refuses writes once its own series limit is reached).
- **History rewrite** (`limits.recent_points`): series and time identify a point, so a new
  record with the same series and time as a stored one would overwrite it (and its fields
  would merge). The point keys of the most recent confirmed writes are kept with their ids;
  a record whose point key is known under a different id is refused with `point_conflict`.
  A resend of the same record (same id) is the idempotent retry and passes.

Residual risk, documented in docs/security.md ("Agent and data"): the series counts and point keys
live in this process only (a restart forgets them: a station can open up to the cap again,
and older points can be rewritten); a point older than the `recent_points` most recent ones
can still be overwritten by a token scoped to its station or region.

Memory: a 64-bit hash per known series (stations x their series, capped) and two per recent
point (`recent_points`, oldest forgotten first).
"""

from __future__ import annotations

from collections.abc import Iterable

from agent.contract.record import Record
from collector.admission import Prepared, Rejection
from collector.config import Limits


class Guard:
    def __init__(self, limits: Limits) -> None:
        self.max_series = limits.max_series_per_station
        self.max_points = limits.recent_points
        self._series: dict[str, set[int]] = {}  # station -> hashes of its series
        self._points: dict[int, int] = {}  # hash of point key -> hash of id, oldest first

    def check(self, prepared: Prepared) -> list[int]:
        """Drop repeated ids and move refused records to `prepared.rejected`, in place.
        Returns the point keys of the records kept (for `remember`)."""
        keep: list[int] = []
        keys: list[int] = []
        seen_ids: set[str] = set()
        batch_points: dict[int, str] = {}
        for i, record in enumerate(prepared.records):
            if record.id in seen_ids:
                continue  # the same record again in this request: stored once
            seen_ids.add(record.id)
            series = (record.kind, tuple(sorted(record.tags.items())))
            point = hash((series, prepared.lines[i].rsplit(" ", 1)[-1]))
            other = batch_points.get(point)
            known = self._points.get(point)
            if (other is not None and other != record.id) or (
                known is not None and known != hash(record.id)
            ):
                prepared.rejected.append(
                    Rejection(
                        record.id,
                        "point_conflict",
                        "a point with this series and time is already stored under another "
                        "id; a record may not overwrite another (resend it with its own id)",
                    )
                )
                continue
            refused = self._admit_series(record, hash(series))
            if refused is not None:
                prepared.rejected.append(Rejection(record.id, "series_limit", refused))
                continue
            batch_points[point] = record.id
            keep.append(i)
            keys.append(point)
        if len(keep) != len(prepared.records):
            prepared.records[:] = [prepared.records[i] for i in keep]
            prepared.stations[:] = [prepared.stations[i] for i in keep]
            prepared.lines[:] = [prepared.lines[i] for i in keep]
        return keys

    def remember(self, prepared: Prepared, keys: list[int], accepted: Iterable[str]) -> None:
        """The point keys (from `check`) of the records the database confirmed."""
        ok = set(accepted)
        points = self._points
        for record, key in zip(prepared.records, keys, strict=True):
            if record.id in ok:
                points.pop(key, None)  # re-inserted as the newest
                points[key] = hash(record.id)
        excess = len(points) - self.max_points
        if excess > 0:
            for key in [k for k, _ in zip(points, range(excess), strict=False)]:
                del points[key]

    def series_count(self, station: str) -> int:
        return len(self._series.get(station, ()))

    def _admit_series(self, record: Record, key: int) -> str | None:
        station = record.tags.get("station", "")
        known = self._series.get(station)
        if known is None:
            known = self._series[station] = set()
        if key in known:
            return None
        if len(known) >= self.max_series:
            shown = ", ".join(f"{k}={v}" for k, v in sorted(record.tags.items()) if k != "station")
            return (
                f"station {station} already has {self.max_series} series "
                f"(limits.max_series_per_station); a new {record.kind} series ({shown[:200]}) "
                "is refused"
            )
        known.add(key)
        return None
