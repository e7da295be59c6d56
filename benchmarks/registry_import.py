"""How long `stations import` takes to read and check a national registry.

Generates registries of well-formed TPS codes spread over all 514 regencies of the Kemendagri
table, and one where every row names its province "Jakarta" (every row refused, each with a
"did you mean"), then times `read_stations_csv` (parse + every check, as `stations import`
does before it writes) and the import into a fresh SQLite registry.

    python benchmarks/registry_import.py [--sizes 100000,823220] [--write]

--write records the results in benchmarks/results/registry-import.md.
"""

from __future__ import annotations

import argparse
import csv
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import RESULTS, machine

from collector.regions import Operators, tps_code, tps_shape_problem, wilayah
from collector.registry import COLUMNS, Registry, RegistryError, read_stations_csv


def write_registry(path: Path, n: int, province: str | None = None) -> None:
    w = wilayah()
    regencies = list(w.regencies.values())
    with path.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(COLUMNS)
        for i in range(n):
            r = regencies[i % len(regencies)]
            p = w.province_of(r)
            sid = tps_code(r.code, i // len(regencies))
            out.writerow(
                [sid, f"TPS {sid}", province or p.name, r.name, -6.2, 106.8, r.tz, "telkomsel"]
            )


def checks_alone(path: Path) -> int:
    """Only the registry-quality checks of every row (the same calls the reader makes)."""
    w, ops, problems = wilayah(), Operators(), 0
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            problems += tps_shape_problem(row["id"]) is not None
            problems += len(w.check_place(row["id"], row["province"], row["regency"]).problems)
            problems += ops.resolve(row["expected_operator"]) is None
    return problems


def timed(fn: object, *args: object) -> tuple[float, object]:
    t = time.perf_counter()
    try:
        result = fn(*args)  # type: ignore[operator]
    except RegistryError as exc:
        result = exc
    return time.perf_counter() - t, result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100000,823220")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            good = Path(tmp) / f"good-{n}.csv"
            write_registry(good, n)
            read_s, stations = timed(read_stations_csv, good)
            assert isinstance(stations, list) and len(stations) == n
            del stations
            checks_s, problems = timed(checks_alone, good)
            assert problems == 0
            reg = Registry(Path(tmp) / f"registry-{n}.sqlite3")
            import_s, _ = timed(reg.import_stations_csv, good)
            reg.close()
            bad = Path(tmp) / f"bad-{n}.csv"
            write_registry(bad, n, province="Jakarta")
            bad_s, err = timed(read_stations_csv, bad)
            assert isinstance(err, RegistryError) and len(err.errors) == n
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            rows.append((n, read_s, checks_s, import_s, bad_s, rss))
            print(
                f"{n:>8} rows: read+check {read_s:6.2f} s ({n / read_s:,.0f} rows/s),"
                f" checks alone {checks_s:6.2f} s,"
                f" import {import_s:6.2f} s, all refused {bad_s:6.2f} s, peak RSS {rss:.0f} MB"
            )
    if args.write:
        lines = [
            "# Registry import: reading and checking a national stations CSV",
            "",
            "`python benchmarks/registry_import.py --write`: registries of well-formed TPS codes",
            "over all 514 regencies; `read+check` is `read_stations_csv` (parse and every check of",
            "docs/collector.md), `import` the same plus the upsert into a fresh SQLite registry,",
            "`checks alone` only the registry-quality checks of every row (TPS code shape,",
            "province, regency and prefix, operator: collector/regions.py) after a plain",
            "csv.DictReader, `all refused` a file whose every row says province `Jakarta` (every",
            'row an error with a "did you mean"). One run each, on a machine shared with other',
            "work; peak RSS of the whole process so far.",
            "",
            f"Machine: {machine()}",
            "",
            "| rows | read+check (s) | rows/s | checks alone (s) | import (s) | all refused (s)"
            " | peak RSS (MB) |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for n, read_s, checks_s, import_s, bad_s, rss in rows:
            lines.append(
                f"| {n:,} | {read_s:.2f} | {n / read_s:,.0f} | {checks_s:.2f} | {import_s:.2f}"
                f" | {bad_s:.2f}"
                f" | {rss:.0f} |"
            )
        (RESULTS / "registry-import.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
