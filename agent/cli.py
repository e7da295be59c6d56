"""sinyal-agent: the command line of the Sinyal agent.

Exit codes: 0 success; 1 a runtime failure; 2 invalid configuration or usage;
3 the environment cannot run the configured probes (the message says the fix).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import shutil
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from agent import __version__
from agent import config as agent_config
from agent.config import AgentConfig, ConfigError
from agent.contract import thresholds as agent_thresholds
from agent.contract.record import printable

EXIT_OK, EXIT_FAIL, EXIT_CONFIG, EXIT_PREFLIGHT = 0, 1, 2, 3

log = logging.getLogger("sinyal.agent")

# A command: the parsed arguments, the loaded config and thresholds -> the exit code. Each
# subparser names its handler (set_defaults), as the collector's CLI does.
Handler = Callable[[argparse.Namespace, AgentConfig, agent_thresholds.Thresholds], int]

DESCRIPTION = """\
Sinyal agent: measures a polling station's links (latency, jitter, loss, DNS and
HTTP timing), keeps every result in a durable local spool, and shows what is
happening. Configuration: -c FILE, else $SINYAL_CONFIG, else /etc/sinyal/agent.yaml.
"""

EPILOG = """\
examples:
  sinyal-agent check-config -c /etc/sinyal/agent.yaml
  sinyal-agent once --json            one JSON record per line
  sinyal-agent run                    live view on a terminal, log lines under systemd
  sinyal-agent doctor                 what is wrong and how to fix it

exit codes: 0 ok, 1 failure, 2 invalid config or usage, 3 environment cannot run the probes
docs: docs/agent.md (technicians), docs/configuration.md, docs/data-model.md
"""


def _common(suppress: bool) -> argparse.ArgumentParser:
    # On subcommands the defaults are suppressed, so `-c FILE` given before the command
    # is not overwritten by the subcommand's default.
    common = argparse.ArgumentParser(add_help=False)
    default: object = argparse.SUPPRESS if suppress else None
    common.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        default=default,
        help="agent config (default: $SINYAL_CONFIG or /etc/sinyal/agent.yaml)",
    )
    common.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default if suppress else False,
        help="debug logging",
    )
    return common


def _parser() -> argparse.ArgumentParser:
    common = _common(suppress=False)
    sub_common = _common(suppress=True)

    p = argparse.ArgumentParser(
        prog="sinyal-agent",
        description=DESCRIPTION,
        epilog=EPILOG,
        parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"sinyal-agent {__version__}")
    p.set_defaults(handler=None)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, handler: Handler, help_: str, desc: str) -> argparse.ArgumentParser:
        q: argparse.ArgumentParser = sub.add_parser(
            name,
            help=help_,
            description=desc,
            parents=[sub_common],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        q.set_defaults(handler=handler)
        return q

    add(
        "check-config",
        cmd_check_config,
        "validate the configuration (exit 2 when invalid)",
        "Validate the config and the thresholds file. Every problem is printed at once as\n"
        "FILE: dotted.path: got VALUE, expected WHAT. Exit 0 when valid, 2 when not.",
    )
    once = add(
        "once",
        cmd_once,
        "run every configured probe once and print the results",
        "Run every configured probe once (ICMP targets concurrently) and print a table,\n"
        "or with --json one JSON record per line (the wire format, docs/data-model.md).\n"
        "Results are also written to the spool unless --no-spool is given.",
    )
    once.add_argument("--json", action="store_true", help="one JSON record per line on stdout")
    once.add_argument(
        "--no-spool", action="store_true", help="do not keep these results in the spool (a dry run)"
    )
    run = add(
        "run",
        cmd_run,
        "run the agent: scheduled probes, spool, live view",
        "Run the agent until stopped (Ctrl-C or SIGTERM). On a terminal it shows a live\n"
        "table per target and uplink: latest p50/p95, loss, jitter, a sparkline of recent\n"
        "rounds, coloured by config/thresholds.yaml. Without a terminal (systemd) it\n"
        "prints one line per result.",
    )
    run.add_argument(
        "--plain", action="store_true", help="log lines even on a terminal (no live view)"
    )
    run.add_argument(
        "--duration",
        type=float,
        metavar="SECONDS",
        help="stop after this many seconds (tests, benchmarks)",
    )
    run.add_argument(
        "--record-log",
        metavar="FILE",
        help="also append every record made to FILE, one JSON line each (an audit copy:"
        " what this agent measured, to compare with what the database holds)",
    )
    status = add(
        "status",
        cmd_status,
        "spool depth, oldest unsent record, last results",
        "Show what the spool holds: records waiting, their size, the oldest unsent\n"
        "record's age, how many were dropped at the size cap, and the latest result\n"
        "of every series. Reads the spool in the config's data_dir.",
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")
    doctor = add(
        "doctor",
        cmd_doctor,
        "check this machine: ICMP permission, clock, disk, uplinks",
        "Preflight checks with the fix for each problem: config, ICMP permission\n"
        "(CAP_NET_RAW or net.ipv4.ping_group_range), clock synchronisation, data dir\n"
        "and disk space, uplink addresses, collector. Exit 1 when a check fails.",
    )
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def _load(args: argparse.Namespace) -> tuple[AgentConfig, agent_thresholds.Thresholds]:
    path = args.config or agent_config.default_config_path()
    cfg = agent_config.load(path)
    th = agent_thresholds.load(cfg.thresholds_file)
    return cfg, th


def _setup_logging(verbose: bool, handler: logging.Handler | None = None) -> None:
    h = handler or logging.StreamHandler(sys.stderr)
    if handler is None:
        h.setFormatter(
            logging.Formatter(
                "%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S%z"
            )
        )
    root = logging.getLogger()
    root.handlers[:] = [h]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # httpx logs every request at INFO; the agent reports results itself.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    handler: Handler | None = args.handler
    if handler is None:
        parser.print_help()
        return EXIT_CONFIG
    _setup_logging(args.verbose)
    try:
        cfg, th = _load(args)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        n = len(exc.errors)
        print(f"{n} problem{'s' if n != 1 else ''}; see docs/configuration.md", file=sys.stderr)
        return EXIT_CONFIG
    try:
        return handler(args, cfg, th)
    except KeyboardInterrupt:
        return 130


def cmd_check_config(
    args: argparse.Namespace, cfg: AgentConfig, th: agent_thresholds.Thresholds
) -> int:
    probes = [
        name
        for name in ("icmp", "dns", "http")
        if (p := getattr(cfg.probes, name)) is not None and p.enabled
    ]
    print(
        f"{cfg.path}: valid (station {cfg.station.id}, uplinks "
        f"{', '.join(u.name for u in cfg.uplinks)}, probes {', '.join(probes)}, "
        f"{len(th.metrics)} thresholds from {cfg.thresholds_file})"
    )
    return EXIT_OK


def _env_or_exit(cfg: AgentConfig) -> Any:
    from agent.runner import PreflightError, build_env

    try:
        return build_env(cfg)
    except PreflightError as exc:
        print(f"sinyal-agent: cannot run ICMP probes: {exc.check.detail}", file=sys.stderr)
        print(f"fix: {exc.check.fix}", file=sys.stderr)
        return None


def cmd_once(args: argparse.Namespace, cfg: AgentConfig, th: agent_thresholds.Thresholds) -> int:
    from agent.runner import open_spool, run_once

    env = _env_or_exit(cfg)
    if env is None:
        return EXIT_PREFLIGHT
    spool = None if args.no_spool else open_spool(cfg)
    try:
        records = asyncio.run(run_once(env, spool))
    finally:
        if spool is not None:
            spool.close()
    if args.json:
        out = sys.stdout
        for r in records:
            out.write(r.to_json() + "\n")
        out.flush()
    else:
        from agent.view import render_table

        render_table(records, th, cfg.station.id)
    return EXIT_OK


def cmd_run(args: argparse.Namespace, cfg: AgentConfig, th: agent_thresholds.Thresholds) -> int:
    from agent.runner import open_spool

    env = _env_or_exit(cfg)
    if env is None:
        return EXIT_PREFLIGHT
    spool = open_spool(cfg)
    live = sys.stdout.isatty() and not args.plain
    try:
        if live:
            return _run_live(args, cfg, th, env, spool)
        return _run_plain(args, cfg, env, spool)
    finally:
        spool.close()


async def _serve(daemon: Any, duration: float | None, tick: Any = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    if duration is not None:
        loop.call_later(duration, stop.set)

    async def ticker() -> None:
        while not stop.is_set():
            await asyncio.sleep(1.0)
            tick()

    extra = [asyncio.create_task(ticker())] if tick is not None else []
    try:
        await daemon.run(stop)
    finally:
        for t in extra:
            t.cancel()


def _run_plain(args: argparse.Namespace, cfg: AgentConfig, env: Any, spool: Any) -> int:
    from agent.runner import Daemon
    from agent.view import format_line

    def show(records: Sequence[Any]) -> None:
        for r in records:
            print(format_line(r), flush=True)

    daemon = Daemon(env, spool, show, args.record_log)
    log.info(
        "sinyal-agent %s started: station %s, %d probe(s), spool %s",
        __version__,
        cfg.station.id,
        len(daemon.scheduler.states),
        spool.path,
    )
    asyncio.run(_serve(daemon, args.duration))
    log.info("sinyal-agent stopped")
    return EXIT_OK


def _run_live(
    args: argparse.Namespace,
    cfg: AgentConfig,
    th: agent_thresholds.Thresholds,
    env: Any,
    spool: Any,
) -> int:
    from rich.console import Console
    from rich.logging import RichHandler

    from agent.runner import Daemon
    from agent.spool import oldest_age_s
    from agent.view import BoardView, LiveView

    console = Console()
    _setup_logging(args.verbose, RichHandler(console=console, show_path=False))
    daemon: Daemon | None = None

    def status_line() -> str:
        st = spool.stats()
        age = oldest_age_s(st)
        parts = [
            f"spool {st.records} records ({st.bytes / 1024:.0f} KiB)",
            f"oldest {age:.0f}s" if age is not None else "empty",
            f"dropped {st.dropped_total}",
        ]
        if daemon is not None:
            now = time.time()
            for s in daemon.scheduler.states:
                if s.next_run is not None:
                    parts.append(f"{s.probe.kind} in {max(0.0, s.next_run - now):.0f}s")
        return " · ".join(parts) + " · Ctrl-C to stop"

    view = BoardView(th, cfg.station.id, status_line)
    with LiveView(view, console) as lv:
        daemon = Daemon(env, spool, lv.update, args.record_log)
        asyncio.run(_serve(daemon, args.duration, lv.refresh))
    return EXIT_OK


def cmd_status(args: argparse.Namespace, cfg: AgentConfig, th: agent_thresholds.Thresholds) -> int:
    from agent.clock import boot_id
    from agent.spool import SPOOL_FILE, Spool, oldest_age_s
    from agent.view import format_line

    path = cfg.data_dir / SPOOL_FILE
    if not path.exists():
        print(f"no spool yet at {path}: the agent has not stored any result", file=sys.stderr)
        return EXIT_FAIL
    with Spool(path, int(cfg.spool.max_mb * 2**20)) as spool:
        st = spool.stats()
        latest = spool.latest()
        state = spool.state()
        dead = spool.dead_letters(10)
        dead_total = spool.dead_letter_count()
        untimed = spool.untimed(boot_id())
    age = oldest_age_s(st)
    disk = shutil.disk_usage(cfg.data_dir)
    free_mb = disk.free / 2**20
    if args.json:
        print(
            json.dumps(
                {
                    "spool": str(path),
                    "records": st.records,
                    "bytes": st.bytes,
                    "max_bytes": int(cfg.spool.max_mb * 2**20),
                    "by_kind": st.by_kind,
                    "oldest_measured_at": st.oldest_measured_at,
                    "oldest_unsent_s": age,
                    "dropped_total": st.dropped_total,
                    "untimed": untimed,
                    "disk_free_mb": round(free_mb, 1),
                    "last_upload_at": state.get("last_upload_at"),
                    "last_error": state.get("last_error") or None,
                    "clock_offset_ms": state.get("clock_offset_ms"),
                    "dead_letters_total": dead_total,
                    "dead_letters": dead,
                    "latest": [r.to_dict() for r in latest],
                },
                indent=2,
            )
        )
        return EXIT_OK
    print(f"spool:          {path}")
    print(
        f"unsent records: {st.records} ({st.bytes / 2**20:.2f} of {cfg.spool.max_mb:g} MB)"
        + (
            f"  by kind: {', '.join(f'{k} {v}' for k, v in st.by_kind.items())}"
            if st.by_kind
            else ""
        )
    )
    print(
        f"oldest unsent:  {st.oldest_measured_at or '-'}"
        + (f" ({age:.0f} s ago)" if age is not None else "")
    )
    print(f"dropped:        {st.dropped_total} (evicted at the size cap or on a full disk)")
    low = " LOW: the spool evicts its oldest records when the disk is full" if free_mb < 64 else ""
    print(f"disk free:      {free_mb:.0f} MB under {cfg.data_dir}{low}")
    if untimed:
        print(f"untimed:        {untimed} record(s) wait for the collector's clock (docs/agent.md)")
    if cfg.collector is None:
        print("last upload:    - (no collector configured)")
    else:
        print(f"collector:      {cfg.collector.url}")
        print(f"last upload:    {state.get('last_upload_at', 'never')}")
        if state.get("last_error"):
            error = printable(state["last_error"])
            print(f"last error:     {error} (at {state.get('last_attempt_at')})")
    print(f"dead letters:   {dead_total} (rejected by the collector; never retried)")
    for d in dead:
        # reason and detail are the collector's words: shown, never interpreted by the terminal
        why = printable(f"{d['reason']} {d['detail']}")
        print(f"  {d['rejected_at']} {d['kind']} {d['id']}: {why}")
    print("last results:")
    for r in latest:
        print("  " + format_line(r))
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace, cfg: AgentConfig, th: agent_thresholds.Thresholds) -> int:
    from agent.preflight import FAIL, run_checks

    checks = run_checks(cfg)
    if args.json:
        print(json.dumps([c.__dict__ for c in checks], indent=2))
    else:
        marks = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}
        for c in checks:
            print(f"[{marks[c.status]}] {c.name}: {printable(c.detail)}")
            if c.fix and c.status != "ok":
                print(f"       fix: {c.fix}")
    return EXIT_FAIL if any(c.status == FAIL for c in checks) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
