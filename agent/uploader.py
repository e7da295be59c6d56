"""Store and forward: batches from the spool to the collector, deleting only what it acknowledged.

One batch at a time: up to `batch_size` records are read from the spool (undecoded), sent
gzip-compressed in one envelope, and then exactly the acknowledged ids are deleted and the
rejected ids moved to the dead-letter table with the collector's reason (never retried,
never silently dropped; `sinyal-agent status` lists them). Anything else stays in the spool.

Failures back off exponentially with full jitter (a random wait in [0, min(cap, base·2^n)]);
when the collector answered with a Retry-After (its database is down), the wait is between
Retry-After and twice that. When the collector did not answer at all, a successful probe
(the link is back) ends the wait early, so a station reports within a round of its link
returning instead of at the end of a wait grown during the outage. A 413 halves the batch;
a batch of one that is still refused as too large or malformed is dead-lettered so it cannot
block the queue.

Ordering: after start-up and after every failure, the first batch is the NEWEST records, so
the control room sees the station's current state as soon as the link is back; then the
backlog is sent oldest first.

Answers are read as from a stranger (agent.safehttp): at most 4 MiB, compressed or not,
within one deadline per request (6 x collector.timeout_s). An answer that is too large, too
slow, or not the collector's acknowledgement leaves the batch in the spool: only a
well-formed answer acknowledges or dead-letters anything, and what is stored of a rejection
reason is cut.

Time: with a TimeKeeper (agent.timekeeper), the collector's clock is read before uploading
whenever records of this boot wait for it, and every 10 minutes; records whose time is not
established yet are held back until it is.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import math
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from agent import safehttp
from agent.clock import boot_id
from agent.config import CollectorEndpoint
from agent.contract.record import encode_envelope_records, parse_time, printable
from agent.contract.version import AGENT_USER_AGENT, __version__
from agent.spool import Spool
from agent.timekeeper import TimeKeeper, plausible_ns
from agent.uploadstate import Tracker, classify_exception, classify_status

log = logging.getLogger("sinyal.uploader")

# Named by the station, so a reverse proxy can send every station to the same collector
# process (the station-less POST /api/v1/measurements is deprecated).
PATH = "/api/v1/stations/{station}/measurements"
TIME_PATH = "/api/v1/time"
CLOCK_SYNC_EVERY_S = 600.0
BATCH_SIZE = 500  # records per upload (a 413 halves it)


@dataclass
class Outcome:
    sent: int
    accepted: int = 0
    rejected: int = 0
    status: int | None = None  # HTTP status, None when no answer
    error: str | None = None
    retry_after_s: float | None = None
    kind: str | None = None  # agent.uploadstate kind of a failure

    @property
    def ok(self) -> bool:
        return self.status == 200


class Backoff:
    """Exponential backoff with full jitter (AWS architecture blog's "full jitter")."""

    def __init__(
        self, base_s: float = 1.0, cap_s: float = 300.0, rng: random.Random | None = None
    ) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self.failures = 0
        self.rng = rng or random.Random()

    def reset(self) -> None:
        self.failures = 0

    def next_delay(self, retry_after_s: float | None = None) -> float:
        """The wait before the next attempt.

        Without an answer from the collector: full jitter over an exponentially growing
        ceiling. With a Retry-After (the collector is up, its database is not): between
        Retry-After and twice that, so a fleet spreads out but comes back soon after the
        database does instead of sleeping for an exponential ceiling grown during the outage.
        """
        ceiling = min(self.cap_s, self.base_s * 2 ** min(self.failures, 30))
        self.failures += 1
        if retry_after_s is not None:
            return min(self.cap_s, self.rng.uniform(retry_after_s, 2 * retry_after_s))
        return self.rng.uniform(0, ceiling)


def envelope_bytes(station: str, bodies: list[str], boot: str | None = None) -> bytes:
    """The upload envelope around the spooled JSON bodies as they are. `boot` is the
    sender's boot id (default: this machine's; the fleet simulator gives each station its own)."""
    sent_at = datetime.now(UTC)
    return encode_envelope_records(
        station, __version__, sent_at, bodies, boot if boot is not None else boot_id()
    )


def upload_body(station: str, bodies: list[str], boot: str | None = None) -> bytes:
    """The request body of one upload: the envelope, gzip-compressed."""
    return gzip.compress(envelope_bytes(station, bodies, boot), 6)


def upload_path(station: str) -> str:
    """The upload URL's path for a station (its id is quoted, though the configuration
    only admits ids that need no quoting)."""
    return PATH.format(station=quote(station, safe=""))


def upload_headers(token: str) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json",
        "Content-Encoding": "gzip",
    }


class Uploader:
    def __init__(
        self,
        spool: Spool,
        collector: CollectorEndpoint,
        station: str,
        batch_size: int = BATCH_SIZE,
        backoff: Backoff | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        timekeeper: TimeKeeper | None = None,
    ) -> None:
        self.spool = spool
        self.timekeeper = timekeeper
        self.last_clock_sync = -math.inf
        self.link_back = asyncio.Event()  # set by the daemon when a probe succeeds
        self.collector = collector
        self.station = station
        self.path = upload_path(station)
        self.max_batch = batch_size
        self.batch_size = batch_size
        self.backoff = backoff or Backoff()
        self.freshest_next = True
        self.health = Tracker(spool)
        self.host = urlsplit(collector.url).hostname or collector.url
        self.clock_problem: tuple[str, str] | None = None  # last failed clock read
        self.deadline_s = collector.timeout_s * safehttp.DEADLINE_FACTOR
        verify: str | bool = str(collector.ca_bundle) if collector.ca_bundle else True
        self.client = httpx.AsyncClient(
            base_url=collector.url.rstrip("/"),
            timeout=collector.timeout_s,
            verify=verify,
            transport=transport,
            headers={"User-Agent": AGENT_USER_AGENT},
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    async def sync_clock(self) -> bool:
        """Read the collector's clock (GET /api/v1/time, no database involved, so the answer
        is quick): the offset of ours for the heartbeat, and for the TimeKeeper a reading
        against CLOCK_MONOTONIC. False when the collector did not answer, or answered with a
        time the agent refuses (not an integer, implausible, or going back): such an answer
        is neither used nor stored."""
        t0_mono, t0_wall = time.monotonic_ns(), time.time_ns()
        try:
            answer = await safehttp.request(
                self.client, "GET", TIME_PATH, deadline_s=self.deadline_s
            )
            t1_mono, t1_wall = time.monotonic_ns(), time.time_ns()
            if answer.status != 200:
                self.clock_problem = ("clock", f"HTTP {answer.status} from {TIME_PATH}")
                log.debug("collector clock not read: HTTP %s", answer.status)
                return False
            payload = json.loads(answer.body)
            server_ns = payload["unix_ns"] if isinstance(payload, dict) else None
        except httpx.HTTPError as exc:
            self.clock_problem = classify_exception(exc, self.host)
            log.debug("collector clock not read: %s", clip(str(exc)))
            return False
        except (safehttp.AnswerError, ValueError, RecursionError, KeyError) as exc:
            self.clock_problem = ("clock", f"unreadable answer from {TIME_PATH}: {clip(str(exc))}")
            log.debug("collector clock not read: %s", clip(str(exc)))
            return False
        if self.timekeeper is not None:
            refused = self.timekeeper.check(server_ns, t0_mono, t1_mono)
        elif not plausible_ns(server_ns):
            refused = f"implausible time {clip(repr(server_ns))}"
        else:
            refused = None
        if refused is not None:
            self.clock_problem = ("clock", f"the collector's time was refused: {refused}")
            log.warning("collector clock refused: %s", refused)
            return False
        assert isinstance(server_ns, int)
        self.clock_problem = None
        self.last_clock_sync = time.monotonic()
        offset_ms = (server_ns - (t0_wall + t1_wall) // 2) / 1e6
        rtt_ms = (t1_mono - t0_mono) / 1e6
        self.spool.set_state(clock_offset_ms=f"{offset_ms:.1f}", clock_rtt_ms=f"{rtt_ms:.1f}")
        if self.timekeeper is not None:
            await asyncio.to_thread(self.timekeeper.learn, server_ns, t0_mono, t1_mono)
        return True

    async def upload_once(self) -> Outcome | None:
        """Send one batch; None when the spool is empty (or holds only records that wait
        for the collector's clock)."""
        hold = None
        if self.timekeeper is not None:
            tk = self.timekeeper
            stale = time.monotonic() - self.last_clock_sync > CLOCK_SYNC_EVERY_S
            if stale or await asyncio.to_thread(tk.waiting):
                await self.sync_clock()
            await asyncio.to_thread(tk.settle)
            hold = tk.hold_boot()
        newest_first = self.freshest_next
        batch = await asyncio.to_thread(self.spool.batch_raw, self.batch_size, newest_first, hold)
        if not batch:
            await self._note_held(hold)
            return None
        ids = [rid for rid, _ in batch]
        body = upload_body(self.station, [b for _, b in batch])
        try:
            token = self.collector.read_token()
        except OSError as exc:
            reason = f"cannot read the token file {self.collector.token_file}: {exc.strerror}"
            return self._failed(Outcome(len(batch), error=reason, kind="token_file"))
        t_send = time.time()
        try:
            response = await safehttp.request(
                self.client,
                "POST",
                self.path,
                deadline_s=self.deadline_s,
                content=body,
                headers=upload_headers(token),
            )
        except httpx.HTTPError as exc:
            kind, reason = classify_exception(exc, self.host)
            log.debug("upload failed: %s: %s", type(exc).__name__, clip(str(exc)))
            return self._failed(Outcome(len(batch), error=reason, kind=kind))
        except safehttp.AnswerError as exc:
            why = clip(f"{type(exc).__name__}: {exc}")
            return self._failed(Outcome(len(batch), error=why, kind="other"))
        t_recv = time.time()
        status = response.status
        outcome = Outcome(len(batch), status=status)
        if status == 200:
            return await self._settle(response, ids, outcome, (t_send + t_recv) / 2)
        error = _collector_error(response)
        outcome.error = error or _error_text(response)
        if status in (413, 422) and error is None:
            # Not the collector's own refusal (a proxy's page, garbage): no record is at
            # fault that we know of, so nothing is dead-lettered; retry later.
            return self._failed(outcome)
        if status in (413, 422) and len(batch) > 1:
            # Too large or malformed: find the record at fault by halving the batch.
            self.batch_size = max(1, len(batch) // 2)
            return outcome
        if status in (413, 422):
            await asyncio.to_thread(
                self.spool.dead_letter, [(ids[0], f"http_{status}", outcome.error or "")]
            )
            outcome.rejected = 1
            self.batch_size = self.max_batch
            return outcome
        retry = response.headers.get("retry-after")
        if retry is not None and retry.strip().isdigit():
            outcome.retry_after_s = float(retry)
        outcome.kind, outcome.error = classify_status(
            status, outcome.error or "", outcome.retry_after_s
        )
        return self._failed(outcome)

    def _failed(self, outcome: Outcome) -> Outcome:
        self.freshest_next = True
        self.health.failure(outcome.kind or "other", outcome.error or f"HTTP {outcome.status}")
        return outcome

    async def _note_held(self, hold: str | None) -> None:
        """Nothing to send but records of this boot wait for a time: say why uploads stall."""
        if hold is None or self.timekeeper is None:
            return
        waiting = await asyncio.to_thread(self.spool.untimed, hold)
        if not waiting:
            return
        kind, why = self.clock_problem or ("clock", "the collector's clock was not read yet")
        if kind == "clock":
            why = (
                f"clock not synchronised: {waiting} record(s) wait for the collector's clock "
                f"({why})"
            )
        self.health.failure(kind, why)

    async def _settle(
        self, response: safehttp.Answer, ids: list[str], outcome: Outcome, local_mid: float
    ) -> Outcome:
        ack = _read_ack(response.body, ids)
        if ack is None:
            # Nothing in it can be trusted, so nothing is acknowledged nor dead-lettered:
            # the batch stays in the spool and goes again.
            outcome.status = None
            outcome.error = "unreadable answer from the collector (not its acknowledgement)"
            return self._failed(outcome)
        accepted, rejected, payload = ack
        known = set(ids)
        await asyncio.to_thread(self.spool.ack, [i for i in accepted if i in known])
        await asyncio.to_thread(self.spool.dead_letter, [r for r in rejected if r[0] in known])
        outcome.accepted, outcome.rejected = len(accepted), len(rejected)
        for rid, reason, detail in rejected:
            log.warning("collector rejected record %s: %s %s", rid, clip(reason), clip(detail))
        state: dict[str, str] = {}
        if self.timekeeper is None:  # else sync_clock keeps the offset
            server_time = payload.get("server_time")
            if isinstance(server_time, str):
                try:
                    server_ns = int(parse_time(server_time).timestamp() * 1e9)
                except (ValueError, OverflowError):
                    server_ns = None
                if plausible_ns(server_ns):
                    offset_ms = ((server_ns or 0) / 1e9 - local_mid) * 1000
                    state["clock_offset_ms"] = f"{offset_ms:.1f}"
        if state:
            self.spool.set_state(**state)
        timing = [r for r in rejected if r[1] in ("time_out_of_range", "time_unknown")]
        if timing:
            self.health.failure(
                "clock",
                f"clock not synchronised: the collector refused {len(timing)} record(s) "
                f"for their time ({timing[0][1]}); enable time sync (timedatectl set-ntp true)",
            )
        else:
            self.health.success()
        self.freshest_next = False
        self.backoff.reset()
        self.batch_size = self.max_batch
        return outcome

    async def run(self, stop: asyncio.Event, wake: asyncio.Event, idle_s: float = 30.0) -> None:
        """Upload until `stop`; `wake` is set when new records were spooled."""
        try:
            while not stop.is_set():
                outcome = await self.upload_once()
                if outcome is None:
                    wake.clear()
                    await _wait_any(stop, wake, idle_s)
                    continue
                if outcome.ok or (outcome.rejected and outcome.status in (413, 422)):
                    continue
                if outcome.status in (413, 422):
                    continue  # retry at once with the halved batch
                delay = self.backoff.next_delay(outcome.retry_after_s)
                # The change of state was logged once (agent.uploadstate); each retry is debug.
                log.debug(
                    "upload of %d record(s) failed (%s); retrying in %.1f s",
                    outcome.sent,
                    outcome.error or outcome.status,
                    delay,
                )
                # Without an answer from the collector, a probe that reaches its target
                # again (link_back) is a sign the link is back: retry then rather than at
                # the end of a wait that grew during a long outage. A Retry-After (the
                # collector answered; its database is down) is always waited out.
                self.link_back.clear()
                early = self.link_back if outcome.status is None else None
                await _wait_any(stop, early, delay)
        finally:
            await self.aclose()


async def _wait_any(stop: asyncio.Event, other: asyncio.Event | None, timeout: float) -> None:
    waiters = [asyncio.ensure_future(stop.wait())]
    if other is not None:
        waiters.append(asyncio.ensure_future(other.wait()))
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


def clip(text: str, limit: int = 300) -> str:
    """A collector-supplied text for a log line or the spool's state: cut, and with control,
    bidi and zero-width characters shown escaped (one line, nothing a terminal acts on)."""
    cut = text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"
    return printable(cut)


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


def _collector_error(response: safehttp.Answer) -> str | None:
    """The collector's own error text ({"error": "..."}), or None when the answer is not one."""
    data = _json(response.body)
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return clip(f"HTTP {response.status}: {data['error']}")
    return None


def _error_text(response: safehttp.Answer) -> str:
    text = response.body[:200].decode("utf-8", "replace")
    return clip(_collector_error(response) or f"HTTP {response.status}: {text}")


def _read_ack(
    body: bytes, ids: list[str]
) -> tuple[list[str], list[tuple[str, str, str]], dict[str, Any]] | None:
    """The acknowledgement in a 200 answer: accepted ids, rejected (id, reason, detail), the
    whole document; None when it is not one (then nothing in it is acted on)."""
    payload = _json(body)
    if not isinstance(payload, dict):
        return None
    accepted_raw, rejected_raw = payload.get("accepted", []), payload.get("rejected", [])
    if not isinstance(accepted_raw, list) or not isinstance(rejected_raw, list):
        return None
    if not all(isinstance(i, str) for i in accepted_raw):
        return None
    rejected: list[tuple[str, str, str]] = []
    for item in rejected_raw:
        if not isinstance(item, dict):
            return None
        rid, index = item.get("id"), item.get("index")
        if rid is None and isinstance(index, int) and 0 <= index < len(ids):
            rid = ids[index]
        reason, detail = item.get("reason", ""), item.get("detail", "")
        if not isinstance(rid, str) or not isinstance(reason, str) or not isinstance(detail, str):
            return None
        rejected.append((rid, reason, detail))
    if set(accepted_raw) & {r[0] for r in rejected}:
        return None  # the same id both accepted and rejected: not a real acknowledgement
    return [str(i) for i in accepted_raw], rejected, payload
