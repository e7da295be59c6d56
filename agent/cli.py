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
from collections.abc import Sequence
from typing import Any

from agent import __version__
from agent import config as agent_config
from agent import thresholds as agent_thresholds
from agent.config import AgentConfig, ConfigError
from agent.record import printable

EXIT_OK, EXIT_FAIL, EXIT_CONFIG, EXIT_PREFLIGHT = 0, 1, 2, 3

log = logging.getLogger("sinyal.agent")

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
  sinyal-agent simulate --collector URL --tokens tokens.csv --profile good4g=0.9,congested=0.1
                                      a simulated fleet for load tests and drills

exit codes: 0 ok, 1 failure, 2 invalid config or usage, 3 environment cannot run the probes
docs: docs/agent.md (technicians), docs/configuration.md, docs/data-model.md, docs/simulate.md
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
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, help_: str, desc: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help_,
            description=desc,
            parents=[sub_common],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    add(
        "check-config",
        "validate the configuration (exit 2 when invalid)",
        "Validate the config and the thresholds file. Every problem is printed at once as\n"
        "FILE: dotted.path: got VALUE, expected WHAT. Exit 0 when valid, 2 when not.",
    )
    once = add(
        "once",
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
        "spool depth, oldest unsent record, last results",
        "Show what the spool holds: records waiting, their size, the oldest unsent\n"
        "record's age, how many were dropped at the size cap, and the latest result\n"
        "of every series. Reads the spool in the config's data_dir.",
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")
    doctor = add(
        "doctor",
        "check this machine: ICMP permission, clock, disk, uplinks",
        "Preflight checks with the fix for each problem: config, ICMP permission\n"
        "(CAP_NET_RAW or net.ipv4.ping_group_range), clock synchronisation, data dir\n"
        "and disk space, uplink addresses, collector. Exit 1 when a check fails.",
    )
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    _add_simulate(add)
    return p


def _add_simulate(add: Any) -> None:
    sim = add(
        "simulate",
        "simulate a fleet of stations uploading to a collector (load tests, drills)",
        "Play many stations against a collector through the real upload protocol: each\n"
        "station uses its own token from FILE (written by sinyal-collector agents add\n"
        "--all-stations --out FILE), makes --targets icmp records per round every\n"
        "--interval-s (spread over the interval like the real scheduler) plus a heartbeat a\n"
        "minute, and uploads them gzip-compressed as the agent does. No agent config is read.\n"
        "Profiles: good4g, congested, flapping, deadzone (never uploads), clockwrong (wrong\n"
        "clock; times from the collector's clock). docs/simulate.md has the details.",
    )
    sim.add_argument("--collector", required=True, metavar="URL", help="collector base URL")
    sim.add_argument("--tokens", required=True, metavar="FILE", help="station,token_id,token CSV")
    sim.add_argument("--stations", type=int, metavar="N", help="use the first N rows (default all)")
    sim.add_argument(
        "--profile",
        default="good4g",
        metavar="NAME[=SHARE][,NAME=SHARE...]",
        help="profiles and their shares of the fleet, e.g. good4g=0.9,congested=0.1"
        " (default good4g)",
    )
    sim.add_argument(
        "--interval-s", type=float, default=60.0, metavar="S", help="round interval (default 60)"
    )
    sim.add_argument(
        "--targets", type=int, default=3, metavar="N", help="icmp targets per round (default 3)"
    )
    sim.add_argument(
        "--duration", type=float, metavar="S", help="stop after S seconds (default: Ctrl-C)"
    )
    sim.add_argument(
        "--concurrency",
        type=int,
        default=50,
        metavar="C",
        help="uploads in flight at most (default 50)",
    )
    sim.add_argument("--report", metavar="FILE.json", help="write the report as JSON")
    sim.add_argument("--ca-bundle", metavar="FILE", help="CA certificates for an https collector")
    sim.add_argument(
        "--drain-s",
        type=float,
        default=10.0,
        metavar="S",
        help="after the duration, upload what is pending for at most this long (default 10)",
    )
    sim.add_argument(
        "--seed", type=int, default=0, metavar="N", help="seed of the stations' random values"
    )
    sim.add_argument(
        "--record-log",
        metavar="FILE",
        help="append every record made to FILE, one JSON line each (to compare with the database)",
    )


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
    if not args.command:
        parser.print_help()
        return EXIT_CONFIG
    _setup_logging(args.verbose)
    if args.command == "simulate":
        return cmd_simulate(args)  # a load generator: no agent config
    try:
        cfg, th = _load(args)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        n = len(exc.errors)
        print(f"{n} problem{'s' if n != 1 else ''}; see docs/configuration.md", file=sys.stderr)
        return EXIT_CONFIG
    handler = {
        "check-config": cmd_check_config,
        "once": cmd_once,
        "run": cmd_run,
        "status": cmd_status,
        "doctor": cmd_doctor,
    }[args.command]
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


def cmd_simulate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from agent import simulate

    def bad(message: str) -> int:
        print(f"sinyal-agent simulate: {message}", file=sys.stderr)
        return EXIT_CONFIG

    checks = (
        (
            "--stations",
            args.stations,
            args.stations is None or args.stations >= 1,
            "an integer >= 1",
        ),
        ("--interval-s", args.interval_s, 0.1 <= args.interval_s <= 86400, "seconds, 0.1..86400"),
        ("--targets", args.targets, 1 <= args.targets <= 100, "an integer 1..100"),
        ("--duration", args.duration, args.duration is None or args.duration > 0, "seconds > 0"),
        ("--concurrency", args.concurrency, 1 <= args.concurrency <= 10_000, "1..10000"),
        ("--drain-s", args.drain_s, 0 <= args.drain_s <= 3600, "seconds, 0..3600"),
    )
    for option, value, ok, expected in checks:
        if not ok:
            return bad(f"{option}: got {value}, expected {expected}")
    if not args.collector.startswith(("http://", "https://")):
        return bad(f"--collector: got {args.collector!r}, expected an http:// or https:// URL")
    for option, value in (("--report", args.report), ("--record-log", args.record_log)):
        if value is not None and not Path(value).resolve().parent.is_dir():
            return bad(f"{option}: {value}: its directory does not exist")
    ca = Path(args.ca_bundle) if args.ca_bundle else None
    if ca is not None and not ca.is_file():
        return bad(f"--ca-bundle: {ca}: no such file")
    try:
        profiles = simulate.parse_profiles(args.profile)
        stations = simulate.load_tokens(Path(args.tokens), args.stations)
    except simulate.SimulateError as exc:
        return bad(str(exc))
    cfg = simulate.SimConfig(
        collector=args.collector,
        stations=stations,
        profiles=profiles,
        interval_s=args.interval_s,
        targets=args.targets,
        duration_s=args.duration,
        concurrency=args.concurrency,
        ca_bundle=ca,
        drain_s=args.drain_s,
        seed=args.seed,
        record_log=Path(args.record_log) if args.record_log else None,
    )

    async def main_() -> simulate.Report:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        return await simulate.run(cfg, stop)

    log.info(
        "simulating %d stations (%s) against %s, a round every %g s",
        len(stations),
        ", ".join(f"{n}={s:g}" for n, s in profiles),
        args.collector,
        args.interval_s,
    )
    report = asyncio.run(main_())
    print(report.summary())
    if args.report:
        Path(args.report).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    # Nothing acknowledged while requests failed: the collector was not usable.
    return EXIT_FAIL if report.errors and not report.records_accepted else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
