"""Runs a drill: InfluxDB, the collector, a field lab with a real agent per station, the fleet
simulator when there is one, the scripted timeline; then reads back what the control room saw.

```
 root namespace (loopback)                        lab: core namespace         station namespaces
 influxd 127.0.0.1:P1  <- collector 127.0.0.1:P2  socat 198.18.0.2:8080  <-  sinyal-agent run
                          <- socat UNIX-LISTEN <--- (Unix socket) ------       (one per station,
 benchmarks.simulate -> collector (loopback)                                     impaired by the
                                                                                router)
```

The lab has no link to the root namespace by design; the Unix socket relay (socat) is the
only way in, and it leads only to the collector. Everything started here is stopped on the
way out, also on Ctrl-C or a failure (an ExitStack; the lab removes its namespaces).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from collector.station import Station
from tests.drill import fleet
from tests.drill.plan import CLEAR, STATUS_NAMES, Problem, Timing, timeline
from tests.harness.dbs import InfluxServer, influxd
from tests.harness.lab import Lab
from tests.harness.netns import stop_process
from tests.harness.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
DATABASE = "sinyal_drill"
CORE_PORT = 8080
POLL_S = 2.0
TOOLS = ("ip", "tc", "iptables", "iptables-restore", "ss", "socat", "influxd")
SHARD_TOOLS = ("nginx",)
N_TARGETS = 3


@dataclass
class Options:
    timing: Timing
    real: int = 20
    simulated: int = 20
    sim_profile: str = "good4g=0.9,congested=0.1"
    out: Path = ROOT / "var" / "drill"
    log: Callable[[str], None] = print
    shards: int = 1  # collector processes; more than one: behind nginx, routed by station
    kill_shard_at: float | None = None  # s after T0: SIGKILL a collector (the dark station's)
    kill_down_s: float = 15.0  # how long it stays down before it is started again


@dataclass
class Point:
    t: float  # unix seconds, as the collector wrote it
    station: str
    status: int
    reasons: str


@dataclass
class Observed:
    """What the drill did and what the control room saw."""

    started: float
    t0: float = 0.0
    injected: dict[str, float] = field(default_factory=dict)  # problem key -> unix s
    recovered: dict[str, float] = field(default_factory=dict)
    points: list[Point] = field(default_factory=list)
    first_report: dict[str, float] = field(default_factory=dict)
    simulator: str = ""  # a line for the report
    simulator_report: Any = None
    ended: float = 0.0
    shards: int = 1
    shard_events: list[str] = field(default_factory=list)  # kills and restarts, for the report


def environment_problems(shards: int = 1) -> list[str]:
    """Why this machine cannot run a drill (empty when it can)."""
    out = []
    if os.geteuid() != 0:
        out.append("needs root: it builds network namespaces (ip netns, tc, iptables)")
    for tool in (*TOOLS, *(SHARD_TOOLS if shards > 1 else ())):
        if not (shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")):
            out.append(f"needs {tool} on PATH (apt-get install it; deploy/local/system-deps.sh)")
    return out


def simulator_available() -> tuple[bool, str]:
    """Whether this installation has `python -m benchmarks.simulate`, and what it said if not."""
    cmd = [sys.executable, "-m", "benchmarks.simulate", "--help"]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return False, "`python -m benchmarks.simulate --help` did not answer within 30 s"
    if p.returncode == 0:
        return True, ""
    said = (p.stderr.strip().splitlines() or ["(no message)"])[-1]
    return False, f"`python -m benchmarks.simulate --help` exited {p.returncode}: {said}"


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SINYAL_")}


def _collector_cli(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "collector.cli", *args, "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        env=_clean_env(),
        cwd=ROOT,
        check=True,
    )


def _wait(what: str, ready: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} was not ready within {timeout_s:g} s")


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _process(
    stack: ExitStack, cmd: Sequence[str], log: Path, **popen: Any
) -> subprocess.Popen[str]:
    """Start a process in the root namespace, output to `log`; stopped when `stack` closes."""
    with log.open("w") as f:
        proc = subprocess.Popen(
            list(cmd), stdout=f, stderr=subprocess.STDOUT, text=True, env=_clean_env(), **popen
        )
    stack.callback(stop_process, proc)
    return proc


def agent_config(
    st: Station, run: Path, url: str, token_file: Path, targets: Sequence[str], t: Timing
) -> Path:
    data = run / "agents" / st.id
    data.mkdir(parents=True, exist_ok=True)
    doc = {
        "station": {"id": st.id, "name": st.name, "lat": st.lat, "lon": st.lon, "tz": st.tz},
        "uplinks": [{"name": "modem0", "operator": st.expected_operator or "unknown"}],
        # The lab's links are plain http between namespaces it created (no TLS to test here).
        "collector": {
            "url": url,
            "token_file": str(token_file),
            "timeout_s": 10,
            "allow_insecure": True,
        },
        "probes": {
            "icmp": {
                "interval_s": t.interval_s,
                "count": t.count,
                "spacing_s": 0.2,
                "timeout_s": 1,
                "targets": [
                    {"host": h, "name": name}
                    for h, name in zip(targets, ("kpu", "sirekap", "dns"), strict=False)
                ],
            }
        },
        "schedule": {"jitter_fraction": 0.1, "max_jitter_s": 2},
        "spool": {"max_mb": 16},
        "data_dir": str(data),
        "thresholds_file": str(ROOT / "config" / "thresholds.yaml"),
    }
    path = data / "agent.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def nginx_config(run: Path, port: int, upstreams: Sequence[int]) -> Path:
    """nginx in front of the collector processes: every station to the same one (the station
    of POST /api/v1/stations/{station}/measurements, consistent hashing, as
    deploy/nginx/collector.conf routes), the next one while it is down."""
    tmp = run / "nginx"
    tmp.mkdir(parents=True, exist_ok=True)
    line = "    server 127.0.0.1:{} max_fails=1 fail_timeout=10s;"
    servers = "\n".join(line.format(p) for p in upstreams)
    text = f"""daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {run}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  client_max_body_size 6m;
  client_body_buffer_size 6m;
  map $uri $sinyal_station {{
    "~^/api/v1/stations/(?<sid>[^/]+)/measurements$" $sid;
    default "";
  }}
  upstream collectors {{
    hash $sinyal_station consistent;
{servers}
    keepalive 16;
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://collectors;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_next_upstream error timeout;
      proxy_next_upstream_tries 2;
      proxy_connect_timeout 2s;
      proxy_read_timeout 60s;
    }}
  }}
}}
"""
    path = run / "nginx.conf"
    path.write_text(text)
    return path


class Drill:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.t = opts.timing
        self.run_dir = opts.out / "run"
        self.real = fleet.real_fleet(opts.real)
        self.sim: list[Station] = []
        self.problems = timeline(self.real, self.t)
        self.influx: InfluxServer | None = None
        self.lab: Lab | None = None
        self.obs = Observed(started=time.time(), shards=opts.shards)
        self._stack: ExitStack | None = None
        self._killed = 0
        self.ports: list[int] = []
        self.collectors: list[subprocess.Popen[str]] = []
        self.collector_cmds: list[list[str]] = []
        self._seen_ns = 0
        self._last: dict[str, int] = {}

    def log(self, text: str) -> None:
        self.opts.log(text)

    # --- the whole run ----------------------------------------------------------------------

    def run(self) -> Observed:
        if self.run_dir.exists():
            shutil.rmtree(self.run_dir)
        self.run_dir.mkdir(parents=True)
        with ExitStack() as stack:
            self._stack = stack
            self._start(stack)
            self._wait_for_reports()
            self._play()
            self.obs.ended = time.time()
            self.obs.points = self._points(int(self.obs.started * 1e9))
            self._stop_simulator()
        return self.obs

    def _start(self, stack: ExitStack) -> None:
        run, t = self.run_dir, self.t
        available, why = simulator_available()
        if self.opts.simulated and available:
            self.sim = fleet.simulated_fleet(self.opts.simulated)
        elif not self.opts.simulated:
            self.obs.simulator = "Simulated stations: none (--simulated 0)."
        else:
            self.obs.simulator = (
                "Simulated stations: NONE. The fleet simulator is not available in this "
                f"installation ({why}); the drill ran with its {len(self.real)} real agents only."
            )
        self.log(f"drill: {len(self.real)} real stations, {len(self.sim)} simulated ({t.form})")
        stations_csv = run / "stations.csv"
        fleet.write_csv(stations_csv, [*self.real, *self.sim])

        self.influx = stack.enter_context(influxd(shutil.which("influxd") or "influxd"))
        self.influx.create_database(DATABASE)
        shards = max(1, self.opts.shards)
        ports = [free_port() for _ in range(shards)]
        configs: list[Path] = []
        for i, shard_port in enumerate(ports):
            # Shard 0 keeps the name collector.yaml (tests read it); all share data_dir (one
            # registry) and the database; only shard 0 flags never-reported stations.
            status = {**t.collector_status(), "flag_never_reported": i == 0}
            path = run / ("collector.yaml" if i == 0 else f"collector-{i}.yaml")
            doc: dict[str, Any] = {
                "listen": {"host": "127.0.0.1", "port": shard_port},
                "sink": {"kind": "v1", "url": self.influx.url, "database": DATABASE},
                "data_dir": str(run / "collector"),
                "thresholds_file": str(ROOT / "config" / "thresholds.yaml"),
                "status": status,
            }
            if shards > 1:
                doc["shard"] = {"id": f"drill-s{i}"}
            path.write_text(yaml.safe_dump(doc))
            configs.append(path)
        cfg = configs[0]
        self.collector_cfg = cfg
        _collector_cli(cfg, "check-config")
        _collector_cli(cfg, "stations", "import", str(stations_csv))
        tokens_csv = run / "tokens.csv"
        _collector_cli(cfg, "agents", "add", "--all-stations", "--out", str(tokens_csv),
                       "--note", "voting-day drill")  # fmt: skip
        tokens = fleet.read_tokens(tokens_csv)
        self.ports = ports
        for i, path in enumerate(configs):
            serve = [sys.executable, "-m", "collector.cli", "serve", "-c", str(path)]
            self.collector_cmds.append(serve)
            self.collectors.append(self._start_collector(i))
        port = ports[0]
        if shards > 1:
            port = free_port()
            conf = nginx_config(run, port, ports)
            nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
            cmd = [nginx or "nginx", "-p", str(run / "nginx"), "-c", str(conf)]
            proxy = _process(stack, [*cmd, "-e", str(run / "nginx-error.log")], run / "nginx.log")
            up = f"http://127.0.0.1:{port}/healthz"
            _wait("nginx", lambda: proxy.poll() is None and _http_ok(up), 15)
        url = f"http://127.0.0.1:{port}"
        where = f"{shards} collectors behind nginx {url}" if shards > 1 else f"collector {url}"
        self.log(f"drill: InfluxDB {self.influx.url}, {where}, logs in {run}")

        # The relay into the lab: root namespace socket -> collector; core -> socket.
        sock = run / "collector.sock"
        if len(str(sock)) > 100:  # a Unix socket path has at most 107 bytes
            sock_dir = Path(tempfile.mkdtemp(prefix="sinyal-drill-"))
            stack.callback(shutil.rmtree, sock_dir, True)
            sock = sock_dir / "collector.sock"
        relay = ["socat", f"UNIX-LISTEN:{sock},fork", f"TCP:127.0.0.1:{port}"]
        (_process(stack, relay, run / "socat-root.log"))
        _wait("the relay socket", sock.exists, 10)

        self.lab = lab = stack.enter_context(Lab())
        core = lab.core()
        lab.spawn(
            core,
            "socat",
            f"TCP-LISTEN:{CORE_PORT},bind={core.addr},fork,reuseaddr",
            f"UNIX-CONNECT:{sock}",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def listening() -> bool:
            out = lab.run(core, "ss", "-Hltn", f"sport = :{CORE_PORT}", check=False).stdout
            return bool(out.strip())

        _wait("the relay in the core namespace", listening, 10)
        lab_url = f"http://{core.addr}:{CORE_PORT}"
        targets = [core.target(i) for i in range(1, N_TARGETS + 1)]
        # The simulator first: a Ctrl-C once the agents run then finds it on the exit stack.
        if self.sim:
            self._start_simulator(stack, url, tokens)
        for s in self.real:
            st = lab.station(fleet.label(s))
            token_file = run / "agents" / s.id / "token"
            token_file.parent.mkdir(parents=True, exist_ok=True)
            token_file.write_text(tokens[s.id])
            token_file.chmod(0o600)
            acfg = agent_config(s, run, lab_url, token_file, targets, t)
            with (run / "agents" / s.id / "agent.log").open("w") as f:
                lab.spawn(
                    st,
                    sys.executable,
                    "-m",
                    "agent.cli",
                    "run",
                    "--plain",
                    "-c",
                    str(acfg),
                    "--record-log",
                    str(run / "agents" / s.id / "records.jsonl"),
                    stdout=f,
                    stderr=subprocess.STDOUT,
                    env=_clean_env(),
                    cwd=ROOT,
                )
        self.log(f"drill: {len(self.real)} agents started in their station namespaces")

    def _start_collector(self, i: int, log_name: str = "") -> subprocess.Popen[str]:
        """Collector process i (a shard), started and answering; stopped with the stack."""
        assert self._stack is not None
        name = log_name or ("collector.log" if i == 0 else f"collector-{i}.log")
        proc = _process(self._stack, self.collector_cmds[i], self.run_dir / name, cwd=ROOT)
        url = f"http://127.0.0.1:{self.ports[i]}"
        _wait(f"collector {i}", lambda: proc.poll() is None and _http_ok(f"{url}/healthz"), 30)
        return proc

    def _start_simulator(self, stack: ExitStack, url: str, tokens: dict[str, str]) -> None:
        path = self.run_dir / "sim-tokens.csv"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("station,token_id,token\n")
            with (self.run_dir / "tokens.csv").open(encoding="utf-8") as src:
                sim_ids = {s.id for s in self.sim}
                f.writelines(line for line in src if line.split(",", 1)[0] in sim_ids)
        t = self.t
        duration = t.baseline_s + t.blackout_s + t.settle_s + 120
        cmd = [
            *(sys.executable, "-m", "benchmarks.simulate"),
            *("--collector", url, "--tokens", str(path), "--stations", str(len(self.sim))),
            *("--profile", self.opts.sim_profile, "--interval-s", f"{t.interval_s:g}"),
            *("--targets", str(N_TARGETS), "--duration", f"{duration:g}"),
            *("--report", str(self.run_dir / "simulator.json")),
        ]
        self.sim_proc = stack.enter_context(
            _process(stack, cmd, self.run_dir / "simulator.log", cwd=ROOT)
        )
        self.obs.simulator = (
            f"Simulated stations: {len(self.sim)} from `python -m benchmarks.simulate` "
            f"(profile {self.opts.sim_profile}) in {fleet.SIM_REGION.province}."
        )

    def _stop_simulator(self) -> None:
        proc = getattr(self, "sim_proc", None)
        if proc is None:
            return
        if proc.poll() is None:  # SIGTERM: it drains what is pending and writes its report
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
        stop_process(proc)
        report = self.run_dir / "simulator.json"
        if proc.returncode != 0:
            self.obs.simulator += f" It exited {proc.returncode} (see run/simulator.log)."
        with contextlib.suppress(OSError, ValueError):
            self.obs.simulator_report = json.loads(report.read_text())

    # --- the timeline -----------------------------------------------------------------------

    def _wait_for_reports(self) -> None:
        """Until every real station's first upload made its first status point."""
        want = {s.id for s in self.real}
        deadline = time.monotonic() + 3 * self.t.interval_s + 60
        while time.monotonic() < deadline:
            self._poll()
            if want <= set(self.obs.first_report):
                self.log(f"drill: all {len(want)} real stations reported")
                return
            time.sleep(POLL_S)
        missing = sorted(want - set(self.obs.first_report))
        raise RuntimeError(f"stations that never reported: {', '.join(missing)}")

    def _play(self) -> None:
        t = self.t
        self.log(f"drill: baseline {t.baseline_s:g} s (everyone should stay ok)")
        self._sleep_polling(time.time() + t.baseline_s)
        self.obs.t0 = t0 = time.time()
        events: list[tuple[float, str, Problem | None]] = []
        for p in self.problems:
            events += [(t0 + p.start_s, "inject", p), (t0 + p.start_s + p.duration_s, "clear", p)]
        kill_at = self.opts.kill_shard_at
        if kill_at is not None and len(self.collectors) > 1:
            events += [
                (t0 + kill_at, "kill", None),
                (t0 + kill_at + self.opts.kill_down_s, "restart", None),
            ]
        events.sort(key=lambda e: e[0])
        assert self.lab is not None
        for at, action, event in events:
            self._sleep_polling(at)
            if event is None:
                self._kill_or_restart(action)
                continue
            p = event
            for sid in p.stations:
                st = self.lab.station(sid)
                self.lab.impair(st, **(p.impairment if action == "inject" else CLEAR))
            now = time.time()
            (self.obs.injected if action == "inject" else self.obs.recovered)[p.key] = now
            verb = "INJECT" if action == "inject" else "RECOVER"
            self.log(f"{self._rel(now)} {verb} {p.title} ({len(p.stations)} station(s))")
        deadline = time.time() + t.settle_s
        while time.time() < deadline and not self._all_cleared():
            self._sleep_polling(min(deadline, time.time() + POLL_S))
        self._poll()

    def _kill_or_restart(self, action: str) -> None:
        """SIGKILL the collector that owns the dark station (a crash: nothing flushed), or
        start it again on its port."""
        if action == "kill":
            dark = self.problems[-1].stations[0]
            self._killed = self._owner(dark)
            proc = self.collectors[self._killed]
            proc.kill()
            proc.wait(timeout=10)
            what = f"KILL collector shard drill-s{self._killed} (pid {proc.pid}, owns {dark})"
        else:
            i = self._killed
            self.collectors[i] = self._start_collector(i, f"collector-{i}-restarted.log")
            what = f"RESTART collector shard drill-s{i} (pid {self.collectors[i].pid})"
        now = time.time()
        self.obs.shard_events.append(f"{what} at T0{now - self.obs.t0:+.1f}s")
        self.log(f"{self._rel(now)} {what}")

    def _owner(self, station: str) -> int:
        """The shard that wrote the station's latest status point (0 when none says)."""
        assert self.influx is not None
        rows = self.influx.query(
            f'SELECT "shard" FROM "station_status" WHERE "station" = \'{station}\''
            " ORDER BY time DESC LIMIT 1",
            DATABASE,
        )
        shard = str(rows[0].get("shard") or "").removeprefix("drill-s") if rows else ""
        return int(shard) if shard.isdigit() and int(shard) < len(self.collectors) else 0

    def _all_cleared(self) -> bool:
        for p in self.problems:
            back = self.obs.recovered.get(p.key)
            if back is None:
                return False
            for sid in p.stations:
                if self._last.get(sid) != 0:
                    return False
        return True

    def _sleep_polling(self, until: float) -> None:
        while (left := until - time.time()) > 0:
            time.sleep(min(POLL_S, left))
            self._poll()

    def _rel(self, t: float) -> str:
        base = self.obs.t0 or self.obs.started
        sign = "T0" if self.obs.t0 else "start"
        return f"[{sign}{t - base:+7.1f}s]"

    def _poll(self) -> None:
        """Print every new status point as the control room would see it change."""
        pts = self._points(self._seen_ns + 1 if self._seen_ns else int(self.obs.started * 1e9))
        for p in pts:
            self._seen_ns = max(self._seen_ns, int(p.t * 1e9))
            self.obs.first_report.setdefault(p.station, p.t)
            old = self._last.get(p.station)
            self._last[p.station] = p.status
            if old is not None and old != p.status:
                why = f": {p.reasons}" if p.reasons else ""
                self.log(
                    f"{self._rel(p.t)} {p.station} {STATUS_NAMES[old]} -> "
                    f"{STATUS_NAMES[p.status]}{why}"
                )

    def _points(self, since_ns: int) -> list[Point]:
        assert self.influx is not None
        rows = self.influx.query(
            'SELECT "status", "reasons" FROM "station_status" '
            f'WHERE time >= {since_ns} GROUP BY "station"',
            DATABASE,
        )
        pts = [
            Point(r["time"] / 1e9, r["station"], int(r["status"]), r.get("reasons") or "")
            for r in rows
        ]
        return sorted(pts, key=lambda p: p.t)
