"""The report's read path: the raw values of the period, streamed from InfluxDB once.

A report reads each measurement it needs once, with the fields its figures use, grouped by
series (station, operator, province, regency, and uplink and target for icmp)::

    SELECT "jitter_ms", "loss_pct", "mos", "ok", "rtt_p50_ms" FROM "icmp"
    WHERE time >= A AND time < B AND <filters>
    GROUP BY "station", "operator", "province", "regency", "uplink", "target"

InfluxDB 1.x spends more CPU on each tag of a raw GROUP BY than on the values, so a read
first takes the series index (one SHOW SERIES, no points read) and groups by the
fewest tags that still tell its series apart for the report: station and operator (plus
uplink and target when a station has several ICMP series), each group's province and regency
then come from the index; only when one station and operator has several of those does the
read group by every tag.

One statement per stretch of time the stations' windows cover (their union: a national day
read in each station's own zone is one stretch of 26 hours; voting hours one stretch a day);
the largest read (icmp) as two, split by station (SPLIT), so two run side by side.
The answer is streamed (`chunked=true`) as MessagePack, which InfluxDB 1.x encodes and
Python decodes several times faster than JSON; each row is kept only when its time falls in
its own station's windows (a station's zone comes from the registry), so rows of stations
outside the scope or outside their windows never reach memory. collector.report.compute then
computes every count, sum, median and percentile over these rows, with InfluxQL's
definitions, in one pass instead of one database scan per figure.

InfluxDB 1.x answers all of this (MessagePack since 1.4). InfluxDB 2.x and 3.x answer InfluxQL
on their v1 compatibility API (/query with a DBRP mapping on 2.x; 3.x Core/Enterprise serve
/query), with the same sink settings; a server that answers JSON instead of MessagePack is
read as JSON. VictoriaMetrics has no InfluxQL and cannot serve reports.
"""

from __future__ import annotations

import ipaddress
import json
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import httpx
import msgpack
import numpy as np
import numpy.typing as npt

from collector.config import SinkConfig
from collector.report.scope import Scope, Window
from collector.sinks import (
    QueryError,
    SinkUnavailable,
    _classify,
    _error_text,
    _http_client,
    _redact,
    query_influxql,
)

__all__ = ["QueryError", "Read", "ReportQuery", "Rows", "SinkUnavailable", "ident", "literal"]

CHUNK_ROWS = 10_000  # rows per streamed chunk (InfluxDB also cuts a chunk at each series)
MSGPACK = "application/x-msgpack"
# Limits on what the database may send in one chunk (the decoder's own buffer bound).
MAX_CHUNK_BYTES = 256 * 1024 * 1024
# The largest read runs as two statements side by side (InfluxDB 1.x runs a statement on one
# core), split by station: ids ending in an even digit, and the others. Not by time: a
# statement decodes every TSM block it touches whole (a block holds up to 1,000 points of a
# series, days of rounds), so pieces of time decode the same blocks again; a split by
# station reads each block once.
SPLIT = ("=~ /[02468]$/", "!~ /[02468]$/")


def literal(value: str) -> str:
    """An InfluxQL string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def ident(name: str) -> str:
    """An InfluxQL identifier (measurement, tag or field)."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _ns(t: datetime) -> int:
    return int(t.timestamp()) * 1_000_000_000 + t.microsecond * 1000


@dataclass(frozen=True)
class Read:
    """One measurement read raw: `fields` of every point, series grouped by `tags` (the
    first tag is the station)."""

    name: str
    measurement: str
    fields: tuple[str, ...]
    tags: tuple[str, ...]


@dataclass
class Rows:
    """A measurement's rows in the period: per row its series (an index into `series`, the
    tag values in `tags` order), its time (ns) and each field's value (NaN: no value)."""

    tags: tuple[str, ...]
    series: list[tuple[str, ...]]
    sid: npt.NDArray[np.int32]
    time: npt.NDArray[np.int64]
    values: dict[str, npt.NDArray[np.float64]]

    def __len__(self) -> int:
        return len(self.time)


@dataclass
class _Builder:
    """A read's rows as they arrive from its statements (several threads: `lock`).

    `group`: the tags the statements group by; `full`: each group's series tags in
    `read.tags` order when `group` is fewer tags than that (from the series index)."""

    read: Read
    group: tuple[str, ...] = ()
    full: dict[tuple[str, ...], tuple[str, ...]] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    series: dict[tuple[str, ...], int] = field(default_factory=dict)
    sid: list[npt.NDArray[np.int32]] = field(default_factory=list)
    time: list[npt.NDArray[np.int64]] = field(default_factory=list)
    values: dict[str, list[npt.NDArray[np.float64]]] = field(default_factory=dict)

    def rows(self) -> Rows:
        def cat(parts: list[Any], dtype: Any) -> Any:
            return np.concatenate(parts) if parts else np.zeros(0, dtype)

        values = {}
        for f in self.read.fields:
            values[f] = cat(self.values.pop(f, []), np.float64)
        return Rows(
            self.read.tags,
            list(self.series),
            cat(self.sid, np.int32),
            cat(self.time, np.int64),
            values,
        )


def _floats(col: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """An object column (numbers and None) as float64, NaN for None or a non-number."""
    col = col.copy()
    col[np.equal(col, cast(Any, None))] = np.nan
    try:
        return col.astype(np.float64)
    except (TypeError, ValueError):
        return np.array(
            [v if isinstance(v, int | float) and not isinstance(v, bool) else np.nan for v in col],
            dtype=np.float64,
        )


def merged(windows: Sequence[Window]) -> list[Window]:
    """The union of `windows` as disjoint windows in time order."""
    out: list[Window] = []
    for w in sorted(windows, key=lambda w: (w.start, w.end)):
        if out and w.start <= out[-1].end:
            if w.end > out[-1].end:
                out[-1] = Window(out[-1].start, w.end)
        else:
            out.append(w)
    return out


_Task = tuple[Read, Window, tuple[str, ...] | None, str | None]  # statement() arguments


class ReportQuery:
    """Builds and runs the report's reads for one Scope."""

    def __init__(self, cfg: SinkConfig, scope: Scope) -> None:
        self.cfg = cfg
        self.scope = scope
        self._filters = self._scope_filters()
        # Each registered station in scope: its windows as (start, end) ns pairs.
        self._windows: dict[str, list[tuple[int, int]]] = {
            s.id: [(_ns(w.start), _ns(w.end)) for w in g.windows]
            for g in scope.groups
            for s in g.stations
        }
        self.spans = merged([w for g in scope.groups for w in g.windows])
        self._groups: dict[str, tuple[str, ...]] = {}  # each read's GROUP BY, once chosen
        self._parts: dict[str, list[str | None]] = {}  # a read split by station: SPLIT
        self._accept = MSGPACK  # JSON after a 406 (a server without MessagePack)
        # gzip costs both sides CPU for nothing on loopback; it pays over a network.
        self._encoding = "identity" if _loopback(cfg.url) else "gzip"

    def _scope_filters(self) -> list[str]:
        r = self.scope.request
        out = []
        for tag, value in (
            ("province", r.province),
            ("regency", r.regency),
            ("operator", r.operator),
            ("station", r.station),
        ):
            if value is not None:
                out.append(f"{ident(tag)} = {literal(value)}")
        return out

    def statement(
        self, rd: Read, w: Window, group: Sequence[str] | None = None, part: str | None = None
    ) -> str:
        """The InfluxQL of `rd` over `w`, grouped by `group` (default: all of `rd.tags`), of
        the stations whose id matches `part` (one of SPLIT; default: all)."""
        cols = ", ".join(ident(f) for f in rd.fields)
        group = ", ".join(ident(t) for t in (rd.tags if group is None else group))
        split = [] if part is None else [f"{ident('station')} {part}"]
        where = " AND ".join(
            [f"time >= {_ns(w.start)} AND time < {_ns(w.end)}", *self._filters, *split]
        )
        return f"SELECT {cols} FROM {ident(rd.measurement)} WHERE {where} GROUP BY {group}"

    def text(self, rd: Read) -> str:
        """The InfluxQL of `rd` for this scope (for the method page and the manifest): as
        run, once `read` has chosen its grouping and split."""
        return "; ".join(self.statement(*t) for t in self._tasks(rd))

    def _tasks(self, rd: Read) -> list[tuple[Read, Window, tuple[str, ...] | None, str | None]]:
        group = self._groups.get(rd.name)
        return [
            (rd, w, group, part) for w in self.spans for part in self._parts.get(rd.name, [None])
        ]

    def index_statement(self, reads: Sequence[Read]) -> str:
        """The series index of the reads' measurements in scope (SHOW SERIES reads no
        points)."""
        where = " AND ".join(self._filters)
        froms = ", ".join(ident(m) for m in dict.fromkeys(rd.measurement for rd in reads))
        return f"SHOW SERIES FROM {froms}" + (f" WHERE {where}" if where else "")

    def grouping(
        self, rd: Read, keys: Sequence[dict[str, str]]
    ) -> tuple[tuple[str, ...], dict[tuple[str, ...], tuple[str, ...]] | None]:
        """The fewest tags to group `rd` by, given its series `keys` (tag dicts): station and
        operator when each (station, operator) has one series, or one combination of the
        other tags (province, regency) per (station, operator, uplink, target); else all of
        `rd.tags`. With fewer tags, the map from a group to its series' tags. (InfluxDB 1.x
        spends more on each tag of a raw GROUP BY than on the values;
        benchmarks/results/report.md.)"""
        full = [tuple(k.get(t, "") for t in rd.tags) for k in keys]
        pos = {t: i for i, t in enumerate(rd.tags)}
        for cand in (("station", "operator"), ("station", "operator", "uplink", "target")):
            if not set(cand) <= set(rd.tags) or len(cand) >= len(rd.tags):
                continue
            idx = [pos[t] for t in cand]
            out: dict[tuple[str, ...], tuple[str, ...]] = {}
            for f in full:
                k = tuple(f[i] for i in idx)
                if out.setdefault(k, f) != f:
                    break
            else:
                return cand, out
        return rd.tags, None

    def read(
        self,
        reads: Sequence[Read],
        progress: Callable[[str], None] | None = None,
        workers: int = 2,
        done: Callable[[str, Rows], None] | None = None,
        stop: threading.Event | None = None,
    ) -> dict[str, Rows]:
        """Stream each read, one statement per span of time (the first and largest read: two,
        split by station), `workers` at a time (InfluxDB 1.x runs a statement on one core);
        rows by read name, or each read's rows handed to `done` (from a worker thread) as soon
        as its last statement has answered, so they are used while the others stream; once
        `stop` is set no further statement starts (the rows are then incomplete). Raises
        SinkUnavailable when the database does not answer, QueryError when it refuses a
        statement or sends what is not an InfluxDB answer."""
        client: httpx.Client = _http_client(self.cfg)
        builders = {}
        try:
            index = self._series_index(client, reads)
            for rd in reads:
                group, full = self.grouping(rd, index.get(rd.measurement, []))
                self._groups[rd.name] = group
                builders[rd.name] = _Builder(rd, group, full)
        except BaseException:
            client.close()
            raise
        if reads and workers > 1:
            self._parts[reads[0].name] = list(SPLIT)
        tasks = [t for rd in reads for t in self._tasks(rd)]
        left = {rd.name: sum(1 for t in tasks if t[0] is rd) for rd in reads}
        lock = threading.Lock()

        failed = threading.Event()  # a statement failed: the others do not start

        def one(task: _Task) -> None:
            if failed.is_set() or (stop is not None and stop.is_set()):
                return
            rd = task[0]
            try:
                self._read(client, builders[rd.name], self.statement(*task))
            except BaseException:
                failed.set()
                raise
            with lock:
                left[rd.name] -= 1
                last = left[rd.name] == 0
                b = builders.pop(rd.name) if last and done is not None else None
            if b is not None and done is not None:
                done(rd.name, b.rows())
            if last and progress is not None:
                progress(rd.name)

        try:
            # In the reads' order (the largest first), so the others run beside it.
            with ThreadPoolExecutor(max_workers=workers) as pool:
                list(pool.map(one, tasks))
        finally:
            client.close()
        return {name: b.rows() for name, b in builders.items()}

    def _series_index(
        self, client: httpx.Client, reads: Sequence[Read]
    ) -> dict[str, list[dict[str, str]]]:
        """The tags of every series of the reads' measurements in scope, by measurement."""
        keys: dict[str, list[dict[str, str]]] = {}

        def take(doc: Any) -> None:
            for ser in _result_series(doc):
                try:
                    values = ser.get("values") or []
                    for v in values:
                        m, tags = parse_series_key(str(v[0]))
                        keys.setdefault(m, []).append(tags)
                except (TypeError, IndexError, AttributeError):
                    raise QueryError("the answer is not an InfluxDB query result") from None

        if reads:
            self._stream(client, self.index_statement(reads), take)
        return keys

    def _read(self, client: httpx.Client, b: _Builder, statement: str) -> None:
        def take(doc: Any) -> None:
            for ser in _result_series(doc):
                self._series(b, ser)

        self._stream(client, statement, take)

    def _stream(self, client: httpx.Client, statement: str, take: Callable[[Any], None]) -> None:
        where = f"InfluxDB at {_redact(self.cfg.url)}"
        params: dict[str, str] = {
            "db": self.cfg.database,
            "epoch": "ns",
            "chunked": "true",
            "chunk_size": str(CHUNK_ROWS),
        }
        if self.cfg.retention_policy:
            params["rp"] = self.cfg.retention_policy
        try:
            with client.stream(
                "POST",
                "/query",
                params=params,
                data={"q": statement},
                # MessagePack alone: InfluxDB 1.6 answers JSON to a list of types with q
                # values ("application/x-msgpack, application/json;q=0.5").
                headers={"Accept": self._accept, "Accept-Encoding": self._encoding},
            ) as r:
                if r.status_code == 406 and self._accept == MSGPACK:
                    self._accept = "application/json"  # a server without MessagePack
                    retry = True
                else:
                    retry = False
                    if r.status_code != 200:
                        body = r.read()
                        message = _error_text(_as_json(body, r.headers), None, r.reason_phrase)
                        if r.status_code == 400:
                            raise QueryError(message)
                        _classify(r.status_code, message, where, self.cfg)
                        raise QueryError(message)
                    for doc in _documents(r):
                        take(doc)
        except httpx.TimeoutException:
            raise SinkUnavailable(
                f"{where} did not answer within {self.cfg.timeout_s:g} s", self.cfg.retry_after_s
            ) from None
        except (httpx.HTTPError, OSError) as exc:
            raise SinkUnavailable(
                f"{where} unreachable: {type(exc).__name__}: {exc}", self.cfg.retry_after_s
            ) from None
        if retry:
            self._stream(client, statement, take)

    def _series(self, b: _Builder, ser: Any) -> None:
        try:
            cols = [str(c) for c in ser["columns"]]
            vals = ser.get("values") or []
            tags = ser.get("tags") or {}
            key = tuple(str(tags.get(t) or "") for t in b.group)
        except (KeyError, TypeError, AttributeError):
            raise QueryError("the answer is not an InfluxDB query result") from None
        if b.full is not None:
            full = b.full.get(key)
            if full is None:
                raise QueryError(
                    f"station {key[0]}: a {b.read.measurement} series not in the series index "
                    "appeared while the report read it; run the report again"
                )
            key = full
        wins = self._windows.get(key[0])
        if not wins or not vals:
            return  # a station outside the scope (or unregistered)
        arr = np.array(vals, dtype=object)
        if arr.ndim != 2 or arr.shape[1] != len(cols) or cols[0] != "time":
            raise QueryError("the answer is not an InfluxDB query result (ragged rows)")
        try:
            t = arr[:, 0].astype(np.int64)
        except (TypeError, ValueError):
            raise QueryError("the answer's times are not integers (epoch=ns)") from None
        keep = np.zeros(len(t), dtype=bool)
        for lo, hi in wins:
            keep |= (t >= lo) & (t < hi)
        if not keep.any():
            return
        n = int(keep.sum())
        got = {c: _floats(arr[keep, j]) for j, c in enumerate(cols) if c in b.read.fields}
        with b.lock:
            s = b.series.setdefault(key, len(b.series))
            b.sid.append(np.full(n, s, dtype=np.int32))
            b.time.append(t[keep])
            for f in b.read.fields:
                b.values.setdefault(f, []).append(got[f] if f in got else np.full(n, np.nan))


def _loopback(url: str) -> bool:
    host = (httpx.URL(url).host or "").strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _result_series(doc: Any) -> Iterator[Any]:
    """The series of an answer's document; QueryError for an error or what is not one."""
    if not isinstance(doc, dict):
        raise QueryError("the answer is not an InfluxDB query result")
    if doc.get("error"):
        raise QueryError(str(doc["error"]))
    for res in doc.get("results") or []:
        if not isinstance(res, dict):
            raise QueryError("the answer is not an InfluxDB query result")
        if res.get("error"):
            raise QueryError(str(res["error"]))
        yield from res.get("series") or []


_UNESCAPED_COMMA = re.compile(r"(?<!\\),")
_UNESCAPED_EQUALS = re.compile(r"(?<!\\)=")
_ESCAPE = re.compile(r"\\([,= ])")


def parse_series_key(key: str) -> tuple[str, dict[str, str]]:
    """A series key as SHOW SERIES prints it (`m,tag=value,...`, line protocol escaping:
    a backslash before a comma, equals sign or space; collector.lineproto stores no other
    backslash before these, nor one at the end) as its measurement and tags."""
    if "\\" not in key:
        m, *pairs = key.split(",")
        split = [p.split("=", 1) for p in pairs]
    elif "\0" not in key and "\1" not in key:
        # The escaped commas and equals signs as NUL and SOH while splitting (str methods).
        k = key.replace("\\,", "\0").replace("\\=", "\1").replace("\\ ", " ")
        m, *pairs = k.split(",")
        m = m.replace("\0", ",").replace("\1", "=")
        split = [[x.replace("\0", ",").replace("\1", "=") for x in p.split("=", 1)] for p in pairs]
    else:
        m, *pairs = _UNESCAPED_COMMA.split(key)
        split = [_UNESCAPED_EQUALS.split(p, maxsplit=1) for p in pairs]
        m = _ESCAPE.sub(r"\1", m)
        split = [[_ESCAPE.sub(r"\1", x) for x in kv] for kv in split]
    if any(len(kv) != 2 for kv in split):
        raise QueryError(f"the series key {key[:200]!r} is not `measurement,tag=value,...`")
    return m, {k: v for k, v in split}


def _as_json(body: bytes, headers: httpx.Headers) -> bytes:
    """An error body as JSON text (InfluxDB answers errors in the format asked for)."""
    if MSGPACK not in headers.get("content-type", ""):
        return body
    try:
        return json.dumps(msgpack.unpackb(body, raw=False)).encode()
    except (ValueError, TypeError, msgpack.UnpackException):
        return body


def _documents(r: httpx.Response) -> Iterator[Any]:
    """The answer's documents as they arrive: MessagePack objects one after another, or
    JSON documents one a line (a server that ignores the Accept header)."""
    if MSGPACK in r.headers.get("content-type", ""):
        u = msgpack.Unpacker(raw=False, max_buffer_size=MAX_CHUNK_BYTES)
        for chunk in r.iter_bytes():
            u.feed(chunk)
            try:
                yield from u
            except (ValueError, msgpack.UnpackException):
                raise QueryError("the answer is not valid MessagePack") from None
        return
    for line in r.iter_lines():
        if line.strip():
            try:
                yield json.loads(line)
            except ValueError:
                raise QueryError("the answer is not JSON") from None


def known_operators(cfg: SinkConfig) -> list[str]:
    """Operator tag values the database holds (SHOW TAG VALUES is served from the index)."""
    rows = query_influxql(cfg, 'SHOW TAG VALUES WITH KEY = "operator"', epoch=None)
    return sorted({str(r["value"]) for r in rows if r.get("value")})
