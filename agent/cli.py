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
from pathlib import Path
from typing import Any

from agent import __version__
from agent import config as agent_config
from agent.config import AgentConfig, ConfigError
from agent.contract import thresholds as agent_thresholds
from agent.contract.configkit import http_url
from agent.contract.record import printable

EXIT_OK, EXIT_FAIL, EXIT_CONFIG, EXIT_PREFLIGHT = 0, 1, 2, 3

log = logging.getLogger("sinyal.agent")

# A command: the parsed arguments, the loaded config and thresholds -> the exit code. Each
# subparser names its handler (set_defaults), as the collector's CLI does. `enroll` runs
# before a config exists: it names a `standalone` handler instead.
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
  sudo sinyal-agent enroll --collector https://collector.example 7KQ2M-9XD4T
                                      enrol with a code from the control room's sheet

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
    p.set_defaults(handler=None, standalone=None)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, handler: Handler | None, help_: str, desc: str) -> argparse.ArgumentParser:
        q: argparse.ArgumentParser = sub.add_parser(
            name,
            help=help_,
            description=desc,
            parents=[sub_common],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        q.set_defaults(handler=handler)
        return q

    cc = add(
        "check-config",
        cmd_check_config,
        "validate the configuration (exit 2 when invalid)",
        "Validate the config and the thresholds file (and the token file). Every problem is\n"
        "printed at once as FILE: dotted.path: got VALUE, expected WHAT. Exit 0 when valid,\n"
        "2 when not. Host names that do not resolve now are warnings (the uplink may not be\n"
        "up yet); `doctor` fails on them.",
    )
    cc.add_argument(
        "--no-resolve", action="store_true", help="do not look up the host names (no network)"
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
    enr = add(
        "enroll",
        None,
        "enrol this device with a code from the control room's sheet",
        "Exchange a single-use enrolment code (from `sinyal-collector agents enroll`) for\n"
        "this station's token and station block: the token goes to the token file (0600,\n"
        "owned by the sinyal user when run as root), the station (id, name, lat, lon, tz)\n"
        "and the collector's URL into the config (-c FILE; other sections are kept). Then\n"
        "the config is checked, the doctor's checks run, and the sinyal-agent service is\n"
        "enabled and (re)started when systemd has it (else it says how to start the agent).\n"
        "The token is never printed. Exit 0 enrolled and healthy, 1 enrolment refused or\n"
        "a doctor check failed, 2 bad usage or the resulting config is invalid.",
    )
    enr.add_argument("code", metavar="CODE", help="the enrolment code, e.g. 7KQ2M-9XD4T")
    enr.add_argument(
        "--collector", required=True, metavar="URL", help="the collector's URL (on the sheet)"
    )
    enr.add_argument(
        "--token-file",
        metavar="FILE",
        help="where the token goes (default: the config's collector.token_file, else "
        "/etc/sinyal/token)",
    )
    enr.add_argument("--ca-bundle", metavar="FILE", help="CA certificates for an https collector")
    enr.add_argument("--no-start", action="store_true", help="do not (re)start the service")
    enr.add_argument(
        "--allow-insecure",
        action="store_true",
        help="accept a plain http:// collector outside loopback (a lab only: the code, the "
        "token and every result travel unencrypted); writes collector.allow_insecure: true",
    )
    enr.set_defaults(standalone=cmd_enroll)
    return p


def _load(args: argparse.Namespace) -> tuple[AgentConfig, agent_thresholds.Thresholds]:
    path = args.config or agent_config.default_config_path()
    cfg = agent_config.load(path)
    th = agent_thresholds.load(cfg.thresholds_file)
    return cfg, th


class _LocalFormatter(logging.Formatter):
    """Log times in the station's zone, named: 2026-12-04 23:43:20 WIB (ISO date)."""

    def __init__(self, tz: str | None) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.tz = tz

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        from agent.uploadstate import format_local

        if self.tz is None:
            return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(record.created))
        return format_local(record.created, self.tz)


def _setup_logging(
    verbose: bool, handler: logging.Handler | None = None, tz: str | None = None
) -> None:
    h = handler or logging.StreamHandler(sys.stderr)
    if handler is None:
        h.setFormatter(_LocalFormatter(tz))
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
    standalone: Callable[[argparse.Namespace], int] | None = args.standalone
    if handler is None and standalone is None:
        parser.print_help()
        return EXIT_CONFIG
    _setup_logging(args.verbose)
    if standalone is not None:
        try:
            return standalone(args)  # enroll writes the config: it need not be valid yet
        except ModuleNotFoundError as exc:
            print(missing_extra(exc), file=sys.stderr)
            return EXIT_PREFLIGHT
    assert handler is not None
    try:
        cfg, th = _load(args)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        n = len(exc.errors)
        print(f"{n} problem{'s' if n != 1 else ''}; see docs/configuration.md", file=sys.stderr)
        return EXIT_CONFIG
    _setup_logging(args.verbose, tz=cfg.station.tz)  # log times in the station's zone
    try:
        return handler(args, cfg, th)
    except ModuleNotFoundError as exc:
        print(missing_extra(exc), file=sys.stderr)
        return EXIT_PREFLIGHT
    except KeyboardInterrupt:
        return 130


# The agent's optional libraries and the extra that brings each (pyproject.toml).
_EXTRA_OF = {
    "icmplib": "agent",
    "dns": "agent",
    "httpx": "agent",
    "rich": "agent",
    "speedtest": "agent",
}


def missing_extra(exc: ModuleNotFoundError) -> str:
    """What to install when an optional library is missing, in words."""
    top = (exc.name or "").split(".")[0]
    extra = _EXTRA_OF.get(top)
    if extra is None:
        return f"sinyal-agent: a library is missing: {exc.name} (reinstall the agent: {exc})"
    return (
        f"sinyal-agent: this command needs the Python package {top!r}, part of the "
        f"'{extra}' extra: install it with `pip install 'sinyal[{extra}]'` in the agent's venv "
        "(deploy/install.sh does)"
    )


def open_spool_or_explain(cfg: AgentConfig) -> Any:
    """The spool, or None after saying why data_dir cannot hold it and how to fix it."""
    import sqlite3

    from agent.runner import open_spool

    try:
        return open_spool(cfg)
    except (OSError, sqlite3.Error) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        print(
            f"sinyal-agent: data_dir {cfg.data_dir}: cannot keep the spool there: {reason}",
            file=sys.stderr,
        )
        print(
            "fix: set data_dir in the config to a writable directory on a disk with free space,"
            f" or give the agent's user write access: `sudo install -d -o $(id -un) "
            f"{cfg.data_dir}`; a read-only disk needs remounting read-write",
            file=sys.stderr,
        )
        return None


def cmd_check_config(
    args: argparse.Namespace, cfg: AgentConfig, th: agent_thresholds.Thresholds
) -> int:
    probes = [
        name
        for name in ("icmp", "dns", "http")
        if (p := getattr(cfg.probes, name)) is not None and p.enabled
    ]
    from agent.targets import unresolved

    for u in [] if args.no_resolve else unresolved(cfg):
        # A warning, not an error: at install time the uplink may not be up yet.
        print(
            f"{cfg.path}: warning: {u.path}: cannot resolve {u.host!r} now ({u.reason}); "
            "check the name, or run `sinyal-agent doctor` once the uplink is up",
            file=sys.stderr,
        )
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
    from agent.runner import run_once

    env = _env_or_exit(cfg)
    if env is None:
        return EXIT_PREFLIGHT
    spool = None
    if not args.no_spool:
        spool = open_spool_or_explain(cfg)
        if spool is None:
            return EXIT_PREFLIGHT
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

        render_table(records, th, cfg.station.id, tz=cfg.station.tz)
    return EXIT_OK


def cmd_run(args: argparse.Namespace, cfg: AgentConfig, th: agent_thresholds.Thresholds) -> int:
    env = _env_or_exit(cfg)
    if env is None:
        return EXIT_PREFLIGHT
    spool = open_spool_or_explain(cfg)
    if spool is None:
        return EXIT_PREFLIGHT
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

    tz = cfg.station.tz

    def show(records: Sequence[Any]) -> None:
        for r in records:
            print(format_line(r, tz), flush=True)

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
    from rich.text import Text

    from agent.runner import Daemon
    from agent.spool import oldest_age_s
    from agent.uploadstate import Health, format_local
    from agent.view import BoardView, LiveView, UploadView

    console = Console()
    tz = cfg.station.tz
    _setup_logging(
        args.verbose,
        RichHandler(
            console=console,
            show_path=False,
            log_time_format=lambda dt: Text(format_local(dt.astimezone(), tz)),
        ),
    )
    daemon: Daemon | None = None

    def upload() -> UploadView | None:
        if cfg.collector is None:
            return None
        st = spool.stats()
        return UploadView(Health.from_state(spool.state()), st.records, st.oldest_measured_at)

    def status_line() -> str:
        # The backlog and its age are on the upload line; this one says what runs next.
        st = spool.stats()
        parts = [f"spool {st.bytes / 1024:.0f} KiB", f"dropped {st.dropped_total}"]
        if cfg.collector is None:
            age = oldest_age_s(st)
            parts.insert(1, f"{st.records} records, oldest {age or 0:.0f}s")
        if daemon is not None:
            now = time.time()
            nxt = [
                f"{s.probe.kind} {max(0.0, s.next_run - now):.0f}s"
                for s in daemon.scheduler.states
                if s.next_run is not None
            ]
            if nxt:
                parts.append("next " + ", ".join(nxt))
        return " · ".join(parts) + " · Ctrl-C stops"

    view = BoardView(th, cfg.station.id, status_line, tz=tz, upload=upload)
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
    import sqlite3

    from agent.uploadstate import Health, format_local

    try:
        with Spool(path, int(cfg.spool.max_mb * 2**20)) as spool:
            st = spool.stats()
            latest = spool.latest()
            state = spool.state()
            dead = spool.dead_letters(10)
            dead_total = spool.dead_letter_count()
            untimed = spool.untimed(boot_id())
    except (OSError, sqlite3.Error) as exc:
        print(f"sinyal-agent status: cannot read the spool {path}: {exc}", file=sys.stderr)
        print(
            "fix: run as the agent's user (sudo -u sinyal ...) or check the disk", file=sys.stderr
        )
        return EXIT_FAIL
    health = Health.from_state(state)
    tz = cfg.station.tz

    def local(utc: str | None) -> str:
        return format_local(utc, tz) if utc else "-"

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
                    "last_error_at": health.last_error_at,
                    "upload_state": health.kind if cfg.collector is not None else None,
                    "upload_reason": health.reason or None,
                    "upload_since": health.since,
                    "tz": tz,
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
        f"oldest unsent:  {local(st.oldest_measured_at)}"
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
        if health.kind == "ok":
            print(f"uploads:        ok since {local(health.since)}")
        elif health.kind != "never":
            print(f"uploads:        FAILING since {local(health.since)}: {health.reason}")
        print(f"last upload:    {local(health.last_ok_at) if health.last_ok_at else 'never'}")
        if health.last_error:
            print(
                f"last error:     {printable(health.last_error)} (at {local(health.last_error_at)})"
            )
    print(f"dead letters:   {dead_total} (rejected by the collector; never retried)")
    for d in dead:
        # reason and detail are the collector's words: shown, never interpreted by the terminal
        why = printable(f"{d['reason']} {d['detail']}")
        print(f"  {local(d['rejected_at'])} {d['kind']} {d['id']}: {why}")
    print("last results:")
    for r in latest:
        print("  " + format_line(r, tz))
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


def cmd_enroll(args: argparse.Namespace) -> int:
    from urllib.parse import urlsplit

    from agent import enroll

    def fail(message: str, code: int = EXIT_FAIL) -> int:
        print(f"sinyal-agent enroll: {message}", file=sys.stderr)
        return code

    url = args.collector.strip()
    if http_url(url) is None:
        return fail(f"--collector: got {url!r}, expected an http:// or https:// URL", EXIT_CONFIG)
    ca = Path(args.ca_bundle) if args.ca_bundle else None
    if ca is not None and not ca.is_file():
        return fail(f"--ca-bundle: {ca}: no such file", EXIT_CONFIG)
    config_path = Path(args.config or agent_config.default_config_path())
    token_file = Path(args.token_file) if args.token_file else _token_file_of(config_path)
    # Before the code is spent: can the token and the config be written here?
    for target in (token_file, config_path):
        problem = enroll.unwritable(target)
        if problem is not None:
            return fail(f"{problem}; run as root: sudo sinyal-agent enroll ... (the code is "
                        "still unused)", EXIT_CONFIG)  # fmt: skip
    host = urlsplit(url).hostname or ""
    insecure = not agent_config.protected_url(url)  # the rule the config applies
    if insecure and not args.allow_insecure:
        return fail(
            f"--collector: got {url!r}, expected the collector's https:// URL (plain http "
            "only to loopback, or with --allow-insecure in a lab); the code is still unused",
            EXIT_CONFIG,
        )
    if insecure:
        print(
            "sinyal-agent enroll: warning: http:// sends the code and the token unencrypted; "
            "use the collector's https:// URL in the field",
            file=sys.stderr,
        )
    try:
        answer = enroll.exchange(url, args.code, ca, 30.0)
    except enroll.EnrollError as exc:
        return fail(f"{exc} (nothing was changed)")
    station = answer.station
    try:
        enroll.write_token(token_file, answer.token)
        old = enroll.configure(config_path, answer, url, token_file, insecure)
        if old is None:  # a new config: probe the collector's host
            text = config_path.read_text(encoding="utf-8")
            host = urlsplit(url).hostname or "127.0.0.1"
            config_path.write_text(enroll.new_config_targets(text, host), encoding="utf-8")
    except OSError as exc:
        return fail(
            f"cannot write {exc.filename or token_file}: {exc.strerror}. The code is used: "
            "fix that and ask the control room for a new one"
        )
    print(
        f"enrolled station {station['id']} ({station['name']}, {station['tz']}): token "
        f"{answer.token_id} in {token_file} (mode 0600), station and collector in {config_path}"
    )
    try:
        cfg = agent_config.load(config_path)
    except ConfigError as exc:
        if old is not None:
            config_path.write_text(old, encoding="utf-8")
        for line in exc.errors:
            print(line, file=sys.stderr)
        return fail(
            f"the config is not valid with this station block; {config_path} was put back "
            f"as it was (the token stays in {token_file})",
            EXIT_CONFIG,
        )
    from agent.preflight import FAIL, run_checks

    checks = run_checks(cfg)
    marks = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}
    for c in checks:
        print(f"[{marks[c.status]}] {c.name}: {c.detail}")
        if c.fix and c.status != "ok":
            print(f"       fix: {c.fix}")
    failed = any(c.status == FAIL for c in checks)
    if args.no_start:
        print(f"not started (--no-start): start it with `systemctl restart {enroll.SERVICE}`")
    else:
        started, what = enroll.start_service()
        if started:
            print(what)
        else:
            print(f"not started: {what}; start the agent with: sinyal-agent run -c {config_path}")
    if failed:
        print("enrolled, but a check failed: see the fixes above", file=sys.stderr)
    return EXIT_FAIL if failed else EXIT_OK


def _token_file_of(config_path: Path) -> Path:
    """The token file an existing config names, else /etc/sinyal/token."""
    from agent.enroll import DEFAULT_TOKEN_FILE

    try:
        doc = agent_config.read_yaml(config_path)
    except ConfigError:
        return DEFAULT_TOKEN_FILE
    collector = doc.get("collector") if isinstance(doc, dict) else None
    named = collector.get("token_file") if isinstance(collector, dict) else None
    if isinstance(named, str) and named:
        p = Path(named).expanduser()
        return p if p.is_absolute() else config_path.resolve().parent / p
    return DEFAULT_TOKEN_FILE


if __name__ == "__main__":
    sys.exit(main())
