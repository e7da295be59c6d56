"""The collector's HTTP API (FastAPI on uvicorn). It only routes: auth, validation,
sinks, status and registry are modules of their own.

POST /api/v1/stations/{station}/measurements
                            an agent's envelope (JSON, optionally gzip); answers per record
POST /api/v1/measurements   the same without the station in the URL (deprecated: a proxy
                            cannot route it by station)
GET  /api/v1/time           the server's clock, for agents' clock correction
POST /api/v1/enroll         an enrolment code exchanged for a station's token (enrol_api)
GET  /healthz               the process is alive
GET  /readyz                the database answers
GET  /metrics               Prometheus text            (admin: see AdminGate)
GET  /openapi.json          this API, described        (admin; no /docs or /redoc pages)
GET  /api/v1/speedtest/ticket     a speedtest ticket for the caller's token (collector.tickets)
GET  /api/v1/speedtest/authorize  nginx's auth_request check of a speedtest URL
     /speedtest/t/TICKET/...      the Speedtest Mini endpoint and the upload sink
                                  (collector.speedtest)
GET  /reports               regulator reports (admin token; collector.report.web)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import ipaddress
import logging
import os
import time
import zlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from agent.contract import __version__
from agent.contract.configkit import STATION_ID_RE
from agent.contract.record import (
    ContractError,
    decode_envelope_header,
    envelope_json_schema,
    format_time,
)
from agent.contract.thresholds import load as load_thresholds
from collector import statusstore
from collector.admission import RouteScope, ScopeLike
from collector.batcher import Batcher
from collector.config import CollectorConfig
from collector.connguard import REASONS as GUARD_REASONS
from collector.enrol_api import add_enrolment
from collector.guard import Guard
from collector.ingest import (
    FastPath,
    Prepared,
    Rejection,
    count_records,
    prepare_decoded,
    prepare_raw,
)
from collector.ratelimit import DailyQuota, TokenBuckets, retry_after
from collector.registry import Registry, TokenInfo
from collector.sinks import QueryError, Sink, SinkUnavailable, make_sink
from collector.speedtest import Access, Refusal, SpeedtestEndpoint, download_size
from collector.station import Station
from collector.status import StatusEngine
from collector.statuswriter import StatusWriter
from collector.tickets import TicketSigner, load_key, ticket_in_path

log = logging.getLogger("sinyal.collector")

ENVELOPE_SCHEMA: dict[str, Any] = envelope_json_schema()


class Metrics:
    def __init__(self, shard_id: str = "") -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        info = Gauge("sinyal_shard", "This process's shard (shard.id)", ["shard"], registry=r)
        info.labels(shard_id).set(1)
        self.accepted = Counter(
            "sinyal_records_accepted", "Records written and acknowledged", registry=r
        )
        self.rejected = Counter(
            "sinyal_records_rejected", "Records rejected, by reason", ["reason"], registry=r
        )
        self.requests = Counter(
            "sinyal_requests", "Ingest requests by HTTP status", ["status"], registry=r
        )
        self.db_errors = Counter(
            "sinyal_database_errors", "Writes the database did not confirm", registry=r
        )
        self.connections_closed = Counter(
            "sinyal_connections_closed",
            "Connections the connection guard closed or refused, by reason",
            ["reason"],
            registry=r,
        )
        self.rate_limited = Counter(
            "sinyal_rate_limited",
            "Requests answered 429 by a per-token limit, by limit",
            ["limit"],
            registry=r,
        )
        self.speedtest_refused = Counter(
            "sinyal_speedtest_refused",
            "Speedtest requests refused, by reason",
            ["reason"],
            registry=r,
        )
        self.admin_refused = Counter(
            "sinyal_admin_refused", "Requests for admin paths refused", registry=r
        )
        # Every label an operator may alert on exists from the start, at 0.
        for reason in GUARD_REASONS:
            self.connections_closed.labels(reason)
        for limit in ("requests", "records"):
            self.rate_limited.labels(limit)
        for reason in ("no_ticket", "quota", "too_large"):
            self.speedtest_refused.labels(reason)
        self._by_status: dict[int, Any] = {}
        self.write_seconds = Histogram(
            "sinyal_database_write_seconds",
            "Time for the database to confirm a batch",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )

    def status(self, code: int) -> Any:
        """The requests counter of one HTTP status (the labelled child, made once)."""
        child = self._by_status.get(code)
        if child is None:
            child = self._by_status[code] = self.requests.labels(str(code))
        return child


# Stations new to a shard: their uploads gathered this long, at most this many per query.
TAKEOVER_GATHER_S = 0.1
TAKEOVER_BATCH = 500
# Beyond this many waiting uploads (a slow database in a mass takeover), new stations are
# evaluated at once from what this shard knows: memory stays bounded.
TAKEOVER_MAX_PENDING = 20_000
# Longest delay before a 429 answer (IngestService.answer).
TARPIT_S = 1.0
# Envelopes with more records than this are decoded and validated in a thread
# (IngestService.ingest).
LARGE_ENVELOPE = 200


class HttpError(Exception):
    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or {}


class Upload:
    """An upload request as the ingest route reads it: its headers (the first of each name,
    as Starlette's Request gives them) and its ASGI receive."""

    __slots__ = ("headers", "receive")

    def __init__(self, scope: Scope, receive: Receive) -> None:
        headers: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            if name not in headers:
                headers[name] = value
        self.headers = headers
        self.receive = receive

    def header(self, name: bytes) -> str:
        """A header's value ("" without one); `name` in lower case."""
        return self.headers.get(name, b"").decode("latin-1")


class IngestService:
    """The ingest pipeline with its collaborators; one per process."""

    def __init__(
        self,
        cfg: CollectorConfig,
        registry: Registry | None = None,
        sink: Sink | None = None,
        engine: StatusEngine | None = None,
    ) -> None:
        self.cfg = cfg
        self.registry = registry or Registry.for_config(cfg)
        self.sink = sink or make_sink(cfg.sink)
        self.engine = engine or StatusEngine(load_thresholds(cfg.thresholds_file), cfg.status)
        # This process's name among the processes a proxy routes stations to (cfg.shard).
        self.shard_id = cfg.shard_id
        self.metrics = Metrics(self.shard_id)
        self.batcher = Batcher(self.sink)
        # Status points go to the database from a task of their own, never on an ack's way.
        self.status_writer = StatusWriter(self.batcher.write)
        # Uploads of stations new to this shard, waiting for their latest status (_takeovers).
        self._pending: list[tuple[Station, list[Any]]] = []
        self._pending_ids: set[str] = set()
        self._pending_wake = asyncio.Event()
        self._taking_over = 0  # uploads of a batch whose latest status is being read
        self._takeover_task: asyncio.Task[None] | None = None
        self.fast = FastPath()
        self.guard = Guard(cfg.limits)
        lim = cfg.limits
        self.request_buckets = TokenBuckets(lim.requests_per_s, lim.requests_burst)
        self.record_buckets = TokenBuckets(lim.records_per_s, lim.records_burst)

    def authenticate(self, request: Request | Upload) -> TokenInfo:
        """The request's agent token, charged one request: 401, or 429 over its rate."""
        if isinstance(request, Upload):
            authorization = request.header(b"authorization")
        else:
            authorization = request.headers.get("authorization", "")
        token = _bearer(authorization)
        scope = self.registry.authenticate(token) if token else None
        if scope is None:
            raise HttpError(
                401, "missing, unknown or revoked token", {"WWW-Authenticate": "Bearer"}
            )
        # Before the body is read: close the connection with the answer, so a client that
        # does not wait stops sending its body and has to connect again.
        self.limit("requests", self.request_buckets, scope.id, 1, close=True)
        return scope

    def limit(
        self, name: str, buckets: TokenBuckets, key: str, n: int, close: bool = False
    ) -> None:
        wait = buckets.take(key, n)
        if wait:
            self.metrics.rate_limited.labels(name).inc()
            after = retry_after(wait)
            headers = {"Retry-After": after}
            if close:
                headers["Connection"] = "close"
            raise HttpError(
                429,
                f"this token's {name} limit is reached ({buckets.rate:g}/s, burst"
                f" {buckets.burst:g}); retry after {after} s",
                headers,
            )

    def check_size(self, n: int) -> None:
        """413 for more than limits.max_records records in one request."""
        if n > self.cfg.limits.max_records:
            raise HttpError(413, f"more than {self.cfg.limits.max_records} records in one request")

    def admit_records(self, scope: TokenInfo, n: int) -> None:
        """An envelope of `n` records, before any is decoded: 413 over max_records, 429 over
        the token's records limit (else the records are charged)."""
        self.check_size(n)
        self.limit("records", self.record_buckets, scope.id, n)

    def decode(self, body: bytes) -> tuple[Any, bool]:
        """The envelope's JSON document, and whether the fast path decoded its records (the
        envelopes agents send, in one pass); ContractError when the body is not JSON."""
        doc = self.fast.decode_envelope(body)
        if doc is not None:
            return doc, True
        try:
            return orjson.loads(body), False
        except orjson.JSONDecodeError as exc:
            raise ContractError("", f"not JSON: {exc}") from None

    async def read_body(self, request: Upload) -> bytes:
        limit = self.cfg.limits.max_body_bytes
        declared = request.header(b"content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise HttpError(413, f"body larger than {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        receive = request.receive
        while True:
            message = await receive()
            if message["type"] != "http.request":  # http.disconnect
                raise ClientDisconnect()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise HttpError(413, f"body larger than {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        given = request.headers.get(b"content-encoding")
        encoding = "identity" if given is None else given.decode("latin-1").lower()
        if encoding == "gzip":
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            try:
                body = d.decompress(body, limit + 1)
            except zlib.error as exc:
                raise HttpError(422, f"gzip body does not decompress: {exc}") from None
            if len(body) > limit or d.unconsumed_tail:
                raise HttpError(413, f"decompressed body larger than {limit} bytes")
            # One complete gzip member and nothing after it: a truncated stream (no CRC) or
            # trailing bytes (a second member, garbage) could hide what was checked.
            if not d.eof:
                raise HttpError(422, "gzip body is truncated (no end of stream, no CRC)")
            if d.unused_data:
                raise HttpError(422, "gzip body has data after its end (a second member?)")
        elif encoding != "identity":
            raise HttpError(415, f"content-encoding {encoding} not supported (gzip or identity)")
        return body

    async def answer(
        self, request: Upload, station: str | None = None
    ) -> tuple[int, bytes, dict[str, str]]:
        """The ingest endpoint's answer: (HTTP status, JSON body, extra headers). `station`:
        the station the URL names (None on the deprecated route without one)."""
        try:
            payload = await self.ingest(request, station)
        except HttpError as exc:
            self.metrics.status(exc.status).inc()
            if exc.status == 429:
                # A client over its limit waits for the answer (at most TARPIT_S): one that
                # honours Retry-After loses nothing, one that does not can no longer make
                # the collector answer it hundreds of times a second.
                await asyncio.sleep(min(TARPIT_S, float(exc.headers["Retry-After"])))
            return exc.status, orjson.dumps({"error": exc.reason}), exc.headers
        self.metrics.status(200).inc()
        return 200, orjson.dumps(payload), {}

    async def ingest(self, request: Upload, station: str | None = None) -> dict[str, Any]:
        token = self.authenticate(request)
        if station is not None and not token.allows(station):
            raise HttpError(403, f"token may not write for station {station}")
        body = await self.read_body(request)
        # The records limits are checked on the records the body holds, counted before any
        # is decoded: a request over them costs a scan of its JSON, not a decode (decoding
        # an abusive token's refused envelopes held up other stations). What
        # is counted is charged, whatever becomes of the envelope afterwards.
        counted = count_records(body)
        if counted is not None:
            self.admit_records(token, counted)
        # Decoding and validating hundreds of records takes the event loop for tens of
        # milliseconds; in a thread the loop keeps answering other stations meanwhile (the
        # GIL passes between them every few milliseconds).
        large = counted is not None and counted > LARGE_ENVELOPE
        try:
            if large:
                doc, decoded = await asyncio.to_thread(self.decode, body)
            else:
                doc, decoded = self.decode(body)
            header = decode_envelope_header(doc)
        except ContractError as exc:
            raise HttpError(422, f"malformed envelope: {exc}") from None
        n = len(header.raw_records)
        self.check_size(n)
        scope: ScopeLike = token
        if station is not None:
            if header.station != station:
                raise HttpError(
                    403, f"the envelope's station {header.station} is not the URL's {station}"
                )
            scope = RouteScope(token, station)  # its records too: for no other station
        elif not token.allows(header.station):
            raise HttpError(403, f"token may not write for station {header.station}")
        if counted is None or n > counted:  # not countable beforehand (or counted short)
            self.limit("records", self.record_buckets, token.id, n - (counted or 0))
        now = datetime.now(UTC)

        def prepare() -> Prepared:
            entry = prepare_decoded if decoded else prepare_raw
            return entry(header.raw_records, scope, self.registry, self.cfg.limits, now, self.fast)

        if n > LARGE_ENVELOPE:
            prepared = await asyncio.to_thread(prepare)
        else:
            prepared = prepare()
        points = self.guard.check(prepared)  # repeated ids, series cap, history rewrite
        accepted = await self.write(prepared)
        self.guard.remember(prepared, points, accepted)
        for rej in prepared.rejected:
            self.metrics.rejected.labels(rej.reason).inc()
        self.metrics.accepted.inc(len(accepted))
        return {
            "accepted": accepted,
            "rejected": [r.to_dict() for r in prepared.rejected],
            "server_time": _now_text(),
        }

    async def write(self, prepared: Prepared) -> list[str]:
        """Write; return the ids the database confirmed. Raises HttpError 503 when it is down."""
        if not prepared.lines:
            return []
        t0 = time.perf_counter()
        try:
            result = await self.batcher.write(prepared.lines)
        except SinkUnavailable as exc:
            self.metrics.db_errors.inc()
            log.warning("database unavailable, nothing acknowledged: %s", exc)
            retry = str(getattr(exc, "retry_after_s", self.cfg.sink.retry_after_s))
            raise HttpError(
                503, "database unavailable; keep the records and retry", {"Retry-After": retry}
            ) from None
        finally:
            self.metrics.write_seconds.observe(time.perf_counter() - t0)
        accepted: list[str] = []
        by_station: dict[str, tuple[Any, list[Any]]] = {}
        for i, record in enumerate(prepared.records):
            reason = result.rejected.get(i)
            if reason is not None:
                prepared.rejected.append(Rejection(record.id, "database", reason))
                continue
            accepted.append(record.id)
            st = prepared.stations[i]
            by_station.setdefault(st.id, (st, []))[1].append(record)
        self.update_status(by_station)
        return accepted

    def update_status(self, by_station: dict[str, tuple[Any, list[Any]]]) -> None:
        """Feed the status engine; the points it makes are queued for the status writer
        (the agent's acknowledgement does not wait for them). The uploads of a station this
        shard does not own yet wait (not their acknowledgement) for the takeover task."""
        direct: list[tuple[Station, list[Any]]] = []
        for station, records in by_station.values():
            records.sort(key=lambda r: r.measured_at)
            if self._takeover_task is not None and (
                station.id in self._pending_ids
                or (not self.engine.owns(station.id) and len(self._pending) < TAKEOVER_MAX_PENDING)
            ):
                self._pending.append((station, records))
                self._pending_ids.add(station.id)
            else:
                direct.append((station, records))
        if self._pending:
            self._pending_wake.set()
        self._evaluate(direct)

    async def _takeovers(self, stop: asyncio.Event) -> None:
        """Stations new to this shard (re-routed from another, or first seen): their latest
        points, read in batches, replace this shard's older knowledge of them before their
        uploads are evaluated, so a station critical on the shard it left stays critical
        here (collector.status StatusEngine.adopt)."""
        assert self.cfg.sink is not None
        while not stop.is_set():
            waker = asyncio.ensure_future(self._pending_wake.wait())
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait({waker, stopper}, return_when=asyncio.FIRST_COMPLETED)
            waker.cancel()
            stopper.cancel()
            self._pending_wake.clear()
            await asyncio.sleep(TAKEOVER_GATHER_S)  # gather the uploads of concurrent stations
            batch = self._pending[:TAKEOVER_BATCH]
            del self._pending[: len(batch)]
            if not batch:
                continue
            self._taking_over = len(batch)
            ids = sorted({st.id for st, _ in batch})
            try:
                rows = await asyncio.to_thread(
                    statusstore.latest,
                    self.cfg.sink,
                    self.shard_id,
                    statusstore.RESTORE_WINDOW,
                    ids,
                )
            except (SinkUnavailable, QueryError) as exc:
                log.warning(
                    "takeover of %d stations without their latest status: %s", len(ids), exc
                )
                rows = []
            self.engine.adopt(rows)
            self._pending_ids = {st.id for st, _ in self._pending}
            self._evaluate(batch)
            self._taking_over = 0
            if self._pending:
                self._pending_wake.set()
        self._evaluate(self._pending)  # at shutdown: no more reading
        self._pending, self._pending_ids = [], set()

    def _evaluate(self, items: list[tuple[Station, list[Any]]]) -> None:
        """Observe each upload; queue the points of the stations it changed. A station with
        several uploads in `items` (they waited for a takeover) gets a point per change, each
        at its own instant."""
        engine = self.engine
        changed: list[Station] = []
        points = []
        ids: set[str] = set()
        at = datetime.now(UTC)
        for station, records in items:
            if station.id in ids:  # its earlier upload's point first, then a later instant
                points += engine.status_points(changed, at, self.shard_id)
                changed, ids = [], set()
                at = max(datetime.now(UTC), at + timedelta(microseconds=1))
            # A station new to this shard is announced at once: the map learns of it, and
            # the shard that had it before sees it was taken over.
            first = not engine.owns(station.id)
            now_changed = bool(engine.observe(station, records)) or first
            if engine.has_history:  # a backlog after silence: its changes, at their times
                history = engine.take_history(station.id)
                if history:
                    points += engine.history_points(station, history, self.shard_id)
                    now_changed = True  # the current point follows its history
            if now_changed:
                changed.append(station)
                ids.add(station.id)
        if changed:
            points += engine.status_points(changed, at, self.shard_id)
        if points:
            self.status_writer.put(points)

    def status_settled(self) -> bool:
        """No upload waits for its status and no status point waits to be written."""
        return not self._pending and not self._taking_over and not self.status_writer.pending()

    def write_status(self, stations: list[Station]) -> None:
        """Queue the current station_status points of these stations (the status writer
        retries them while the database is down)."""
        self.status_writer.put(
            self.engine.status_points(stations, datetime.now(UTC), self.shard_id)
        )

    async def restore_status(self) -> None:
        """At start: this shard's stations' status from their latest station_status points."""
        if not self.cfg.status.restore or not statusstore.readable(self.cfg.sink):
            return
        assert self.cfg.sink is not None
        try:
            rows = await asyncio.to_thread(statusstore.latest, self.cfg.sink, self.shard_id)
        except (SinkUnavailable, QueryError) as exc:
            log.warning("status not restored from the database (starting from none): %s", exc)
            return
        window = timedelta(seconds=2 * self.cfg.status.silent_after_s)
        try:
            newest = await asyncio.to_thread(statusstore.newest_rounds, self.cfg.sink, window)
        except (SinkUnavailable, QueryError) as exc:
            log.warning("newest rounds not read (last uploads from status points): %s", exc)
            newest = {}
        rows = [
            r
            if (t := newest.get(r.station)) is None or (r.last_rx and r.last_rx >= t)
            else dataclasses.replace(r, last_rx=t)
            for r in rows
        ]
        n = self.engine.restore(rows)
        mine = sum(1 for r in rows if r.owned)
        log.info(
            "status restored for %d stations (%d last written by shard %s)", n, mine, self.shard_id
        )

    async def _not_taken_over(self, include_silent: bool) -> bool:
        """Disown the overdue (and silent) stations another shard wrote a newer point for.
        False when the database could not say (the sweep waits for the next pass)."""
        overdue = self.engine.overdue(include_silent)
        if not overdue or not statusstore.readable(self.cfg.sink):
            return True
        assert self.cfg.sink is not None
        now = datetime.now(UTC)
        try:
            taken = await asyncio.to_thread(
                statusstore.taken_over, self.cfg.sink, self.shard_id, overdue, now
            )
        except (SinkUnavailable, QueryError) as exc:
            log.warning("silence check postponed: cannot read station_status: %s", exc)
            return False
        for sid in taken:
            log.info("station %s was taken over by another shard", sid)
            self.engine.disown(sid)
        return True

    async def _known_elsewhere(self, known: list[Station]) -> bool:
        """Before flagging the registry stations this shard never heard of: learn those
        another shard wrote a point for recently (they reported there). False when the
        database could not say (they are not flagged this pass)."""
        if not statusstore.readable(self.cfg.sink):
            return True
        if all(self.engine.knows(k.id) for k in known):
            return True
        assert self.cfg.sink is not None
        window = statusstore.TAKEOVER_WINDOW
        try:
            rows = await asyncio.to_thread(statusstore.latest, self.cfg.sink, self.shard_id, window)
        except (SinkUnavailable, QueryError) as exc:
            log.warning("never-reported stations not flagged: cannot read station_status: %s", exc)
            return False
        self.engine.restore(rows)
        return True

    async def sweeper(self, stop: asyncio.Event) -> None:
        """Marks silent the stations this shard owns and refreshes their status points
        periodically."""
        interval = self.cfg.status.sweep_interval_s
        refresh_every = max(interval, 300.0)
        last_refresh = float("-inf")  # the first pass writes every station's point
        next_never_check = float("-inf")
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
                return
            try:
                known = self.registry.stations()
                refresh = time.monotonic() - last_refresh >= refresh_every
                # A station routed to another shard is neither flagged silent nor refreshed
                # here once that shard wrote a newer point for it.
                if not await self._not_taken_over(include_silent=refresh):
                    continue
                never = False  # flag the registry stations no shard has heard of
                if (
                    self.cfg.status.flag_never_reported
                    and time.monotonic() >= next_never_check
                    and self.engine.may_flag_never_reported()
                ):
                    never = await self._known_elsewhere(known)
                    if never:
                        next_never_check = time.monotonic() + refresh_every
                changes = self.engine.sweep(known, never)
                if refresh:
                    owned = self.engine.owned()
                    self.write_status([k for k in known if k.id in owned])
                    last_refresh = time.monotonic()
                elif changes:
                    ids = {c.station for c in changes}
                    self.write_status([k for k in known if k.id in ids])
            except Exception:
                log.exception("sweeper pass failed")


STATION_PREFIX = "/api/v1/stations/"
STATION_SUFFIX = "/measurements"
STATION_ROUTE = STATION_PREFIX + "{station}" + STATION_SUFFIX
LEGACY_PATH = "/api/v1/measurements"
# The deprecated route's answers say so, and name their successor.
LEGACY_HEADERS = {
    "Deprecation": "true",
    "Link": f'<{STATION_ROUTE}>; rel="successor-version"',
}
_BAD_STATION = orjson.dumps(
    {
        "error": "the URL's station is not a station id (1 to 64 letters, digits, '.', '_'"
        " or '-', starting with a letter or a digit)"
    }
)


def route_station(path: str) -> str | None:
    """The station of a POST /api/v1/stations/{station}/measurements path (as the ASGI
    server decoded it): "" when the path has that form but no valid station id in it
    (a %2F, a "..", anything outside STATION_ID_RE), None when it is another path."""
    if not (path.startswith(STATION_PREFIX) and path.endswith(STATION_SUFFIX)):
        return None
    station = path[len(STATION_PREFIX) : -len(STATION_SUFFIX)]
    return station if STATION_ID_RE.fullmatch(station) else ""


class IngestRoute:
    """Answers POST /api/v1/stations/{station}/measurements (and the deprecated
    POST /api/v1/measurements) ahead of FastAPI, as a plain ASGI app (CollectorApp calls it
    before its own middleware and routing).

    The route is the collector's hot path: at election-day rates FastAPI's per-request
    machinery (its telemetry check, the middleware stack, route matching, dependency
    solving) was a tenth of the collector's CPU for a job that needs none of it. Every
    other path, and the route's OpenAPI description, stay with FastAPI."""

    def __init__(self, collector: IngestService) -> None:
        self.collector = collector

    @staticmethod
    def station(scope: Scope) -> str | None:
        """None: not this route's request. "": the station route, without a station id.
        LEGACY_PATH: the deprecated route. Else the URL's station."""
        if scope["type"] != "http" or scope["method"] != "POST":
            return None
        path: str = scope["path"]
        return LEGACY_PATH if path == LEGACY_PATH else route_station(path)

    async def __call__(self, scope: Scope, receive: Receive, send: Send, station: str) -> None:
        if station == LEGACY_PATH:
            status, body, extra = await self.collector.answer(Upload(scope, receive))
            extra = {**extra, **LEGACY_HEADERS}
        elif station:
            status, body, extra = await self.collector.answer(Upload(scope, receive), station)
        else:
            status, body, extra = 404, _BAD_STATION, {}
            self.collector.metrics.status(404).inc()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *((k.lower().encode(), v.encode()) for k, v in extra.items()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class CollectorApp(FastAPI):
    """The collector's FastAPI app, with the ingest route answered before FastAPI's own
    machinery (IngestRoute)."""

    def __init__(self, ingest: IngestRoute, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ingest = ingest

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        station = IngestRoute.station(scope)
        if station is not None:
            await self.ingest(scope, receive, send, station)
        else:
            await super().__call__(scope, receive, send)


ADMIN_PATHS = frozenset({"/metrics", "/openapi.json"})
# Whose X-Forwarded-For is believed: uvicorn's default (loopback), or its environment variable.
FORWARDED_ALLOW_IPS = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")


class AdminGate:
    """/metrics and /openapi.json are for operators: with `admin.token` configured, only
    for `Authorization: Bearer <admin token>`; without, only for loopback clients (a
    reverse proxy must then pass X-Forwarded-For, which uvicorn trusts from loopback
    only). The Swagger and ReDoc pages are not served at all: they load scripts from a
    CDN."""

    def __init__(self, app: ASGIApp, token: str | None, on_refuse: Any) -> None:
        self.app = app
        self.token = token.encode() if token else None
        self.on_refuse = on_refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in ADMIN_PATHS and not self.allowed(scope):
            self.on_refuse()
            body = b'{"error": "admin endpoint: give the admin token (admin.token)"}'
            await send(
                {
                    "type": "http.response.start",
                    "status": 401 if self.token else 403,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)

    def allowed(self, scope: Scope) -> bool:
        if self.token is not None:
            for name, value in scope.get("headers", ()):
                if name == b"authorization":
                    given = _bearer(value.decode("latin-1"))
                    return given is not None and hmac.compare_digest(
                        given.encode("latin-1", "replace"), self.token
                    )
            return False
        client = scope.get("client")
        try:
            return client is not None and ipaddress.ip_address(client[0]).is_loopback
        except ValueError:
            return False


def _speedtest_access(c: IngestService, signer: TicketSigner, quota: DailyQuota) -> Access:
    def check(path: str) -> str | None:
        text = ticket_in_path(path)
        ticket = signer.verify(text) if text is not None else None
        if ticket is None or not c.registry.is_active(ticket.token_id):
            return None
        return ticket.token_id

    return Access(check, quota, lambda reason: c.metrics.speedtest_refused.labels(reason).inc())


def _error_response(exc: HttpError) -> Response:
    return JSONResponse({"error": exc.reason}, exc.status, headers=exc.headers)


def _now_text() -> str:
    """format_time(datetime.now(UTC)) (tests/unit/test_app_hotpath.py), at a third of its
    cost: isoformat is written in C, strftime is not."""
    return datetime.now(UTC).isoformat(timespec="microseconds")[:-6] + "Z"


def _bearer(header: str) -> str | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() in ("bearer", "token") and value.strip():
        return value.strip()
    return None


def create_app(cfg: CollectorConfig, collector: IngestService | None = None) -> FastAPI:
    c = collector or IngestService(cfg)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = asyncio.Event()
        await c.restore_status()
        c.status_writer.start()
        task = asyncio.create_task(c.sweeper(stop)) if cfg.status.sweeper else None
        if cfg.status.restore and statusstore.readable(cfg.sink):
            c._takeover_task = asyncio.create_task(c._takeovers(stop))
        c.registry.start_background()
        try:
            yield
        finally:
            await run_in_threadpool(c.registry.stop_background)
            stop.set()
            if task is not None:
                await task
            if c._takeover_task is not None:
                await c._takeover_task
            await c.status_writer.close()  # what is queued is written before the sink closes
            await c.sink.aclose()
            c.sink.close()

    app = CollectorApp(
        IngestRoute(c),
        title="Sinyal collector",
        version=__version__,
        lifespan=lifespan,
        description="Ingest API for Sinyal agents. See docs/collector.md.",
        docs_url=None,
        redoc_url=None,
    )
    app.state.collector = c
    app.add_middleware(AdminGate, token=cfg.admin.token, on_refuse=c.metrics.admin_refused.inc)
    # X-Forwarded-For from a proxy on loopback, for AdminGate (added last: outermost).
    # uvicorn's own copy is off in serve (collector.server): an upload needs no client
    # address, so the ingest route goes without it.
    app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=FORWARDED_ALLOW_IPS)
    st = cfg.speedtest
    signer = TicketSigner(load_key(cfg.data_dir / "speedtest.key"), st.ticket_ttl_s)
    quota = DailyQuota(st.daily_bytes_per_token)
    access = _speedtest_access(c, signer, quota)
    if st.enabled:
        # Agents' throughput and upload probes measure against the collector itself.
        app.mount(
            "/speedtest", SpeedtestEndpoint(access=access, max_upload_bytes=st.max_upload_bytes)
        )
    add_enrolment(app, c.registry)  # POST /api/v1/enroll (collector.enrol_api)

    upload_doc: dict[str, Any] = {
        "openapi_extra": {
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": ENVELOPE_SCHEMA}},
            },
            "security": [{"bearer": []}],
        },
        "responses": {
            200: {"description": "Per-record answer: accepted ids, rejected ids with reasons"},
            401: {"description": "Missing, unknown or revoked token"},
            403: {"description": "The envelope's station is outside the token's scope"},
            413: {"description": "Body or batch too large"},
            415: {"description": "Unsupported content encoding"},
            422: {"description": "Malformed envelope"},
            429: {"description": "The token's request or record rate is exceeded"},
            503: {"description": "Database unavailable: nothing acknowledged, retry later"},
        },
    }

    # Both routes only document: requests are answered by IngestRoute before routing.
    @app.post(
        STATION_ROUTE,
        summary="Upload a batch of records for one station",
        description="The station in the URL must be the envelope's station and every"
        " record's, and within the token's scope (else 403; a URL station that is not a"
        " station id: 404). A reverse proxy routes by it (deploy/nginx/collector.conf).",
        **upload_doc,
    )
    async def station_measurements(station: str, request: Request) -> Response:
        sid = route_station(request.url.path)
        if not sid:
            return Response(_BAD_STATION, 404, media_type="application/json")
        status, body, headers = await c.answer(Upload(request.scope, request.receive), sid)
        return Response(body, status, headers=headers, media_type="application/json")

    @app.post(
        LEGACY_PATH,
        summary="Upload a batch of records (deprecated)",
        description="Deprecated: use POST /api/v1/stations/{station}/measurements, which a"
        " proxy can route by station. Kept for one release; answers carry a Deprecation"
        " header.",
        deprecated=True,
        **upload_doc,
    )
    async def measurements(request: Request) -> Response:
        status, body, headers = await c.answer(Upload(request.scope, request.receive))
        return Response(
            body, status, headers={**headers, **LEGACY_HEADERS}, media_type="application/json"
        )

    @app.get(
        "/api/v1/speedtest/ticket",
        summary="A speedtest ticket for the caller's agent token",
        responses={401: {"description": "Missing, unknown or revoked token"}},
    )
    async def speedtest_ticket(request: Request) -> Response:
        try:
            scope = c.authenticate(request)
        except HttpError as exc:
            return _error_response(exc)
        ticket = signer.issue(scope.id)
        return JSONResponse(
            {
                "ticket": ticket.text,
                "path": f"t/{ticket.text}/",
                "expires_at": format_time(datetime.fromtimestamp(ticket.expires, UTC)),
                "remaining_bytes": quota.remaining(scope.id),
                "max_upload_bytes": st.max_upload_bytes,
            }
        )

    @app.get("/api/v1/speedtest/authorize", include_in_schema=False)
    async def speedtest_authorize(request: Request) -> Response:
        """nginx's auth_request for deploy/nginx/speedtest.conf: X-Original-URI,
        X-Original-Method and X-Original-Length describe the request to check; 204 lets
        it through, 401/403 refuse it (auth_request knows no other answers)."""
        h = request.headers
        path = h.get("x-original-uri", "").split("?", 1)[0]
        method = h.get("x-original-method", "GET").upper()
        length = h.get("x-original-length", "")
        try:
            key = access.key(path)
            if method == "POST":
                if not length.isdigit():
                    raise Refusal(403, "an upload needs a Content-Length", [])
                if int(length) > st.max_upload_bytes:
                    c.metrics.speedtest_refused.labels("too_large").inc()
                    raise Refusal(403, f"upload larger than {st.max_upload_bytes} bytes", [])
                access.charge(key, int(length))
            elif method == "GET":
                size = download_size(path.rsplit("/", 1)[-1])
                if size is not None:
                    access.charge(key, size)
        except Refusal as exc:
            return PlainTextResponse(exc.reason, 401 if exc.status == 401 else 403)
        return Response(status_code=204)

    @app.get("/api/v1/time", summary="The server's clock (UTC)")
    async def server_time() -> dict[str, Any]:
        now = datetime.now(UTC)
        return {"server_time": format_time(now), "unix_ns": time.time_ns()}

    @app.get("/healthz", summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: the database answers")
    async def readyz() -> Response:
        ok = await run_in_threadpool(c.sink.ping)
        return JSONResponse({"database": "ok" if ok else "unreachable"}, 200 if ok else 503)

    if cfg.reports.admin_token_file is not None:  # the report libraries load only when used
        from collector.report.web import add_report_routes

        add_report_routes(app, cfg, c.registry)

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        return PlainTextResponse(
            generate_latest(c.metrics.registry), media_type=CONTENT_TYPE_LATEST
        )

    return app
