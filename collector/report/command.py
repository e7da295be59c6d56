"""`sinyal-collector report`: the options, a rich progress bar, the user's errors."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from agent.contract import thresholds as agent_thresholds
from agent.contract.configkit import ConfigError
from collector.config import CollectorConfig
from collector.report.scope import DEFAULT_INTERVAL_S, FORMATS, ReportRequest

log = logging.getLogger("sinyal.collector.report")

HELP = "regulator QoS report: CSV, XLSX, PDF, HTML, in Indonesian or English"
DESCRIPTION = """\
A QoS report for a period in local time, per operator nationally and per province (and
regency with --by-regency), per station, with coverage, each figure's method and verdicts
against the thresholds file (each printed with its source). Files go to --out DIR with a
manifest.json holding the SHA-256 of every file. Reads InfluxDB through InfluxQL (1.x, or
2.x/3.x's v1 API). Exit 0 ok, 1 for a period without data, in the future, an unknown
province/operator/station or a database that does not answer (no file is left then),
2 for invalid config. See docs/reports.md."""

EPILOG = """\
examples:
  sinyal-collector report --from 2026-12-02 --to 2026-12-03 --out /tmp/r
  sinyal-collector report --from 2026-12-03 --to 2026-12-03 --voting-hours \\
      --province "Sulawesi Selatan" --lang en --format csv,pdf --out /tmp/r2
  sinyal-collector report --from "2026-12-03T18:00" --to "2026-12-04T06:00" --zone WIT \\
      --operator telkomsel --format xlsx --out /tmp/r3
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = EPILOG
    p.add_argument(
        "--from",
        dest="start",
        required=True,
        metavar="DATE|TIME",
        help="start, local: YYYY-MM-DD (00:00) or YYYY-MM-DDTHH:MM (included)",
    )
    p.add_argument(
        "--to",
        dest="end",
        required=True,
        metavar="DATE|TIME",
        help="end, local: YYYY-MM-DD (the whole day) or YYYY-MM-DDTHH:MM (excluded)",
    )
    p.add_argument(
        "--zone",
        choices=("WIB", "WITA", "WIT"),
        help="read --from/--to in this zone for every station (default: each station's own zone)",
    )
    p.add_argument("--province", metavar="NAME", help="one province (registry name)")
    p.add_argument("--regency", metavar="NAME", help="one regency (registry name)")
    p.add_argument("--operator", metavar="NAME", help="one operator (the uplinks' operator tag)")
    p.add_argument("--station", metavar="ID", help="one station id")
    p.add_argument(
        "--voting-hours",
        action="store_true",
        help="only 07:00-13:00 of each day, in each station's own local time",
    )
    p.add_argument("--by-regency", action="store_true", help="add a table per operator and regency")
    p.add_argument(
        "--lang",
        choices=("id", "en"),
        default="id",
        help="language of the report (default id: Indonesian)",
    )
    p.add_argument(
        "--format",
        default="csv,xlsx,pdf",
        metavar="LIST",
        help=f"comma-separated, some of {','.join(FORMATS)} (default csv,xlsx,pdf)",
    )
    p.add_argument(
        "--interval",
        type=float,
        default=DEFAULT_INTERVAL_S,
        metavar="SECONDS",
        help="the agents' icmp interval_s, for rounds expected (default 60)",
    )
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="directory for the files (created; must not hold a report yet)",
    )


def request_from(args: argparse.Namespace) -> ReportRequest:
    return ReportRequest(
        start=args.start,
        end=args.end,
        zone=args.zone,
        province=args.province,
        regency=args.regency,
        operator=args.operator,
        station=args.station,
        voting_hours=bool(args.voting_hours),
        lang=args.lang,
        formats=tuple(f.strip() for f in str(args.format).split(",") if f.strip()),
        by_regency=bool(args.by_regency),
        interval_s=float(args.interval),
    )


def run(args: argparse.Namespace, cfg: CollectorConfig) -> int:
    # The report's libraries (InfluxDB client, matplotlib, WeasyPrint...) are loaded here,
    # not when the command line is parsed.
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from collector.registry import Registry
    from collector.report.api import (
        QueryError,
        ReportError,
        SinkUnavailable,
        make_report,
        query_count,
    )
    from collector.report.i18n import Lang
    from collector.report.render import write_all

    err = Console(stderr=True)
    try:
        th = agent_thresholds.load(cfg.thresholds_file)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return 2
    req = request_from(args)
    with Registry.for_config(cfg) as reg:
        stations = reg.stations()
    if not stations:
        print(f"report: the registry {cfg.registry_where} holds no stations; run "
              "`sinyal-collector stations import FILE` first", file=sys.stderr)  # fmt: skip
        return 1
    out = Path(args.out)
    try:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            transient=True,
            disable=not err.is_terminal,
        ) as bar:
            total = query_count(req, th)
            task = bar.add_task("querying InfluxDB", total=total)
            report = make_report(cfg.sink, req, stations, th, lambda _n: bar.advance(task))
            steps = bar.add_task("writing files", total=len(req.formats) + 1)
            files = write_all(
                report, Lang(req.lang), req.formats, out, lambda _n: bar.advance(steps)
            )
    except ReportError as exc:
        print(f"report: {exc}", file=sys.stderr)
        return 1
    except SinkUnavailable as exc:
        print(f"report: the database does not answer: {exc}; no file was written",
              file=sys.stderr)  # fmt: skip
        return 1
    except QueryError as exc:
        print(f"report: the database refused a query: {exc}", file=sys.stderr)
        return 1
    except FileExistsError as exc:
        print(f"report: --out {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"report: --out {out}: {exc}; no file was written", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug: say so in one line; -v logs the traceback
        log.debug("report failed", exc_info=True)
        print(f"report: internal error ({type(exc).__name__}: {exc}); no file was written; "
              "run with -v for details and report it", file=sys.stderr)  # fmt: skip
        return 1
    for f in files:
        print(f)
    return 0
