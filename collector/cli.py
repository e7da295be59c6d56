"""sinyal-collector: the command line of the Sinyal collector.

Exit codes: 0 success; 1 a runtime failure (an unknown token id, a registry that cannot
be opened); 2 invalid configuration, usage or input (a stations CSV with errors);
4 `serve` cannot listen (the port is taken); 5 a package of the 'collector' extra is missing.

A command is a function ``cmd_NAME(args, cfg) -> int`` plus one ``_add(...)`` entry in
``_parser()`` that names it as the handler.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent.contract import __version__
from agent.contract import thresholds as agent_thresholds
from agent.contract.configkit import ConfigError
from agent.contract.record import printable
from collector import config as collector_config
from collector.config import CollectorConfig
from collector.regions import Operators
from collector.registry import COLUMNS, Registry, RegistryError

EXIT_OK, EXIT_FAIL, EXIT_CONFIG = 0, 1, 2
EXIT_LISTEN = 4  # serve: the listen address cannot be bound (port in use)
EXIT_MISSING = 5  # an optional package of this command is not installed

Handler = Callable[[argparse.Namespace, CollectorConfig], int]

DESCRIPTION = """\
Sinyal collector: receives the agents' measurements, checks each agent's token and
every record, enriches records from the station registry and writes them to InfluxDB.
Configuration: -c FILE, else $SINYAL_COLLECTOR_CONFIG, else /etc/sinyal/collector.yaml.
"""

EPILOG = """\
examples:
  sinyal-collector check-config -c /etc/sinyal/collector.yaml
  sinyal-collector stations import stations.csv
  sinyal-collector agents add --station 3171011001001 --note "Budi's Raspberry Pi"
  sinyal-collector agents add --region 3171 --note "survey laptop, Jakarta Pusat"
  sinyal-collector agents list
  sinyal-collector agents revoke 3f9a1c2e
  sinyal-collector agents enroll --stations regency.csv --pdf sheet.pdf --collector-url URL
  sinyal-collector report --from 2026-12-02 --to 2026-12-03 --format csv,pdf --out /tmp/r

exit codes: 0 ok, 1 failure, 2 invalid config, usage or input, 4 serve cannot listen
(port taken), 5 a package of the 'collector' extra is not installed
docs: docs/collector.md
"""

log = logging.getLogger("sinyal.collector")


def _parser() -> argparse.ArgumentParser:
    def common(default: Any) -> argparse.ArgumentParser:
        c = argparse.ArgumentParser(add_help=False)
        c.add_argument(
            "-c",
            "--config",
            metavar="FILE",
            default=default,
            help="collector config (default: $SINYAL_COLLECTOR_CONFIG or "
            "/etc/sinyal/collector.yaml)",
        )
        c.add_argument(
            "-v", "--verbose", action="store_true", default=default, help="debug logging"
        )
        return c

    # Subcommands get SUPPRESS defaults, so `-c FILE` before the command is not reset by
    # the subcommand's own default (argparse copies a subparser's defaults over its parent's).
    top_common, sub_common = common(None), common(argparse.SUPPRESS)
    p = argparse.ArgumentParser(
        prog="sinyal-collector",
        description=DESCRIPTION,
        epilog=EPILOG,
        parents=[top_common],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"sinyal-collector {__version__}")
    p.set_defaults(handler=None, usage_of=p)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def _add(
        group: Any, name: str, handler: Handler | None, help_: str, desc: str
    ) -> argparse.ArgumentParser:
        q: argparse.ArgumentParser = group.add_parser(
            name,
            help=help_,
            description=desc,
            parents=[sub_common],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        q.set_defaults(handler=handler, usage_of=q)
        return q

    _add(
        sub,
        "check-config",
        cmd_check_config,
        "validate the configuration (exit 2 when invalid)",
        "Validate the config and the thresholds file. Every problem is printed at once as\n"
        "FILE: dotted.path: got VALUE, expected WHAT. Exit 0 when valid, 2 when not.",
    )

    serve = _add(
        sub,
        "serve",
        cmd_serve,
        "run the ingest API and the background jobs (until Ctrl-C or SIGTERM)",
        "Serve POST /api/v1/stations/{station}/measurements, /api/v1/time, /healthz,\n"
        "/readyz, /metrics and /openapi.json on listen.host:listen.port, writing to the\n"
        "configured sink; run the silent-station sweeper when status.sweeper is true.\n"
        "--workers N runs N processes on ports listen.port .. listen.port+N-1 (or --ports)\n"
        "for a reverse proxy to route stations over (deploy/nginx/collector.conf); a worker\n"
        "that dies is restarted on its port, with a warning. See docs/collector.md.",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="collector processes, each on its own port (default 1: this process serves)",
    )
    serve.add_argument(
        "--ports",
        metavar="LIST",
        help="the workers' ports, comma-separated (default: listen.port and the next N-1;"
        " one port: this process serves on it)",
    )
    serve.add_argument(
        "--shard-id",
        metavar="ID",
        help="this process's shard name (shard.id; default hostname:port; with --workers,"
        " each worker is ID:port)",
    )

    st_srv = _add(
        sub,
        "speedtest-server",
        None,
        "serve the Speedtest Mini endpoint alone (no config, no database)",
        "Serve the Speedtest-Mini-compatible endpoint (latency.txt, random{N}x{N}.jpg,\n"
        "upload.php) and the upload probe's sink, under any path prefix, without a config\n"
        "file or a database. `serve` mounts the same endpoint at /speedtest. For high\n"
        "concurrency serve the same paths with nginx: deploy/nginx/speedtest.conf and\n"
        "--write-files. See docs/collector.md.",
    )
    st_srv.set_defaults(standalone=cmd_speedtest_server)
    st_srv.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    st_srv.add_argument("--port", type=int, default=8081, help="listen port (default 8081)")
    st_srv.add_argument(
        "--workers", type=int, default=1, help="worker processes (default 1; one per core)"
    )
    st_srv.add_argument(
        "--write-files",
        metavar="DIR",
        help="write the random{N}x{N}.jpg files for nginx into DIR (about 103 MB) and exit",
    )

    status = _add(
        sub,
        "status",
        cmd_status,
        "control-room view: stations per status and province, worst and silent stations",
        "Read the latest station_status point of every station from InfluxDB (InfluxQL) and\n"
        "show counts per status per province, the worst stations first and the silent ones.\n"
        "Needs an InfluxQL endpoint (InfluxDB 1.x, or 2.x/3.x's v1 API).",
    )
    status.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    status.add_argument(
        "--interval",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="refresh interval with --watch (default 10)",
    )
    status.add_argument(
        "--window",
        default="1d",
        metavar="DURATION",
        help="how far back to look for status points, InfluxQL duration (default 1d)",
    )
    status.add_argument("--top", type=int, default=15, help="rows per station table (default 15)")
    status.add_argument("--json", action="store_true", help="one JSON object per station")

    from collector.report import command as report_command

    rep = _add(sub, "report", cmd_report, report_command.HELP, report_command.DESCRIPTION)
    report_command.add_arguments(rep)

    stations = _add(
        sub,
        "stations",
        None,
        "the station registry: import, list",
        "The station registry: every station's name, province, regency, position, time\n"
        "zone and expected operator. The collector adds them to each record it stores.",
    )
    st = stations.add_subparsers(dest="stations_command", metavar="COMMAND")
    imp = _add(
        st,
        "import",
        cmd_stations_import,
        "add or update stations from a CSV file",
        "Add or update stations from a CSV file with the header\n"
        f"  {','.join(COLUMNS)}\n"
        "id: the 13-digit TPS code (10-digit village code + 3-digit TPS number) or another\n"
        "id of 1..64 letters, digits, '.', '_', '-' with a letter in it (a lab laptop);\n"
        "province and regency: as in the Kemendagri code table (collector/data/\n"
        "kemendagri_wilayah.csv), by name or code, any case: 'DKI Jakarta' or 31,\n"
        "'Kota Jakarta Pusat' or 3171; a TPS code must start with its regency's code;\n"
        "lat, lon: degrees; tz: Asia/Jakarta, Asia/Makassar or Asia/Jayapura;\n"
        "expected_operator: telkomsel, indosat, xlsmart, smartfren (plus the config's\n"
        "registry.extra_operators) or empty. Names such as 'Jakarta', 'Jabar' or 'XL' are\n"
        "refused with a 'did you mean'. Every problem is printed at once as\n"
        "FILE:LINE: column NAME: got VALUE, expected WHAT, and nothing is imported then\n"
        "(exit 2). Stations already in the registry are updated; stations not in the file\n"
        "are kept. Example: config/stations.example.csv",
    )
    imp.add_argument("file", metavar="FILE.csv", help="the stations CSV")
    ls = _add(
        st,
        "list",
        cmd_stations_list,
        "list the registered stations",
        "List the registered stations, ordered by id.",
    )
    ls.add_argument("--json", action="store_true", help="a JSON array of stations")

    agents = _add(
        sub,
        "agents",
        None,
        "agent tokens: add, list, revoke",
        "Agent tokens. An agent sends its token with every upload and may only write for\n"
        "the station, or the region prefix, that the token is scoped to. Tokens are stored\n"
        "hashed: a token is shown once, when it is added.",
    )
    ag = agents.add_subparsers(dest="agents_command", metavar="COMMAND")
    add = _add(
        ag,
        "add",
        cmd_agents_add,
        "issue a token for a station or a region",
        "Issue a token scoped to one station (--station, it must be in the registry) or to\n"
        "a region prefix of the TPS code (--region: 2 digits province, 4 regency,\n"
        "6 district, 10 village), for a technician's survey laptop.\n"
        "The token alone goes to stdout, so `... > token_file` keeps it; its token id and\n"
        "a reminder go to stderr. The token is shown only this once: it is stored hashed.\n"
        "Put it in the agent's config as collector.token or collector.token_file.\n"
        "Bulk provisioning: --all-stations --out FILE issues a token for every registered\n"
        "station that has no active station token yet, in one transaction, and writes\n"
        "`station,token_id,token` lines to FILE (created mode 0600; never overwritten).",
    )
    scope = add.add_mutually_exclusive_group(required=True)
    scope.add_argument("--station", metavar="ID", help="the station id (the 13-digit TPS code)")
    scope.add_argument("--region", metavar="PREFIX", help="a region prefix: 2, 4, 6 or 10 digits")
    scope.add_argument(
        "--all-stations",
        action="store_true",
        help="a token for every station without one (needs --out)",
    )
    add.add_argument("--out", metavar="FILE", help="with --all-stations: where the tokens go")
    add.add_argument("--note", default="", metavar="TEXT", help="who holds it, which device")
    al = _add(
        ag,
        "list",
        cmd_agents_list,
        "list tokens (never the tokens themselves)",
        "List every token: its id, scope, note, when it was created, last used (as\n"
        "recorded by the collector) and revoked. Tokens themselves are never shown.",
    )
    al.add_argument("--json", action="store_true", help="a JSON array of tokens")
    rv = _add(
        ag,
        "revoke",
        cmd_agents_revoke,
        "revoke a token by its token id, or a whole station",
        "Revoke a token by its token id (from `agents list`). Running collectors refuse it\n"
        "within a few seconds (they re-read the registry every 5 s). Exit 1 when no token\n"
        "has that id.\n"
        "--station ID revokes the station: every active token scoped to it and its unused\n"
        "enrolment codes (a device exchanging one is told the station was revoked). A new\n"
        "code from `agents enroll --station ID` enrols it again.",
    )
    rv.add_argument(
        "token_id", nargs="?", metavar="TOKEN_ID", help="the token id, as `agents list` shows"
    )
    rv.add_argument("--station", metavar="ID", help="revoke this station's tokens and codes")
    en = _add(
        ag,
        "enroll",
        cmd_agents_enroll,
        "issue single-use enrolment codes for stations (and a printable PDF sheet)",
        "Issue a short single-use enrolment code per station (10 letters and digits, such\n"
        "as 7KQ2M-9XD4T). On the device, `sinyal-agent enroll --collector URL CODE` exchanges\n"
        "it once for the station's token and config block. Codes are stored hashed and\n"
        "expire (--expires, default 14d); a used, expired or wrong code is refused, and\n"
        "failed attempts are rate limited per address. Stations must be in the registry.\n"
        "Prints station,name,code,expires_at (UTC) as CSV on stdout, or into --out FILE\n"
        "(created 0600, never overwritten). --pdf FILE writes a sheet for field teams: a\n"
        "card per station with its code, expiry in its own zone and a QR code of the command.",
    )
    which = en.add_mutually_exclusive_group(required=True)
    which.add_argument("--station", metavar="ID", help="one station id (the 13-digit TPS code)")
    which.add_argument(
        "--stations",
        metavar="FILE.csv",
        help="a CSV whose 'id' column lists the stations (the stations import format works)",
    )
    en.add_argument(
        "--expires", default="14d", metavar="DURATION", help="e.g. 36h, 14d (default 14d)"
    )
    en.add_argument("--out", metavar="FILE.csv", help="write the codes here instead of stdout")
    en.add_argument("--pdf", metavar="FILE.pdf", help="also write the printable sheet")
    en.add_argument(
        "--collector-url",
        metavar="URL",
        help="the collector's public URL, printed in the command on the sheet",
    )
    return p


def _setup_logging(verbose: bool) -> None:
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S%z")
    )
    root = logging.getLogger()
    root.handlers[:] = [h]
    # The CLI's own output is its result; registry INFO lines would only repeat it.
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)


def _problems(errors: list[str], doc: str, tail: str = "") -> None:
    for line in errors:
        print(line, file=sys.stderr)
    n = len(errors)
    print(f"{n} problem{'s' if n != 1 else ''}{tail}; see {doc}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    handler: Handler | None = args.handler
    standalone: Callable[[argparse.Namespace], int] | None = getattr(args, "standalone", None)
    if standalone is not None:  # needs no config file
        _setup_logging(bool(args.verbose))
        return standalone(args)
    if handler is None:  # no command, or a group such as `stations` without its command
        args.usage_of.print_help(sys.stderr)
        return EXIT_CONFIG
    _setup_logging(bool(args.verbose))
    try:
        cfg = collector_config.load(args.config or collector_config.default_config_path())
    except ConfigError as exc:
        _problems(exc.errors, "docs/collector.md")
        return EXIT_CONFIG
    try:
        return handler(args, cfg)
    except RegistryError as exc:
        _problems(exc.errors, "docs/collector.md", "; nothing was changed")
        return EXIT_CONFIG
    except ModuleNotFoundError as exc:
        top = (exc.name or "?").split(".")[0]
        print(
            f"sinyal-collector {args.command}: needs the Python package {top!r} of the "
            "'collector' extra, which this install lacks (an agent-only install?): install it "
            "with `pip install 'sinyal[collector]'`, or run this command on the control room's "
            "machine",
            file=sys.stderr,
        )
        return EXIT_MISSING
    except (sqlite3.Error, OSError) as exc:
        print(f"registry {cfg.registry_path}: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return 130


def _registry(cfg: CollectorConfig) -> Registry:
    return Registry(cfg.registry_path)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    # Registry values reach a terminal: control, bidi and zero-width characters shown escaped.
    rows = [[printable(str(v)) for v in row] for row in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    for row in (header, *rows):
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def cmd_check_config(args: argparse.Namespace, cfg: CollectorConfig) -> int:
    try:
        th = agent_thresholds.load(cfg.thresholds_file)
    except ConfigError as exc:
        _problems(exc.errors, "docs/collector.md")
        return EXIT_CONFIG
    url = urlsplit(cfg.sink.url)
    host = url.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{url.port}" if url.port else "")
    where = url._replace(netloc=netloc).geturl()  # without user:password@
    print(
        f"{cfg.path}: valid (listen {cfg.listen.host}:{cfg.listen.port}, sink {cfg.sink.kind} "
        f"{where} database {cfg.sink.database}, registry {cfg.registry_path}, "
        f"{len(th.metrics)} thresholds from {cfg.thresholds_file})"
    )
    return EXIT_OK


def cmd_status(args: argparse.Namespace, cfg: CollectorConfig) -> int:
    import dataclasses
    import json
    import re

    from rich.console import Console
    from rich.live import Live

    from collector import view
    from collector.sinks import QueryError, SinkUnavailable

    if not re.fullmatch(r"\d+[smhdw]", args.window):
        print(
            f"--window: got {args.window!r}, expected an InfluxQL duration such as 6h or 1d",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    if cfg.sink.kind != "v1":
        print(
            "status needs an InfluxQL endpoint: a v1 sink (InfluxDB 1.x, or 2.x/3.x's v1 API)",
            file=sys.stderr,
        )
        return EXIT_FAIL

    def rows() -> list[view.StationRow]:
        return view.fetch(cfg.sink, args.window)

    try:
        if args.json:
            for r in view.worst_first(rows()):
                print(json.dumps(dataclasses.asdict(r)))
            return EXIT_OK
        console = Console()
        if not args.watch:
            console.print(view.render(rows(), args.top))
            return EXIT_OK
        with Live(view.render(rows(), args.top), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(args.interval)
                live.update(view.render(rows(), args.top), refresh=True)
    except (SinkUnavailable, QueryError) as exc:
        print(f"status: {exc}", file=sys.stderr)
        return EXIT_FAIL


def cmd_serve(args: argparse.Namespace, cfg: CollectorConfig) -> int:
    import dataclasses

    from agent.contract.configkit import NAME_RE
    from collector.config import ShardConfig
    from collector.server import ListenError, serve
    from collector.workers import serve_workers, worker_ports

    logging.getLogger("sinyal").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if args.shard_id is not None:
        if not NAME_RE.fullmatch(args.shard_id):
            print(
                f"sinyal-collector serve: --shard-id: got {printable(args.shard_id)!r}, expected"
                " 1..64 letters, digits, '.', '_', ':' or '-'",
                file=sys.stderr,
            )
            return EXIT_CONFIG
        cfg = dataclasses.replace(cfg, shard=ShardConfig(args.shard_id))
    try:
        ports = worker_ports(cfg.listen.port, args.workers, args.ports)
    except ValueError as exc:
        print(f"sinyal-collector serve: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        if len(ports) == 1:  # this process serves, on --ports' port if given
            serve(dataclasses.replace(cfg, listen=dataclasses.replace(cfg.listen, port=ports[0])))
        else:
            return serve_workers(cfg, ports)
    except ListenError as exc:
        print(f"sinyal-collector serve: {exc}", file=sys.stderr)
        return EXIT_LISTEN
    return EXIT_OK


def cmd_speedtest_server(args: argparse.Namespace) -> int:
    from pathlib import Path

    from collector.speedtest import SpeedtestEndpoint

    if args.write_files:
        paths = SpeedtestEndpoint(block_bytes=2**20).write_files(Path(args.write_files))
        total = sum(p.stat().st_size for p in paths)
        print(f"{len(paths)} files, {total} bytes in {args.write_files}")
        return EXIT_OK
    import uvicorn

    logging.getLogger("sinyal").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    uvicorn.run(
        "collector.speedtest:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level="warning",
        access_log=False,
    )
    return EXIT_OK


def cmd_report(args: argparse.Namespace, cfg: CollectorConfig) -> int:
    from collector.report import command as report_command

    return report_command.run(args, cfg)


def cmd_stations_import(args: argparse.Namespace, cfg: CollectorConfig) -> int:
    with _registry(cfg) as reg:
        r = reg.import_stations_csv(args.file, Operators(cfg.registry.extra_operators))
    plural = "s" if r.total != 1 else ""
    print(
        f"imported {r.total} station{plural} ({r.added} added, {r.updated} updated, "
        f"{r.unchanged} unchanged) into {cfg.registry_path}"
    )
    return EXIT_OK


def cmd_stations_list(args: argparse.Namespace, cfg: CollectorConfig) -> int:
    with _registry(cfg) as reg:
        stations = reg.stations()
    if args.json:
        print(json.dumps([s.to_dict() for s in stations], indent=2, ensure_ascii=False))
        return EXIT_OK
    if not stations:
        print(
            "no stations in the registry; add them with: sinyal-collector stations import FILE.csv",
            file=sys.stderr,
        )
        return EXIT_OK
    _table(
        ("ID", "NAME", "PROVINCE", "REGENCY", "LAT", "LON", "TZ", "OPERATOR"),
        [
            (
                s.id,
                s.name,
                s.province,
                s.regency,
                f"{s.lat:.5f}",
                f"{s.lon:.5f}",
                s.tz,
                s.expected_operator or "-",
            )
            for s in stations
        ],
    )
    return EXIT_OK


def cmd_agents_add(args: argparse.Namespace, cfg: CollectorConfig) -> int:
    if args.all_stations:
        return _agents_add_all(args, cfg)
    if args.out is not None:
        print("error: --out goes with --all-stations", file=sys.stderr)
        return EXIT_CONFIG
    with _registry(cfg) as reg:
        info, token = reg.add_token(station=args.station, region=args.region, note=args.note)
        covered = None
        if info.scope_kind == "region":
            covered = sum(1 for s in reg.stations() if info.allows(s.id))
    print(token)
    sys.stdout.flush()
    err = sys.stderr
    print(f"token id {info.id}, scoped to {info.scope}", file=err)
    if covered == 0:
        print(f"note: no station in the registry starts with {info.scope_value} yet", file=err)
    print(
        "WARNING: this is the only time the token is shown; it is stored hashed and cannot\n"
        "be recovered. Put it in the agent's config (collector.token or collector.token_file).\n"
        f"If it is lost, revoke it (sinyal-collector agents revoke {info.id}) and add a new one.",
        file=err,
    )
    return EXIT_OK


def _agents_add_all(args: argparse.Namespace, cfg: CollectorConfig) -> int:
    if not args.out:
        print("error: --all-stations needs --out FILE for the tokens", file=sys.stderr)
        return EXIT_CONFIG
    out = Path(args.out)
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        print(f"error: {out}: cannot create ({exc.strerror}); it must not exist", file=sys.stderr)
        return EXIT_CONFIG
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f, _registry(cfg) as reg:
            have = {
                t.scope_value for t in reg.list_tokens() if t.active and t.scope_kind == "station"
            }
            todo = [s.id for s in reg.stations() if s.id not in have]
            issued = reg.add_tokens([(sid, None) for sid in todo], note=args.note)
            f.write("station,token_id,token\n")
            f.writelines(f"{info.scope_value},{info.id},{token}\n" for info, token in issued)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        out.unlink(missing_ok=True)  # no half-written token file
        raise
    print(
        f"{len(issued)} tokens issued ({len(have)} stations already had one); tokens in {out}."
        " Keep that file secret and delete it once the agents have their tokens.",
        file=sys.stderr,
    )
    return EXIT_OK


def cmd_agents_list(args: argparse.Namespace, cfg: CollectorConfig) -> int:
    with _registry(cfg) as reg:
        tokens = reg.list_tokens()
    if args.json:
        print(json.dumps([t.to_dict() for t in tokens], indent=2, ensure_ascii=False))
        return EXIT_OK
    if not tokens:
        print(
            "no tokens; issue one with: sinyal-collector agents add --station ID", file=sys.stderr
        )
        return EXIT_OK
    _table(
        ("TOKEN ID", "SCOPE", "CREATED", "LAST USED", "REVOKED", "NOTE"),
        [
            (
                t.id,
                t.scope,
                t.created_at,
                t.last_used_at or "-",
                t.revoked_at or "-",
                t.note,
            )
            for t in tokens
        ],
    )
    return EXIT_OK


def cmd_agents_revoke(args: argparse.Namespace, cfg: CollectorConfig) -> int:
    if (args.token_id is None) == (args.station is None):
        print("error: give a TOKEN_ID or --station ID (one of them)", file=sys.stderr)
        return EXIT_CONFIG
    if args.station is not None:
        from collector.enrolment import Enrolment

        with _registry(cfg) as reg, Enrolment(reg) as enrolment:
            if reg.get_station(args.station) is None:
                print(f"no station {args.station!r} in the registry", file=sys.stderr)
                return EXIT_FAIL
            codes, tokens = enrolment.revoke_station(args.station)
        ids = ", ".join(t.id for t in tokens) or "none"
        print(
            f"revoked station {args.station}: {len(tokens)} token(s) ({ids}), "
            f"{codes} unused enrolment code(s)"
        )
        return EXIT_OK
    with _registry(cfg) as reg:
        before = reg.get_token(args.token_id)
        if before is None or not reg.revoke(args.token_id):
            print(
                f"no token with id {args.token_id!r}; see: sinyal-collector agents list",
                file=sys.stderr,
            )
            return EXIT_FAIL
    if before.revoked_at is not None:
        print(f"token {before.id} ({before.scope}) was already revoked at {before.revoked_at}")
    else:
        print(f"revoked token {before.id} ({before.scope})")
    return EXIT_OK


def _station_ids_from_csv(path: Path) -> list[str]:
    import csv

    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as exc:
        raise RegistryError([f"{path}: cannot read: {exc}"]) from None
    if not rows:
        raise RegistryError([f"{path}: empty, expected a header with an 'id' column"])
    header = [h.strip().lower() for h in rows[0]]
    column = next((c for c in ("id", "station") if c in header), None)
    if column is None:
        raise RegistryError([f"{path}:1: got columns {rows[0]}, expected an 'id' column"])
    i = header.index(column)
    return [r[i].strip() for r in rows[1:] if len(r) > i and r[i].strip()]


def cmd_agents_enroll(args: argparse.Namespace, cfg: CollectorConfig) -> int:
    import csv
    import io

    from collector.enrolment import Enrolment, parse_duration

    expiry = parse_duration(args.expires)
    if expiry is None:
        print(
            f"--expires: got {args.expires!r}, expected minutes, hours or days such as 90m, "
            "36h or 14d (1 minute..365 days)",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    if args.pdf and os.path.lexists(args.pdf):
        print(f"error: --pdf {args.pdf}: exists; the sheet is never written over a file",
              file=sys.stderr)  # fmt: skip
        return EXIT_CONFIG
    if args.collector_url and not args.collector_url.startswith(("http://", "https://")):
        print(f"--collector-url: got {args.collector_url!r}, expected an http(s) URL",
              file=sys.stderr)  # fmt: skip
        return EXIT_CONFIG
    ids = [args.station] if args.station else _station_ids_from_csv(Path(args.stations))
    if not ids:
        print(f"{args.stations}: no station ids", file=sys.stderr)
        return EXIT_CONFIG
    with _registry(cfg) as reg:
        missing = [sid for sid in ids if reg.get_station(sid) is None]
        if missing:
            _problems(
                [
                    f"station: got {_show_id(s)}, expected a station in the registry"
                    for s in missing
                ],
                "docs/collector.md",
                "; no code was issued (import the stations first)",
            )
            return EXIT_CONFIG
        with Enrolment(reg) as enrolment:
            issued = enrolment.issue(list(dict.fromkeys(ids)), expiry)
    text = io.StringIO()
    w = csv.writer(text, lineterminator="\n")
    w.writerow(["station", "name", "code", "expires_at"])
    w.writerows([c.station.id, c.station.name, c.code, c.expires_at] for c in issued)
    if args.out:
        out = Path(args.out)
        try:
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            print(f"error: {out}: cannot create ({exc.strerror}); it must not exist",
                  file=sys.stderr)  # fmt: skip
            return EXIT_CONFIG
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text.getvalue())
    else:
        sys.stdout.write(text.getvalue())
    if args.pdf:
        from collector.enrolsheet import write_pdf

        write_pdf(Path(args.pdf), issued, args.collector_url)
    where = f" in {args.out}" if args.out else ""
    sheet = f", sheet {args.pdf}" if args.pdf else ""
    print(
        f"{len(issued)} enrolment code(s) issued{where}{sheet}, single use, expiring "
        f"{issued[0].expires_at}. On the device: sinyal-agent enroll --collector URL CODE",
        file=sys.stderr,
    )
    return EXIT_OK


def _show_id(value: str) -> str:
    return repr(value) if len(value) <= 80 else repr(value[:77] + "...")


if __name__ == "__main__":
    sys.exit(main())
