"""Wires config, probes, scheduler and spool together for `once` and `run`."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from agent.config import AgentConfig
from agent.contract.record import Record
from agent.heartbeat import Heartbeat
from agent.preflight import Check, exposure_checks, icmp_mode
from agent.probes import ProbeEnv, build_probes
from agent.scheduler import Scheduler
from agent.spool import Spool, SpoolFullError
from agent.timekeeper import TimeKeeper

if TYPE_CHECKING:
    from agent.uploader import Uploader

log = logging.getLogger("sinyal.agent")


class PreflightError(Exception):
    """The environment cannot run the configured probes; `check.fix` says what to do."""

    def __init__(self, check: Check) -> None:
        super().__init__(f"{check.name}: {check.detail}")
        self.check = check


def build_env(config: AgentConfig) -> ProbeEnv:
    """Decide once how probes run here (ICMP raw or unprivileged); fail with the fix."""
    privileged = False
    if config.probes.icmp is not None and config.probes.icmp.enabled:
        mode, check = icmp_mode()
        if mode is None:
            raise PreflightError(check)
        privileged = mode
    return ProbeEnv(config, icmp_privileged=privileged)


def open_spool(config: AgentConfig) -> Spool:
    return Spool.in_dir(config.data_dir, int(config.spool.max_mb * 2**20))


def store(spool: Spool, records: Sequence[Record], record_log: str | None = None) -> None:
    """Spool records; a full disk is logged, never a crash. With record_log, also append
    each record as a JSON line to that file (an audit copy of what the agent measured)."""
    if record_log is not None:
        try:
            with open(record_log, "a", encoding="utf-8") as f:
                f.writelines(r.to_json() + "\n" for r in records)
        except OSError as exc:
            log.error("record log %s: %s", record_log, exc)
    try:
        evicted = spool.put(records)
    except SpoolFullError as exc:
        spool.lost_total += len(records)
        log.error("%s; %d record(s) lost (%d so far)", exc, len(records), spool.lost_total)
        return
    except (OSError, sqlite3.Error) as exc:
        # A disk gone read-only or failing under a running agent: say so on one line and
        # keep measuring; the records of this round are lost and counted.
        spool.lost_total += len(records)
        log.error(
            "spool %s cannot be written (%s): %d record(s) lost (%d so far); check the disk "
            "(read-only or failing?) under data_dir",
            spool.path,
            exc,
            len(records),
            spool.lost_total,
        )
        return
    if evicted:
        log.warning(
            "spool at its cap (%s MB): evicted %d oldest record(s)",
            spool.max_bytes / 2**20,
            evicted,
        )


async def run_once(env: ProbeEnv, spool: Spool | None) -> list[Record]:
    """Every configured probe once: shared probes together, then exclusive ones alone."""
    probes = build_probes(env)
    shared = [p for p in probes if not p.exclusive]
    results: list[Record] = []
    for batch in await asyncio.gather(*(p.run() for p in shared)):
        results.extend(batch)
    for p in probes:
        if p.exclusive:
            results.extend(await p.run())
    results = TimeKeeper(spool, env.config.clock.trust).stamp(results)
    if spool is not None:
        await asyncio.to_thread(store, spool, results)
    return results


class Daemon:
    """The long-running agent: scheduled probes, every record spooled first, then shown
    and (with a collector configured) uploaded."""

    def __init__(
        self,
        env: ProbeEnv,
        spool: Spool,
        show: Callable[[Sequence[Record]], None],
        record_log: str | None = None,
    ) -> None:
        self.env = env
        self.spool = spool
        self.show = show
        self.record_log = record_log
        self.wake = asyncio.Event()  # new records for the uploader
        cfg = env.config
        self.timekeeper = TimeKeeper(spool, cfg.clock.trust)
        self.uploader: Uploader | None = None
        self.scheduler = Scheduler(
            cfg.station.id,
            [*build_probes(env), Heartbeat(cfg.station.id, spool)],
            self.on_records,
            cfg.schedule.jitter_fraction,
            cfg.schedule.max_jitter_s,
        )

    async def on_records(self, records: list[Record]) -> None:
        records = self.timekeeper.stamp(records)
        # Off the event loop: fsync must not delay the timing of running probes.
        await asyncio.to_thread(store, self.spool, records, self.record_log)
        self.wake.set()
        if self.uploader is not None and any(
            r.kind != "agent" and r.error is None and r.fields.get("ok", 1) == 1 for r in records
        ):
            self.uploader.link_back.set()
        self.show(records)

    async def run(self, stop: asyncio.Event) -> None:
        for check in exposure_checks(self.env.config):  # at each start, as the config says
            log.warning("%s: %s; fix: %s", check.name, check.detail, check.fix)
        collector = self.env.config.collector
        if collector is None:
            await self.scheduler.run(stop)
            return
        from agent.uploader import Uploader  # httpx is imported by the HTTP probe anyway

        uploader = self.uploader = Uploader(
            self.spool, collector, self.env.config.station.id, timekeeper=self.timekeeper
        )
        await asyncio.gather(self.scheduler.run(stop), uploader.run(stop, self.wake))
