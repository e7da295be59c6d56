"""How long `stations import` takes to read and check a national registry.

Generates registries of well-formed TPS codes spread over all 514 regencies of the Kemendagri
table, and one where every row names its province "Jakarta" (every row refused, each with a
"did you mean"), then times `read_stations_csv` (parse + every check, as `stations import`
does before it writes) and the import into a fresh SQLite registry.

    python benchmarks/registry_import.py [--sizes 100000,823220] [--write]
    python benchmarks/registry_import.py --backends [--stations 100000] [--tokens 150000] [--write]

--backends compares the registry on SQLite and on PostgreSQL (a throwaway cluster of
Debian's postgresql, fsync on, started by tests/harness/postgres.py): the import of the
stations, the issue of the tokens in one transaction, opening a registry that holds them
(the full load), the token lookup, the incremental reload after a revocation or new
tokens, the lookup's latency while reloads run in the background thread, and how long a
revocation takes to reach a second instance with the default re-read interval.

--write records the results in benchmarks/results/registry-import.md (each mode its own
section).
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

BACKENDS_HEADING = "## The registry on SQLite and on PostgreSQL"


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
    ap.add_argument("--backends", action="store_true", help="SQLite vs PostgreSQL")
    ap.add_argument("--stations", type=int, default=100_000)
    ap.add_argument("--tokens", type=int, default=150_000)
    args = ap.parse_args()
    if args.backends:
        return backends(args.stations, args.tokens, args.write)
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
        write_section(None, "\n".join(lines) + "\n")
    return 0


def write_section(heading: str | None, text: str) -> None:
    """Replace one part of the results file: the first (heading None) or the backends
    section, keeping the other."""
    path = RESULTS / "registry-import.md"
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    first, _, rest = old.partition(BACKENDS_HEADING)
    if heading is None:
        new = text + ("\n" + BACKENDS_HEADING + rest if rest else "")
    else:
        new = first.rstrip("\n") + "\n\n" + text
    path.write_text(new, encoding="utf-8")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def lookup_cost(reg: Registry, tokens: list[str], n: int = 200_000) -> float:
    """Mean µs of authenticate() on known tokens (the cache, with the SHA-256)."""
    t = time.perf_counter()
    for i in range(n):
        reg.authenticate(tokens[i % len(tokens)])
    return (time.perf_counter() - t) / n * 1e6


def lookups_during_reloads(
    reg: Registry, writer: Registry, tokens: list[str], s: float
) -> tuple[float, float, int]:
    """p50/p99 µs of single authenticate() calls on this thread while the background thread
    re-reads after changes the writer makes (a revocation or 1,000 new tokens, by turns)."""
    import threading

    stop = threading.Event()
    changes = 0
    victims = [t.id for t in reg.list_tokens()[:1000]]

    def churn() -> None:
        nonlocal changes
        i = 0
        while not stop.is_set():
            if i % 2:
                writer.add_tokens([(None, "31")] * 1000, note="churn")
            else:
                writer.revoke(victims[i // 2 % len(victims)])
            changes += 1
            i += 1
            stop.wait(0.5)

    reg.start_background()
    thread = threading.Thread(target=churn, daemon=True)
    thread.start()
    samples: list[float] = []
    end = time.monotonic() + s
    i = 0
    while time.monotonic() < end:
        t = time.perf_counter()
        reg.authenticate(tokens[i % len(tokens)])
        samples.append(time.perf_counter() - t)
        i += 1
        if i % 1000 == 0:
            time.sleep(0.001)  # leave the GIL to the reload, as a server between requests does
    stop.set()
    thread.join()
    reg.stop_background()
    return percentile(samples, 0.5) * 1e6, percentile(samples, 0.99) * 1e6, changes


def revocation_delay(writer: Registry, target: str | Path, password: str | None) -> list[float]:
    """Seconds from revoke() returning until a second instance, re-reading in its background
    thread at the default interval, refuses the token. Five revocations."""
    server = Registry(target, password=password)
    server.start_background()
    delays = []
    for _ in range(5):
        info, token = writer.add_token(region="31")
        deadline = time.monotonic() + 30
        while server.authenticate(token) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        writer.revoke(info.id)
        t = time.monotonic()
        while server.authenticate(token) is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        delays.append(time.monotonic() - t)
    server.stop_background()
    server.close()
    return delays


def one_backend(name: str, target: str | Path, password: str | None, csv_path: Path,
                n_tokens: int) -> dict[str, object]:  # fmt: skip
    r: dict[str, object] = {"backend": name}
    reg = Registry(target, password=password)
    r["import_s"], _ = timed(reg.import_stations_csv, csv_path)
    r["reimport_s"], _ = timed(reg.import_stations_csv, csv_path)  # every row unchanged
    ids = [s.id for s in reg.stations()]
    scopes = [(ids[i % len(ids)], None) for i in range(n_tokens)]
    r["tokens_s"], issued = timed(reg.add_tokens, scopes)
    tokens = [t for _, t in issued]  # type: ignore[attr-defined]
    reg.close()
    r["open_s"], reg = timed(lambda: Registry(target, password=password))
    assert isinstance(reg, Registry)
    r["lookup_us"] = lookup_cost(reg, tokens)
    writer = Registry(target, password=password)
    victim = reg.list_tokens()[0]
    writer.revoke(victim.id)
    r["reload_revoke_s"], _ = timed(reg._reload)
    writer.add_tokens([(None, "31")] * 1000)
    r["reload_add_s"], _ = timed(reg._reload)
    r["reload_full_s"], _ = timed(reg._reload, True)
    p50, p99, changes = lookups_during_reloads(reg, writer, tokens, 10.0)
    r["during_p50_us"], r["during_p99_us"], r["changes"] = p50, p99, changes
    delays = revocation_delay(writer, target, password)
    r["revoke_max_s"], r["revoke_mean_s"] = max(delays), sum(delays) / len(delays)
    writer.close()
    reg.close()
    return r


def backends(n_stations: int, n_tokens: int, write: bool) -> int:
    from tests.harness.postgres import pg_bin, postgres

    found = pg_bin()
    if found is None:
        print("needs PostgreSQL's server binaries (apt-get install postgresql)", file=sys.stderr)
        return 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp, postgres(found, durable=True) as server:
        good = Path(tmp) / "stations.csv"
        write_registry(good, n_stations)
        for name, target, password in (
            ("SQLite", Path(tmp) / "registry.sqlite3", None),
            ("PostgreSQL 15", server.create_database(), server.password),
        ):
            r = one_backend(name, target, password, good, n_tokens)
            print(r)
            rows.append(r)
    if write:
        lines = [
            BACKENDS_HEADING,
            "",
            "`python benchmarks/registry_import.py --backends --stations N --tokens M --write`:",
            f"the same registry ({n_stations:,} stations of the generator above, then",
            f"{n_tokens:,} station tokens issued in one `add_tokens` transaction) on a SQLite",
            "file and on a PostgreSQL 15 database (a throwaway cluster of Debian's package on",
            "loopback TCP with a password, fsync on: tests/harness/postgres.py), one after the",
            "other in one run. `open` is a new `Registry` loading every token; `lookup` the mean",
            "of `authenticate()` (SHA-256 and the in-memory cache, the same code on both);",
            "`reload` the re-read after another instance revoked one token, after it added",
            "1,000, and a forced full re-read; `during reloads` single `authenticate()` calls on",
            "one thread for 10 s while the background thread re-reads after a revocation or",
            "1,000 new tokens every 0.5 s; `revocation` the time from `revoke()` returning until",
            "a second instance (background re-read at the default 2 s) refuses the token, five",
            "times.",
            "",
            f"Machine: {machine()}",
            "",
            "| | import (s) | re-import (s) | issue tokens (s) | open (s) | lookup (µs)"
            " | reload: 1 revoked (ms) | reload: 1,000 added (ms) | full reload (s)"
            " | during reloads p50 / p99 (µs) | revocation mean / max (s) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            lines.append(
                f"| {r['backend']} | {r['import_s']:.2f} | {r['reimport_s']:.2f}"
                f" | {r['tokens_s']:.2f} | {r['open_s']:.2f} | {r['lookup_us']:.1f}"
                f" | {float(r['reload_revoke_s']) * 1e3:.1f}"  # type: ignore[arg-type]
                f" | {float(r['reload_add_s']) * 1e3:.1f}"  # type: ignore[arg-type]
                f" | {r['reload_full_s']:.2f}"
                f" | {r['during_p50_us']:.1f} / {r['during_p99_us']:.1f}"
                f" | {r['revoke_mean_s']:.2f} / {r['revoke_max_s']:.2f} |"
            )
        write_section(BACKENDS_HEADING, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
