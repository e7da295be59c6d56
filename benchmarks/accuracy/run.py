"""Accuracy of Sinyal's measurements on field-lab links, against fping, iperf3 and the truth.

On a station of the field lab (tests/harness/lab), with imposed delays of 20, 150 and 400 ms
(with and
without uniform jitter of a quarter of the delay), losses of 0, 1, 5 and 20 % and tbf rates of
2, 10 and 50 Mbit/s, compares:

- Sinyal's ICMP round (`sinyal-agent once --json`) with an `fping -C` round of the same size
  run at the same time on the same path, and both with the imposed delay / loss;
- iperf3's TCP goodput with the imposed rate; Sinyal's throughput probe where this branch
  has one (`agent.probes.REGISTRY["throughput"]`; give its config section with
  --throughput-config), else a line saying it is not available.

First it measures the delay element's own error (0 ms through it; 20 ms). Targets: RTT
median within max(1 ms, 3 %) of fping; loss within the binomial 99 % interval of the
imposed probability; throughput within 10 % of iperf3.

    sudo .venv/bin/python benchmarks/accuracy/run.py [--quick] [--only throughput]
Writes benchmarks/results/accuracy.md (all sections, in one run). Needs root, fping and
iperf3; about 6 minutes. --only runs one section and prints its rows without writing the file.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import yaml  # noqa: E402
from common import RESULTS, machine  # noqa: E402

from agent.probes import REGISTRY  # noqa: E402
from tests.harness.lab import Lab, Station  # noqa: E402
from tests.harness.lab.measure import (  # noqa: E402
    binomial_interval,
    expected_goodput_mbit,
    fping,
    iperf3,
    sinyal_and_fping,
    sinyal_once,
    tcp_goodput_mbit,
)

DELAYS_MS = (20.0, 150.0, 400.0)
LOSSES_PCT = (0.0, 1.0, 5.0, 20.0)
RATES = ((2.0, None), (10.0, None), (50.0, None), (10.0, 150.0), (50.0, 20.0))  # Mbit/s, ms


@dataclass
class Plan:
    rtt_count: int = 200  # pings per round without jitter, 50 ms apart
    rtt_rounds: int = 2
    jitter_count: int = 1000  # with jitter, 10 ms apart: the sample median varies by J/sqrt(n)
    jitter_rounds: int = 2
    loss_count: int = 1000
    iperf_s: float = 5
    element_count: int = 300


QUICK = Plan(50, 1, 200, 1, 300, 2, 100)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def element_error(lab: Lab, st: Station, plan: Plan) -> tuple[list[str], float]:
    """Rows on the delay element's own error; returns the bypass median RTT (ms)."""
    addr, n = lab.core().addr, plan.element_count
    lab.impair(st, delay_ms=None)
    base = fping(st, addr, n, 10).rtts
    lab.impair(st, delay_ms=0)
    zero = fping(st, addr, n, 10).rtts
    lab.impair(st, delay_ms=20)
    twenty = fping(st, addr, n, 10).rtts
    stats = lab.delay_element().stats()
    lab.impair(st, delay_ms=None)
    b = statistics.median(base)
    rows = [
        "| path | fping median | p99 | max | error vs configured |",
        "|---|---|---|---|---|",
        f"| veth, not through the element | {b:.3f} ms | {pct(base, 99):.3f} | "
        f"{max(base):.3f} | (the base RTT) |",
    ]
    for label, rtts, d in (("element, 0 ms", zero, 0.0), ("element, 20 ms", twenty, 20.0)):
        m = statistics.median(rtts)
        rows.append(
            f"| {label} | {m:.3f} ms | {pct(rtts, 99):.3f} | {max(rtts):.3f} | "
            f"median +{m - b - d:.3f} ms, p99 +{pct(rtts, 99) - b - d:.3f} ms |"
        )
    rows.append("")
    rows.append(
        f"Element's release lateness (its own timer, last {min(stats['delayed'], 10000)} "
        f"packets): median {stats['late_p50_us']:.0f} µs, max {stats['late_max_us']:.0f} µs; "
        f"{n} pings per row, 10 ms apart."
    )
    return rows, b


def rtt_rows(lab: Lab, st: Station, plan: Plan, base: float, tmp: Path) -> list[str]:
    addr = lab.core().addr
    rows = [
        "| delay | jitter | pings (each tool) | Sinyal p50 | fping median | Sinyal − fping "
        "| allowed | sampling sd of the difference | truth (delay + base) | Sinyal − truth "
        "| fping − truth | ok |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for delay in DELAYS_MS:
        for jitter in (0.0, delay / 4):
            lab.impair(st, delay_ms=delay, jitter_ms=jitter, keep_order=not jitter)
            count = plan.jitter_count if jitter else plan.rtt_count
            rounds = plan.jitter_rounds if jitter else plan.rtt_rounds
            spacing = 0.01 if jitter else 0.05
            ours: list[float] = []
            theirs: list[float] = []
            for r in range(rounds):
                fields, ping = sinyal_and_fping(
                    st, addr, tmp / f"rtt-{delay}-{jitter}-{r}", count=count, spacing_s=spacing
                )
                ours.append(fields["rtt_p50_ms"])
                theirs.append(statistics.median(ping.rtts))
            s, f = statistics.median(ours), statistics.median(theirs)
            allowed = max(1.0, 0.03 * f)
            truth = delay + base
            # Median of n draws from uniform ±J: sd J/sqrt(n); two tools, independent draws.
            sampling = math.sqrt(2) * jitter / math.sqrt(count * rounds)
            ok = "yes" if abs(s - f) <= allowed else "no"
            rows.append(
                f"| {delay:g} ms | ±{jitter:g} ms | {count * rounds} | {s:.3f} | {f:.3f} | "
                f"{s - f:+.3f} | ±{allowed:.2f} | {sampling:.2f} | {truth:.3f} | "
                f"{s - truth:+.3f} | {f - truth:+.3f} | {ok} |"
            )
            print(rows[-1], flush=True)
    lab.clear(st)
    return rows


def loss_rows(lab: Lab, st: Station, plan: Plan, tmp: Path) -> list[str]:
    addr, n = lab.core().addr, plan.loss_count
    rows = [
        "| imposed loss | pings (each tool) | 99 % interval of lost | Sinyal lost | fping lost "
        "| Sinyal loss_pct | ok |",
        "|---|---|---|---|---|---|---|",
    ]
    for loss in LOSSES_PCT:
        lab.impair(st, loss_pct=loss)
        fields, ping = sinyal_and_fping(
            st, addr, tmp / f"loss-{loss}", count=n, spacing_s=0.01, timeout_s=1.0
        )
        lo, hi = binomial_interval(n, loss / 100, 0.99)
        lost = fields["sent"] - fields["received"]
        ok = "yes" if lo <= lost <= hi and lo <= ping.lost <= hi else "no"
        rows.append(
            f"| {loss:g} % | {n} | [{lo}, {hi}] | {lost} | {ping.lost} | "
            f"{fields['loss_pct']:g} % | {ok} |"
        )
        print(rows[-1], flush=True)
    lab.clear(st)
    return rows


# Sinyal's throughput probe against the core's Speedtest Mini endpoint
# (`sinyal-collector speedtest-server`), 10 s per direction, as iperf3 runs.
SPEEDTEST_PORT = 8081
DEFAULT_THROUGHPUT = {
    "backend": "mini",
    "url": "http://{server}:{port}/",
    "name": "core",
    "interval_s": 21600,
    "duration_s": 10,
    "timeout_s": 60,
}


def sinyal_throughput(
    st: Station, server: tuple[str, int], section: dict[str, Any] | None, tmp: Path
) -> tuple[float, float] | str:
    """Sinyal's (download, upload) Mbit/s on this path, or why there is none.

    The config section is DEFAULT_THROUGHPUT or --throughput-config, with "{server}" and
    "{port}" replaced by the core's speedtest endpoint; the record's download_mbps /
    upload_mbps fields are read (docs/data-model).
    """
    if "throughput" not in REGISTRY:
        return "not available (agent.probes has no `throughput` probe)"
    section = section or DEFAULT_THROUGHPUT
    text = yaml.safe_dump(section).replace("{server}", server[0]).replace("{port}", str(server[1]))
    records = sinyal_once(st, tmp, {"throughput": yaml.safe_load(text)}, timeout_s=300)
    (rec,) = [r for r in records if r["kind"] == "throughput"]
    return float(rec["fields"]["download_mbps"]), float(rec["fields"]["upload_mbps"])


def rate_rows(
    lab: Lab, st: Station, plan: Plan, section: dict[str, Any] | None, tmp: Path
) -> list[str]:
    server = lab.iperf3_server()
    core = lab.core()
    endpoint = (core.addr, SPEEDTEST_PORT)
    lab.spawn(core, sys.executable, "-m", "collector.cli", "speedtest-server",
              "--host", core.addr, "--port", str(SPEEDTEST_PORT))  # fmt: skip
    time.sleep(3)  # the endpoint starts (uvicorn)
    rows = [
        "| tbf rate | delay | expected TCP goodput | iperf3 up | iperf3 down | "
        "iperf3 vs rate | Sinyal down / up | Sinyal vs iperf3 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rate, delay in RATES:
        lab.impair(st, rate_mbit=rate, delay_ms=delay)
        up = tcp_goodput_mbit(iperf3(st, server, plan.iperf_s))
        down = tcp_goodput_mbit(iperf3(st, server, plan.iperf_s, reverse=True))
        ours = sinyal_throughput(st, endpoint, section, tmp / f"tput-{rate}-{delay}")
        if isinstance(ours, str):
            ours_cell, vs = ours, "n/a"
        else:
            ours_cell = f"{ours[0]:.2f} / {ours[1]:.2f}"
            vs = f"{(ours[0] / down - 1) * 100:+.1f} % / {(ours[1] / up - 1) * 100:+.1f} %"
        rows.append(
            f"| {rate:g} Mbit/s | {'none' if delay is None else f'{delay:g} ms'} | "
            f"{expected_goodput_mbit(rate):.2f} | {up:.2f} | {down:.2f} | "
            f"{(up / rate - 1) * 100:+.1f} % / {(down / rate - 1) * 100:+.1f} % | "
            f"{ours_cell} | {vs} |"
        )
        print(rows[-1], flush=True)
        lab.clear(st)
    return rows


def only(name: str, lab: Lab, st: Station, plan: Plan, section: Any, tmp: Path) -> None:
    if name == "throughput":
        rate_rows(lab, st, plan, section, tmp)  # prints each row as it is measured
        return
    if name == "loss":
        loss_rows(lab, st, plan, tmp)
        return
    rows, base = element_error(lab, st, plan)
    if name == "rtt":
        rtt_rows(lab, st, plan, base, tmp)
    else:
        print("\n".join(rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer samples (a smoke run)")
    ap.add_argument("--throughput-config", type=Path, help="YAML: Sinyal's throughput section")
    ap.add_argument(
        "--only",
        choices=("element", "rtt", "loss", "throughput"),
        help="run one section, print its rows, write no file",
    )
    args = ap.parse_args()
    plan = QUICK if args.quick else Plan()
    section = yaml.safe_load(args.throughput_config.read_text()) if args.throughput_config else None
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmpdir, Lab() as lab:
        tmp = Path(tmpdir)
        st = lab.station("bench")
        if args.only is not None:
            only(args.only, lab, st, plan, section, tmp)
            return
        element, base = element_error(lab, st, plan)
        rtt = rtt_rows(lab, st, plan, base, tmp)
        loss = loss_rows(lab, st, plan, tmp)
        rate = rate_rows(lab, st, plan, section, tmp)
    took = time.monotonic() - t0
    report = f"""# Accuracy on field-lab links

Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}; {took / 60:.1f} min
(`benchmarks/accuracy/run.py{" --quick" if args.quick else ""}`). One lab station; its
impairments are imposed on the router namespace (tests/harness/lab): delay and jitter by the
userspace
TUN delay element (this kernel has no sch_netem) on the upstream direction, so the added
round-trip time equals the delay; loss on upstream packets by iptables `statistic`; rate by
tbf in both directions. Sinyal is `sinyal-agent once --json` run inside the station
namespace (privileged ICMP); fping 5 and iperf3 3 run in the same namespace.

## The delay element's own error

{chr(10).join(element)}

## RTT: Sinyal and fping on the same path at the same time, and the truth

Each round runs a Sinyal ICMP round and an `fping -C` round of the same size (requests 50 ms
apart, 10 ms with jitter) at the same time; the Sinyal figure is the median of the rounds'
`rtt_p50_ms`, the fping figure the median of the rounds' medians. Target:
|Sinyal − fping| <= max(1 ms, 3 % of fping).
Truth is the imposed delay plus the base RTT measured above (so "− truth" includes the delay
element's own error). Jitter is uniform on ±jitter, drawn independently per packet
(`keep_order=False`, as netem: the truth's median is the delay); with jitter the medians
themselves vary from sample to sample by about jitter / sqrt(pings) (the "sampling sd"
column, for the difference of the two tools). fping prints an RTT of 100 ms or more in whole
milliseconds (10-100 ms with one decimal), so its figures at 150 and 400 ms are rounded to 1 ms.

{chr(10).join(rtt)}

## Loss: lost requests against the binomial 99 % interval of the imposed probability

One Sinyal round and one fping round of {plan.loss_count} requests each, 10 ms apart, at the
same time; each packet from the station is dropped by the router with the imposed probability.
"ok" means both tools' counts are inside the interval.

{chr(10).join(loss)}

## Throughput: iperf3 and Sinyal against the imposed tbf rate

iperf3 TCP, {plan.iperf_s:g} s after 1 s omitted, upload (station to core) and download
(`-R`). tbf counts whole frames, so TCP goodput tops out at rate × 1448/1514 (the "expected"
column, -4.4 %). Rows with a delay run through the delay element; tbf queues hold 100 ms.
Target for Sinyal's throughput probe: within 10 % of iperf3.

{chr(10).join(rate)}
"""
    out = RESULTS / "accuracy.md"
    out.write_text(report)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
