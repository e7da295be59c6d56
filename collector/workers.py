"""`sinyal-collector serve --workers N`: N collector processes on one host, each on its own
port, so a reverse proxy can route every station to the same one (deploy/nginx/collector.conf
hashes the station of POST /api/v1/stations/{station}/measurements over them).

The parent binds every port first (a port in use stops it before any worker starts: exit 4),
then forks one worker per port. A worker is a whole collector (collector.server.serve) with
its own shard id (`<shard.id or hostname>:<port>`); the parent serves nothing itself.

Signals: SIGTERM, SIGINT and SIGHUP to the parent are passed to every worker as SIGTERM (the
workers are in their own process group, so a Ctrl-C reaches them once, through the parent);
the parent exits when they have stopped (SIGKILL after STOP_GRACE_S).

A worker that dies while serving is restarted on the same port, with a warning naming it and
how it ended, after RESTART_DELAY_S (doubling while it keeps dying within STARTED_S of its
start, up to MAX_RESTART_DELAY_S). Its port stays closed meanwhile, so the proxy sends its
stations to the next process and they come back once it serves again. A worker that dies
before it first served (a configuration that only fails at start) stops the whole service:
the parent stops the others and exits 1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType

from agent.contract.record import printable
from collector.config import CollectorConfig, ShardConfig
from collector.connguard import effective_connection_cap, raise_file_limit
from collector.server import ListenError, bind, serve

log = logging.getLogger("sinyal.collector")

STARTED_S = 5.0  # a worker that dies sooner after its start has its restart delayed more
RESTART_DELAY_S = 1.0
MAX_RESTART_DELAY_S = 30.0
STOP_GRACE_S = 30.0  # after SIGTERM, before SIGKILL
POLL_S = 0.1
MAX_WORKERS = 64
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class StartError(Exception):
    """A worker died while starting: the service cannot run as configured."""


def worker_ports(base: int, workers: int, ports: str | None) -> list[int]:
    """The ports of the workers: `ports` (comma-separated) when given, else base ..
    base + workers - 1. Raises ValueError with the one line to show."""
    if ports is not None:
        try:
            given = [int(p) for p in ports.split(",")]
        except ValueError:
            given = []
        if not given or any(not 1 <= p <= 65535 for p in given) or len(set(given)) < len(given):
            raise ValueError(
                f"--ports: got {printable(ports)!r}, expected distinct ports 1..65535 separated"
                " by commas, such as 8081,8082"
            )
        return given
    if not 1 <= workers <= MAX_WORKERS:
        raise ValueError(f"--workers: got {workers}, expected 1..{MAX_WORKERS} processes")
    if base + workers - 1 > 65535:
        raise ValueError(
            f"--workers: got {workers} from listen.port {base}, expected ports up to 65535"
        )
    return [base + i for i in range(workers)]


def worker_config(cfg: CollectorConfig, port: int) -> CollectorConfig:
    """One worker's configuration: its port, and its shard id (`shard.id:port` when the
    config names the node, else hostname:port)."""
    listen = dataclasses.replace(cfg.listen, port=port)
    shard = ShardConfig(f"{cfg.shard.id}:{port}" if cfg.shard.id else None)
    return dataclasses.replace(cfg, listen=listen, shard=shard)


@dataclass
class Worker:
    cfg: CollectorConfig
    sock: socket.socket | None  # the bound socket until the worker is forked
    pid: int | None = None
    started: float = 0.0
    runs: int = 0  # times started
    quick_deaths: int = 0  # consecutive deaths within STARTED_S of a start
    restart_at: float | None = None
    ready_fd: int | None = None  # the read end of the pipe it writes to once it serves
    ready: bool = False  # it served (since its last start)

    @property
    def name(self) -> str:
        return f"worker {self.cfg.shard_id} (port {self.cfg.listen.port})"


class Supervisor:
    def __init__(self, cfg: CollectorConfig, ports: Sequence[int]) -> None:
        self.cfg = cfg
        self.host = cfg.listen.host
        cap = effective_connection_cap(cfg.listen.connections.max_connections, raise_file_limit())
        self.backlog = min(4096, cap)
        self.workers: list[Worker] = []
        self.stopping: int | None = None  # the signal that stops the service
        self.stop_deadline = 0.0
        try:
            for port in ports:
                sock = bind(self.host, port, self.backlog)
                self.workers.append(Worker(worker_config(cfg, port), sock))
        except ListenError:
            self.close_sockets()
            raise

    def close_sockets(self) -> None:
        for w in self.workers:
            if w.sock is not None:
                w.sock.close()
                w.sock = None

    def run(self) -> int:
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._on_signal)
        try:
            for w in self.workers:
                self.start(w)
            log.info(
                "sinyal-collector: %d workers on %s ports %s",
                len(self.workers),
                self.host,
                ",".join(str(w.cfg.listen.port) for w in self.workers),
            )
            while any(w.pid is not None for w in self.workers) or self.stopping is None:
                self.reap()
                self.restart_due()
                if self.stopping is not None and time.monotonic() > self.stop_deadline:
                    self.kill_all(signal.SIGKILL)
                time.sleep(POLL_S)
        except StartError as exc:
            log.error("sinyal-collector serve: %s; stopping the other workers", exc)
            self.stop(signal.SIGTERM)
            while any(w.pid is not None for w in self.workers):
                self.reap()
                if time.monotonic() > self.stop_deadline:
                    self.kill_all(signal.SIGKILL)
                time.sleep(POLL_S)
            return 1
        finally:
            self.close_sockets()
        log.info("sinyal-collector stopped")
        return 0

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stop(signum)

    def stop(self, signum: int) -> None:
        if self.stopping is None:
            self.stopping = signum
            self.stop_deadline = time.monotonic() + STOP_GRACE_S
        self.kill_all(signal.SIGTERM)

    def kill_all(self, signum: int) -> None:
        for w in self.workers:
            if w.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.pid, signum)

    def start(self, w: Worker) -> None:
        if w.sock is None:
            w.sock = bind(self.host, w.cfg.listen.port, self.backlog)  # ListenError: caller
        ready_r, ready_w = os.pipe()
        # Signals wait while forking: the worker must not run the parent's handlers.
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                os.close(ready_r)
                os.setpgid(0, 0)
                for signum in STOP_SIGNALS:
                    signal.signal(signum, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
                for other in self.workers:
                    if other is not w and other.sock is not None:
                        other.sock.close()
                    if other.ready_fd is not None:
                        os.close(other.ready_fd)
                serve(w.cfg, w.sock, lambda: _tell(ready_w))
                code = 0
            except BaseException as exc:
                if not isinstance(exc, KeyboardInterrupt | SystemExit):
                    print(f"sinyal-collector {w.name}: {exc}", file=sys.stderr)
            finally:
                sys.stderr.flush()
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        os.close(ready_w)
        os.set_blocking(ready_r, False)
        w.ready_fd, w.ready = ready_r, False
        # The parent keeps no copy: while a worker is down its port refuses connections,
        # and the proxy sends its stations elsewhere.
        w.sock.close()
        w.sock = None
        w.pid = pid
        w.started = time.monotonic()
        w.runs += 1
        w.restart_at = None

    def reap(self) -> None:
        for w in self.workers:
            self.check_ready(w)
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for w in self.workers:
                if w.pid == pid:
                    w.pid = None
                    if w.ready_fd is not None:
                        self.check_ready(w)  # it may have served just before it ended
                        os.close(w.ready_fd)
                        w.ready_fd = None
                    self.ended(w, status)

    @staticmethod
    def check_ready(w: Worker) -> None:
        if w.ready_fd is not None and not w.ready:
            with contextlib.suppress(BlockingIOError):
                w.ready = bool(os.read(w.ready_fd, 1))

    def ended(self, w: Worker, status: int) -> None:
        how = (
            f"was killed by signal {signal.Signals(os.WTERMSIG(status)).name}"
            if os.WIFSIGNALED(status)
            else f"exited with code {os.waitstatus_to_exitcode(status)}"
        )
        if self.stopping is not None:
            return
        lived = time.monotonic() - w.started
        if w.runs == 1 and not w.ready:
            raise StartError(f"{w.name} {how} while starting")
        w.quick_deaths = w.quick_deaths + 1 if lived < STARTED_S else 0
        delay = min(MAX_RESTART_DELAY_S, RESTART_DELAY_S * 2**w.quick_deaths)
        log.warning("%s %s after %.0f s; restarting it in %.0f s", w.name, how, lived, delay)
        w.restart_at = time.monotonic() + delay

    def restart_due(self) -> None:
        if self.stopping is not None:
            return
        now = time.monotonic()
        for w in self.workers:
            if w.pid is None and w.restart_at is not None and now >= w.restart_at:
                try:
                    self.start(w)
                except ListenError as exc:
                    w.restart_at = now + MAX_RESTART_DELAY_S
                    log.error("%s not restarted: %s", w.name, exc)
                else:
                    log.warning("%s restarted (pid %d)", w.name, w.pid)


def _tell(fd: int) -> None:
    """The worker serves: say so to the parent, once."""
    with contextlib.suppress(OSError):
        os.write(fd, b"1")
        os.close(fd)


def serve_workers(cfg: CollectorConfig, ports: Sequence[int]) -> int:
    """Run one collector process per port until a signal; the exit code. Raises
    ListenError when a port cannot be bound (then no worker was started)."""
    return Supervisor(cfg, ports).run()
