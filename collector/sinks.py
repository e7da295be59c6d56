"""Where points go: one Sink interface, two implementations chosen by SinkConfig.kind.

- ``v1`` (V1Sink): line protocol POSTed to ``/write?db=`` (aiohttp from the event loop, httpx
  otherwise). Every InfluxDB 1.x (including Debian's 1.6.7), and the v1 compatibility
  endpoint of 2.x and 3.x.
- ``v2`` (V2Sink): influxdb-client's synchronous write API on ``/api/v2/write``. InfluxDB
  1.8+, 2.x, 3.x and VictoriaMetrics. Not InfluxDB < 1.8 (it answers 404).

Both return from ``write`` only after the database confirmed, so the API can acknowledge
exactly what is stored; nothing is buffered here. A database that is down, slow, failing
(5xx, 429) or refusing our credentials raises SinkUnavailable (the API answers 503 and the
agents keep their records). A database that refuses some lines (HTTP 400/422: type conflict,
parse error, beyond retention, too many tag values) gets those lines identified exactly:

  The batch is re-written in halves until every refused line stands alone (bisection).
  Writes are idempotent (series + timestamp identify a point, a rewrite overwrites it),
  so re-sending lines that were already stored is harmless. Two short cuts: lines that
  InfluxDB 1.x names in ``unable to parse '<line>': <why>`` are taken out at once, and a
  group of more than a few lines whose ``partial write ... dropped=N`` says all N were
  dropped is refused as a whole, with that message as every line's reason. Before bisecting,
  the lines are grouped by measurement (stable), since conflicts are per measurement.

``WriteResult.rejected`` maps the index of each refused line to the database's reason; every
other line is confirmed written. Lines the database would silently ignore (empty lines,
``#`` comments) and lines containing a newline are refused here, never sent.

``query_influxql`` runs InfluxQL on ``/query``: InfluxDB 1.x, and 2.x/3.x through their v1
compatibility API. VictoriaMetrics has no InfluxQL.
"""

from __future__ import annotations

import base64
import gzip
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast
from urllib.parse import urlencode, urlsplit, urlunsplit

import aiohttp
import httpx
import urllib3.exceptions
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.domain.write_precision import WritePrecision
from influxdb_client.rest import ApiException
from starlette.concurrency import run_in_threadpool

from agent.contract.version import COLLECTOR_USER_AGENT
from collector.config import SinkConfig

log = logging.getLogger(__name__)

# Bodies at least this large are gzipped (InfluxDB 1.x, 2.x, 3.x and VictoriaMetrics accept
# Content-Encoding: gzip). Level 1: nearly level 6's ratio on line protocol at half the CPU;
# the database's link is rarely the bottleneck, the collector's CPU is.
GZIP_MIN_BYTES = 16 * 1024
GZIP_LEVEL = 1

# A group of refused lines at most this large is bisected down to single lines, so each
# gets its own reason; a larger group whose every point was dropped is refused as a whole.
EXACT_REASONS_UP_TO = 8

_DROPPED_RE = re.compile(r"dropped=(\d+)")
# The database's own capacity limits (InfluxDB 1.x max-series-per-database and
# max-values-per-tag; cardinality limits of 2.x/3.x): not the lines' fault, and another
# station's valid records must not be refused for good because of them. Such a refusal is
# the database being unavailable: the API answers 503 and the agents keep their records.
_CAPACITY_RE = re.compile(
    r"max-series-per-database limit exceeded|max-values-per-tag limit exceeded|"
    r"series cardinality limit|cardinality limit exceeded",
    re.IGNORECASE,
)
_PARSE_PREFIX = "unable to parse '"
_PARSE_SEP = "': "


class SinkUnavailable(Exception):
    """The database cannot take writes now (down, timing out, 5xx, auth refused).

    The API answers 503 with Retry-After: retry_after_s; the agents keep their records.
    """

    def __init__(self, message: str, retry_after_s: int = 10) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class QueryError(Exception):
    """The database refused an InfluxQL statement (its message says why)."""


@dataclass
class WriteResult:
    """rejected: index into the lines passed -> the database's reason. Every other line is
    confirmed written. requests: HTTP requests the write took (1 unless lines were refused)."""

    rejected: dict[int, str] = field(default_factory=dict)
    requests: int = 0


class Sink(Protocol):
    def write(self, lines: Sequence[str]) -> WriteResult:
        """Write lines of line protocol; return once the database confirmed.

        Raises SinkUnavailable. Safe to call from several threads."""
        ...

    async def write_async(self, lines: Sequence[str]) -> WriteResult:
        """write() for the event loop (the ingest API's path): the same contract."""
        ...

    async def aclose(self) -> None:
        """Release what write_async() holds (connections); close() still follows."""
        ...

    def ping(self) -> bool:
        """True when the database answers (for /readyz)."""
        ...

    def close(self) -> None: ...


def make_sink(cfg: SinkConfig) -> Sink:
    sinks: dict[str, Callable[[SinkConfig], Sink]] = {"v1": V1Sink, "v2": V2Sink}
    try:
        return sinks[cfg.kind](cfg)
    except KeyError:
        raise ValueError(f"sink.kind: got {cfg.kind!r}, expected v1 or v2") from None


# --- shared: classifying answers, resolving refused lines -----------------------------------


@dataclass(frozen=True)
class _Refused:
    """The database refused (some of) a batch; nothing says which lines were stored."""

    reason: str
    dropped: int | None = None  # "dropped=N" of a 1.x/2.x partial write
    too_large: bool = False  # 413: split, don't blame a line unless it is alone


class _Throttle:
    """True at most once per interval per key: one log line a minute, not one per request."""

    def __init__(self, interval_s: float = 60.0) -> None:
        self._interval = interval_s
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def __call__(self, key: str) -> bool:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._interval:
                return False
            self._last[key] = now
            return True


_log_throttle = _Throttle()


def _redact(url: str) -> str:
    """The URL without user:password@ (it may carry credentials)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


def _error_text(body: bytes | str | None, header: str | None, fallback: str) -> str:
    """The database's error message: JSON {"error"} (1.x, 3.x) or {"message"} (2.x)."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else (body or "")
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        for key in ("error", "message"):
            if isinstance(doc.get(key), str) and doc[key]:
                message = str(doc[key])
                # InfluxDB 3 lists the refused lines: {"data": [{"error_message": ...}]}
                data = doc.get("data")
                if isinstance(data, list):
                    why = [
                        str(d["error_message"])
                        for d in data[:3]
                        if isinstance(d, dict) and d.get("error_message")
                    ]
                    if why:
                        message += ": " + "; ".join(why)
                return message
    if header:
        return header
    return text.strip()[:500] or fallback


def _one_line(text: str) -> str:
    return text.replace("\r", "").replace("\n", " | ")


def _classify(
    status: int, message: str, where: str, cfg: SinkConfig, retry_after: str | None = None
) -> _Refused | None:
    """None for 2xx, _Refused for a refusal of lines; raises SinkUnavailable otherwise."""
    if 200 <= status < 300:
        return None
    if status in (400, 422) and _CAPACITY_RE.search(message):
        if _log_throttle(f"capacity {where}"):
            log.error(
                "sink: %s is full (%s); nothing refused, agents keep their records: raise the "
                "database's limit or lower limits.max_series_per_station (docs/security.md)",
                where,
                _one_line(message)[:300],
            )
        raise SinkUnavailable(f"{where} is at its series limit: {message[:300]}", cfg.retry_after_s)
    if status in (400, 422):
        m = _DROPPED_RE.search(message)
        return _Refused(message, int(m.group(1)) if m else None)
    if status == 413:
        return _Refused(message, too_large=True)
    retry = cfg.retry_after_s
    if retry_after and retry_after.strip().isdigit():
        retry = max(retry, min(int(retry_after), 3600))
    if status in (401, 403):
        if _log_throttle(f"auth {where}"):
            log.error(
                "sink: %s refused our credentials (HTTP %d: %s); check sink.username/"
                "sink.password or sink.token; agents keep their data meanwhile",
                where,
                status,
                _one_line(message),
            )
        raise SinkUnavailable(f"{where} refused the credentials (HTTP {status}: {message})", retry)
    raise SinkUnavailable(f"{where} answered HTTP {status}: {message}", retry)


def _named_lines(message: str, group: Sequence[int], lines: Sequence[str]) -> dict[int, str]:
    """Lines that InfluxDB 1.x names in ``unable to parse '<line>': <why>`` (one per line of
    the message). Empty unless every entry maps to a line of the group."""
    if not message.startswith(_PARSE_PREFIX):
        return {}
    by_text: dict[str, list[int]] = {}
    for i in group:
        by_text.setdefault(lines[i], []).append(i)
    named: dict[int, str] = {}
    for entry in message.split("\n"):
        if not entry.startswith(_PARSE_PREFIX):
            return {}
        rest = entry[len(_PARSE_PREFIX) :]
        pos = rest.find(_PARSE_SEP)
        while pos != -1 and rest[:pos] not in by_text:
            pos = rest.find(_PARSE_SEP, pos + 1)
        if pos == -1:
            return {}
        for i in by_text[rest[:pos]]:
            named[i] = entry
    return named


def _measurement_of(line: str) -> str:
    """The (escaped) measurement: up to the first unescaped comma or space."""
    i = 0
    while i < len(line):
        c = line[i]
        if c == "\\":
            i += 2
            continue
        if c in ", ":
            break
        i += 1
    return line[:i]


def _log_refused(result: WriteResult, total: int, where: str, key: str) -> None:
    """One throttled warning per kind of sink when the database refused lines."""
    if result.rejected and _log_throttle(key):
        first = min(result.rejected)
        log.warning(
            "sink: %s refused %d of %d lines, e.g. line %d: %s",
            where,
            len(result.rejected),
            total,
            first,
            _one_line(result.rejected[first]),
        )


def _write_resolving(
    lines: Sequence[str], post: Callable[[list[str]], _Refused | None]
) -> WriteResult:
    """Write all lines with `post`; find exactly which ones the database refuses (see the
    module docstring). `post` raises SinkUnavailable, which ends the write."""
    result = WriteResult()
    todo: list[int] = []
    for i, line in enumerate(lines):
        if "\n" in line:
            result.rejected[i] = "line contains a newline: it would be several points"
        elif not line.strip():
            result.rejected[i] = "empty line: the database would ignore it"
        elif line.startswith("#"):
            result.rejected[i] = "comment line: the database would ignore it"
        else:
            todo.append(i)
    if not todo:
        return result
    result.requests += 1
    refused = post([lines[i] for i in todo])
    if refused is None:
        return result
    todo.sort(key=lambda i: _measurement_of(lines[i]))  # stable: order kept per measurement
    to_post: list[list[int]] = []

    def refused_group(group: list[int], refused: _Refused) -> None:
        if len(group) == 1:
            result.rejected[group[0]] = refused.reason
            return
        named = {} if refused.too_large else _named_lines(refused.reason, group, lines)
        if named:
            result.rejected.update(named)
            rest = [i for i in group if i not in named]
            if rest:
                to_post.append(rest)
            return
        if (
            not refused.too_large
            and refused.dropped == len(group)
            and len(group) > EXACT_REASONS_UP_TO
        ):
            for i in group:
                result.rejected[i] = refused.reason
            return
        mid = len(group) // 2
        to_post.append(group[mid:])
        to_post.append(group[:mid])  # popped first: lines go in order, as in one batch

    refused_group(todo, refused)
    while to_post:  # bounded: every group posted is smaller than the one it came from
        group = to_post.pop()
        result.requests += 1
        answer = post([lines[i] for i in group])
        if answer is not None:
            refused_group(group, answer)
    return result


# --- v1: POST /write -----------------------------------------------------------------------


def _auth_headers(cfg: SinkConfig) -> dict[str, str]:
    """Basic for username/password (1.x; no secret in a URL or an access log), the
    ``Token`` header for a token (2.x and 3.x v1 endpoints). One header for both clients
    (httpx and the event loop's aiohttp), built as httpx.BasicAuth builds it (UTF-8)."""
    if cfg.token:
        return {"Authorization": f"Token {cfg.token}"}
    if cfg.username is not None and cfg.password is not None:
        pair = base64.b64encode(f"{cfg.username}:{cfg.password}".encode()).decode()
        return {"Authorization": f"Basic {pair}"}
    return {}


def _http_client(cfg: SinkConfig) -> httpx.Client:
    return httpx.Client(
        base_url=cfg.url,
        headers={"User-Agent": COLLECTOR_USER_AGENT, **_auth_headers(cfg)},
        timeout=httpx.Timeout(cfg.timeout_s),
        trust_env=False,  # no proxy or netrc from the environment: the config says where
    )


def _influxql_ident(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


class V1Sink:
    """Line protocol to ``{url}/write?db=&rp=&precision=ns``, keep-alive, gzip when large.

    A missing database (404 ``database not found``) is created once with CREATE DATABASE
    and the write retried, as telegraf does: the config names the database, and a fresh
    InfluxDB should not need a manual step before election day. Without the privilege to
    create it, the write fails as SinkUnavailable with the database's reason. A missing
    retention policy is never created (its duration is an operator's decision).
    """

    def __init__(self, cfg: SinkConfig) -> None:
        self.cfg = cfg
        self._where = f"InfluxDB at {_redact(cfg.url)}"
        self._client = _http_client(cfg)
        self._session: aiohttp.ClientSession | None = None  # the event loop's client
        self._params = {"db": cfg.database, "precision": "ns"}
        if cfg.retention_policy:
            self._params["rp"] = cfg.retention_policy
        self._write_url = f"{cfg.url.rstrip('/')}/write?{urlencode(self._params)}"

    def _body(self, batch: Sequence[str]) -> tuple[bytes, dict[str, str]]:
        body = "\n".join(batch).encode("utf-8")
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if self.cfg.compress and len(body) >= GZIP_MIN_BYTES:
            body = gzip.compress(body, compresslevel=GZIP_LEVEL)
            headers["Content-Encoding"] = "gzip"
        return body, headers

    async def write_async(self, lines: Sequence[str]) -> WriteResult:
        """write() for an event loop. The common case, one POST that the database accepts
        whole, runs in the loop itself (no thread hand-off, no GIL ping-pong between the
        loop and a worker); anything else (lines refused and to be told apart, a database
        to create, lines that cannot be sent) is handed to write() in a worker thread.

        The loop's client is aiohttp: on a 400-line write it costs about 0.4 ms of CPU a
        request here against 1.7 ms for httpx's AsyncClient, and at election-day rates
        that difference is a fifth of the collector's CPU."""
        if any("\n" in line or not line.strip() or line.startswith("#") for line in lines):
            return await run_in_threadpool(self.write, lines)
        if self._session is None:
            self._session = self._new_session()
        body, headers = self._body(lines)
        try:
            async with self._session.post(self._write_url, data=body, headers=headers) as r:
                content = await r.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise self._unavailable(exc) from None
        if 200 <= r.status < 300:
            return WriteResult(requests=1)
        message = _error_text(content, r.headers.get("X-Influxdb-Error"), r.reason or "")
        if not (r.status == 404 and "database not found" in message):
            # Raises SinkUnavailable (down, 5xx, credentials) unless lines were refused.
            _classify(r.status, message, self._where, self.cfg, r.headers.get("Retry-After"))
        return await run_in_threadpool(self.write, lines)

    def _new_session(self) -> aiohttp.ClientSession:
        """Made in the event loop that uses it (aiohttp binds a session to its loop)."""
        return aiohttp.ClientSession(
            headers={"User-Agent": COLLECTOR_USER_AGENT, **_auth_headers(self.cfg)},
            timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_s),
            trust_env=False,  # no proxy or netrc from the environment: the config says where
            auto_decompress=False,
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def write(self, lines: Sequence[str]) -> WriteResult:
        created = False

        def post(batch: list[str]) -> _Refused | None:
            nonlocal created
            body, headers = self._body(batch)
            for _attempt in range(2):  # the second only after creating the database
                r = self._request(
                    "POST", "/write", params=self._params, content=body, headers=headers
                )
                message = _error_text(r.content, r.headers.get("X-Influxdb-Error"), r.reason_phrase)
                if r.status_code == 404 and "database not found" in message and not created:
                    created = True
                    self._create_database()
                    continue
                return _classify(
                    r.status_code, message, self._where, self.cfg, r.headers.get("Retry-After")
                )
            raise SinkUnavailable(
                f"{self._where}: database {self.cfg.database!r} still missing",
                self.cfg.retry_after_s,
            )

        result = _write_resolving(lines, post)
        _log_refused(result, len(lines), self._where, "rejected v1")
        return result

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            return self._client.request(method, path, **kw)
        except (httpx.HTTPError, OSError) as exc:
            raise self._unavailable(exc) from None

    def _unavailable(self, exc: Exception) -> SinkUnavailable:
        if isinstance(exc, httpx.TimeoutException | TimeoutError):
            return SinkUnavailable(
                f"{self._where} did not answer within {self.cfg.timeout_s:g} s",
                self.cfg.retry_after_s,
            )
        return SinkUnavailable(
            f"{self._where} unreachable: {type(exc).__name__}: {exc}", self.cfg.retry_after_s
        )

    def _create_database(self) -> None:
        q = f"CREATE DATABASE {_influxql_ident(self.cfg.database)}"
        r = self._request("POST", "/query", data={"q": q})
        message = _error_text(r.content, r.headers.get("X-Influxdb-Error"), r.reason_phrase)
        if r.status_code == 200:
            try:
                results = r.json().get("results", [])
            except ValueError:
                results = []
            errors = [x["error"] for x in results if isinstance(x, dict) and x.get("error")]
            if not errors:
                log.warning("sink: created database %r on %s", self.cfg.database, self._where)
                return
            message = "; ".join(str(e) for e in errors)
        if r.status_code in (401, 403) or r.status_code == 200:
            if _log_throttle("create v1"):
                log.error(
                    "sink: database %r does not exist on %s and creating it failed: %s",
                    self.cfg.database,
                    self._where,
                    _one_line(message),
                )
            raise SinkUnavailable(
                f"{self._where}: database {self.cfg.database!r} does not exist and "
                f"CREATE DATABASE failed: {message}",
                self.cfg.retry_after_s,
            )
        _classify(r.status_code, message, self._where, self.cfg)
        raise SinkUnavailable(f"{self._where}: CREATE DATABASE answered HTTP {r.status_code}")

    def ping(self) -> bool:
        try:
            r = self._client.get("/ping")
        except (httpx.HTTPError, OSError):
            return False
        return 200 <= r.status_code < 300

    def close(self) -> None:
        self._client.close()


# --- v2: influxdb-client's synchronous write API ----------------------------------------------


class V2Sink:
    """influxdb-client, SYNCHRONOUS write API, to bucket ``cfg.v2_bucket`` at ns precision.

    Never its batching mode (its flush() is a no-op in 1.50: data would sit in memory
    unacknowledged), and no client retries (``retries=False``, which the synchronous API
    then uses for every request): the agents' spools are the retry buffer.
    Auth: ``Token <token>``, or ``Token user:password`` (InfluxDB 1.8's v2 API convention;
    the client's own username/password mode is a 2.x session sign-in, which 1.8, 3.x and
    VictoriaMetrics lack). VictoriaMetrics ignores auth.

    VictoriaMetrics answers 204 to a batch with malformed lines and skips them (it only logs
    them), so against it `rejected` stays empty; InfluxDB 2.x/3.x report them as 400/422.
    """

    def __init__(self, cfg: SinkConfig) -> None:
        self.cfg = cfg
        self._where = f"database at {_redact(cfg.url)} (v2 API)"
        token = cfg.token
        if token is None and cfg.username is not None and cfg.password is not None:
            token = f"{cfg.username}:{cfg.password}"
        self._client = InfluxDBClient(
            url=cfg.url,
            token=token or "",  # empty: no Authorization header
            org=cfg.org,
            timeout=max(1, round(cfg.timeout_s * 1000)),
            enable_gzip=cfg.compress,
            retries=False,
        )
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)

    async def write_async(self, lines: Sequence[str]) -> WriteResult:
        # influxdb-client's write API blocks: a worker thread, as the ingest API did for it
        return await run_in_threadpool(self.write, lines)

    async def aclose(self) -> None:
        return None  # the client is closed by close()

    def write(self, lines: Sequence[str]) -> WriteResult:
        result = _write_resolving(lines, self._post)
        _log_refused(result, len(lines), self._where, "rejected v2")
        return result

    def _post(self, batch: list[str]) -> _Refused | None:
        try:
            self._write_api.write(
                bucket=self.cfg.v2_bucket,
                org=self.cfg.org,
                record=batch,
                write_precision=cast(WritePrecision, WritePrecision.NS),
            )
        except ApiException as exc:
            status = int(exc.status or 0)
            headers: Any = exc.headers or {}
            message = _error_text(exc.body, headers.get("X-Influxdb-Error"), str(exc.reason))
            if status == 404:
                raise SinkUnavailable(
                    f"{self._where} answered 404 ({message}): the bucket "
                    f"{self.cfg.v2_bucket!r} does not exist, or the server has no "
                    "/api/v2/write (InfluxDB before 1.8: use sink kind v1)",
                    self.cfg.retry_after_s,
                ) from None
            return _classify(status, message, self._where, self.cfg, headers.get("Retry-After"))
        except urllib3.exceptions.NewConnectionError as exc:  # a ConnectTimeoutError subclass
            raise SinkUnavailable(
                f"{self._where} unreachable: {type(exc).__name__}", self.cfg.retry_after_s
            ) from None
        except (urllib3.exceptions.TimeoutError, TimeoutError):
            raise SinkUnavailable(
                f"{self._where} did not answer within {self.cfg.timeout_s:g} s",
                self.cfg.retry_after_s,
            ) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise SinkUnavailable(
                f"{self._where} unreachable: {type(exc).__name__}", self.cfg.retry_after_s
            ) from None
        return None

    def ping(self) -> bool:
        return bool(self._client.ping())

    def close(self) -> None:
        self._write_api.close()  # type: ignore[no-untyped-call]
        self._client.close()  # type: ignore[no-untyped-call]


# --- InfluxQL ------------------------------------------------------------------------------


def query_influxql(
    cfg: SinkConfig,
    q: str,
    *,
    database: str | None = None,
    epoch: str | None = "ns",
    client: httpx.Client | None = None,
) -> list[dict[str, Any]]:
    """Run InfluxQL on ``{url}/query`` (POST) and return one dict per row.

    Only for servers that speak InfluxQL: InfluxDB 1.x, and 2.x/3.x through their v1 API
    (same auth as the v1 sink). Not VictoriaMetrics. Each row maps column -> value, plus the
    series' tags when the query groups by tag, plus ``_series``: the series name (the
    measurement for SELECT). Times are integers in `epoch` units (ns by default: exact), or
    RFC 3339 strings when epoch is None. Several statements: their rows in order.
    Raises QueryError when the database refuses a statement, SinkUnavailable when it is
    unreachable, failing or refusing the credentials. Pass `client` (from the same config)
    to reuse connections.
    """
    params: dict[str, str] = {"db": database or cfg.database}
    if cfg.retention_policy:
        params["rp"] = cfg.retention_policy
    if epoch:
        params["epoch"] = epoch
    where = f"InfluxDB at {_redact(cfg.url)}"
    own = client is None
    c = _http_client(cfg) if client is None else client
    try:
        r = c.post("/query", params=params, data={"q": q})
    except httpx.TimeoutException:
        raise SinkUnavailable(
            f"{where} did not answer within {cfg.timeout_s:g} s", cfg.retry_after_s
        ) from None
    except (httpx.HTTPError, OSError) as exc:
        raise SinkUnavailable(
            f"{where} unreachable: {type(exc).__name__}: {exc}", cfg.retry_after_s
        ) from None
    finally:
        if own:
            c.close()
    message = _error_text(r.content, r.headers.get("X-Influxdb-Error"), r.reason_phrase)
    if r.status_code == 400:
        raise QueryError(message)
    if _classify(r.status_code, message, where, cfg) is not None:
        raise QueryError(message)  # another 4xx that names a statement problem
    try:
        doc = r.json()
    except ValueError:
        raise QueryError(f"{where}: the answer is not JSON") from None
    rows: list[dict[str, Any]] = []
    for res in doc.get("results") or []:
        if res.get("error"):
            raise QueryError(str(res["error"]))
        for series in res.get("series") or []:
            tags = series.get("tags") or {}
            columns = series.get("columns") or []
            for values in series.get("values") or []:
                row: dict[str, Any] = {"_series": series.get("name")}
                row.update(tags)
                row.update(zip(columns, values, strict=False))
                rows.append(row)
    return rows
