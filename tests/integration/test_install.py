"""deploy/install.sh in a clean Debian bookworm root (issue 17, point 1), as root:
install; enrol against a real collector on the host through a veth into the root's network
namespace; the unit's pre-start check passes; the agent runs as the unit runs it (user
sinyal, CAP_NET_RAW only) and its records reach InfluxDB; a second install keeps the spool,
config and token; --uninstall keeps the spool, --purge removes everything.

The root comes from debootstrap (cached in /var/cache/sinyal, tests/harness/debroot.py);
pip inside it installs from a wheelhouse built on the host, so only the first run needs the
registries. The lab has no internet: the installed config's probes are pointed at the
collector's address before enrolling (a field config aims at in-country targets)."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import shlex
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from collector import cli as collector_cli
from tests.conftest import require_tool
from tests.harness.collector_stack import STATION, collector_config_file, running_collector
from tests.harness.dbs import InfluxServer
from tests.harness.netns import Lab
from tests.harness.servers import free_port

pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.netns]

PIP_ENV = {
    "PIP_NO_INDEX": "1",
    "PIP_FIND_LINKS": "/wheels",
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
}


def in_root(
    root: Path, script: str, prefix: tuple[str, ...] = (), timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, "chroot", str(root), "/usr/bin/env", "-i",
         *(f"{k}={v}" for k, v in PIP_ENV.items()), "/bin/bash", "-c", script],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return proc.stdout


def spool_count(root: Path) -> int:
    with sqlite3.connect(root / "var/lib/sinyal/spool.sqlite3") as db:
        return int(db.execute("SELECT count(*) FROM records").fetchone()[0])


def test_install_enrol_run_reinstall_uninstall(
    tmp_path: Path, influxdb: InfluxServer, influx_database: str, debian_root: tuple[Path, Path]
) -> None:
    for tool in ("setpriv", "ip"):
        require_tool(tool)
    from tests.harness.debroot import fresh_root

    timings: dict[str, float] = {}
    t0 = time.monotonic()
    with Lab() as lab, fresh_root(tmp_path / "deb", *debian_root) as root:
        timings["root ready (cached debootstrap, overlay)"] = time.monotonic() - t0
        # 1. install, as on a fresh Pi
        t = time.monotonic()
        out = ok(in_root(root, "/src/deploy/install.sh --source /src"))
        timings["install"] = time.monotonic() - t
        assert "sudo sinyal-agent enroll --collector" in out
        assert (root / "opt/sinyal/.venv/bin/sinyal-agent").exists()
        assert (root / "usr/local/bin/sinyal-agent").is_symlink()
        unit = (root / "etc/systemd/system/sinyal-agent.service").read_text()
        for line in ("ProtectSystem=strict", "NoNewPrivileges=true",
                     "CapabilityBoundingSet=CAP_NET_RAW", "StateDirectory=sinyal"):  # fmt: skip
            assert line in unit
        # systemd itself finds nothing wrong with the unit (directives, paths, the user)
        verified = in_root(root, "systemd-analyze verify /etc/systemd/system/sinyal-agent.service")
        assert verified.returncode == 0 and not verified.stderr.strip(), verified.stderr
        wants = root / "etc/systemd/system/multi-user.target.wants/sinyal-agent.service"
        assert wants.is_symlink()  # enabled (its target is absolute: inside the root)
        owner = ok(in_root(root, "stat -c '%U %a' /var/lib/sinyal /etc/sinyal/token"))
        assert owner.split("\n")[:2] == ["sinyal 750", "sinyal 600"]
        # not enrolled yet: the unit's pre-start check refuses, saying what to do
        pre = re.search(r"^ExecStartPre=(.*)$", unit, re.M)
        assert pre is not None
        as_unit = (
            "setpriv --reuid=sinyal --regid=sinyal --init-groups "
            "env SINYAL_CONFIG=/etc/sinyal/agent.yaml "
        )
        early = in_root(root, as_unit + pre.group(1))
        assert early.returncode == 2 and "run sinyal-agent enroll" in early.stderr

        # 2. a collector on the host, reachable through a veth into the root's namespace
        ns = lab.namespace()
        link = lab.link(ns)
        cfg = collector_config_file(
            tmp_path / "collector", influxdb.url, influx_database,
            listen={"host": link.near_addr, "port": free_port()},
        )  # fmt: skip
        with running_collector(cfg):
            url = f"http://{link.near_addr}:{cfg.listen.port}"
            capture = io.StringIO()
            with contextlib.redirect_stdout(capture):
                assert (
                    collector_cli.main(
                        ["agents", "enroll", "--station", STATION, "-c", str(cfg.path)]
                    )
                    == 0
                )
            code = next(csv.DictReader(io.StringIO(capture.getvalue())))["code"]
            config = root / "etc/sinyal/agent.yaml"
            doc = yaml.safe_load(config.read_text())
            target = {"host": link.near_addr, "name": "collector"}
            doc["probes"] = {
                "icmp": {"interval_s": 10, "count": 3, "spacing_s": 0.1, "targets": [target]}
            }
            config.write_text(yaml.safe_dump(doc, sort_keys=False))

            t = time.monotonic()
            # The lab's collector is plain http between namespaces: --allow-insecure.
            command = f"sinyal-agent enroll --allow-insecure --collector {url} {code}"
            enrolled = in_root(root, command, prefix=tuple(ns.prefix()))
            timings["enroll"] = time.monotonic() - t
            out = ok(enrolled)
            token = (root / "etc/sinyal/token").read_text().strip()
            assert token and token not in out + enrolled.stderr
            assert f"enrolled station {STATION}" in out
            assert "[ok  ] token: accepted" in out
            assert "not started: systemd is not running here" in out

            # 3. the unit's pre-start check passes now, as the unit runs it
            ok(in_root(root, as_unit + pre.group(1), prefix=tuple(ns.prefix())))

            # 4. the agent runs as the unit runs it: user sinyal, CAP_NET_RAW only
            caps = ("--inh-caps=+net_raw --ambient-caps=+net_raw --bounding-set=-all,+net_raw "
                    "--no-new-privs ")  # fmt: skip
            agent = f"setpriv --reuid=sinyal --regid=sinyal --init-groups {caps}" + shlex.join(
                [
                    "env",
                    "SINYAL_CONFIG=/etc/sinyal/agent.yaml",
                    "/opt/sinyal/.venv/bin/sinyal-agent",
                ]
            )
            t = time.monotonic()
            ok(in_root(root, f"{agent} once", prefix=tuple(ns.prefix())))
            ok(in_root(root, f"{agent} run --plain --duration 8", prefix=tuple(ns.prefix())))
            timings["agent once + run 8 s"] = time.monotonic() - t
            rows = influxdb.query(
                f"SELECT count(\"rtt_p50_ms\") FROM icmp WHERE station = '{STATION}'",
                influx_database,
            )
            assert rows and int(rows[0]["count"]) >= 1, "the agent's records reached InfluxDB"
            status = ok(in_root(root, f"{agent} status", prefix=tuple(ns.prefix())))
            assert "uploads:        ok since" in status and " WIB" in status

        # 5. a second install upgrades in place and keeps spool, config and token
        before = {p: (root / p).read_bytes() for p in ("etc/sinyal/agent.yaml", "etc/sinyal/token")}
        in_root(root, f"{agent} once --json >/dev/null", prefix=tuple(ns.prefix()))
        held = spool_count(root)
        assert held >= 1  # the collector is gone: these wait in the spool
        t = time.monotonic()
        out = ok(in_root(root, "/src/deploy/install.sh --source /src"))
        timings["re-install"] = time.monotonic() - t
        assert {p: (root / p).read_bytes() for p in before} == before
        assert spool_count(root) == held
        assert "installed and enabled; the config is valid" in out

        # 6. uninstall keeps the spool; --purge removes it
        ok(in_root(root, "/src/deploy/install.sh --uninstall"))
        assert not (root / "opt/sinyal").exists()
        assert not (root / "etc/systemd/system/sinyal-agent.service").exists()
        assert spool_count(root) == held
        assert (root / "etc/sinyal/token").exists()
        ok(in_root(root, "/src/deploy/install.sh --uninstall --purge"))
        assert not (root / "var/lib/sinyal").exists() and not (root / "etc/sinyal").exists()
        assert in_root(root, "id sinyal").returncode != 0
    timings["total"] = time.monotonic() - t0
    print("install test timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))


def test_install_refuses_non_root_and_old_python(tmp_path: Path) -> None:
    """Usage errors are one line and exit 2 (the Python check is exercised with a python3
    that reports 3.9: a shim first on PATH, as on Debian 11)."""
    require_tool("setpriv")
    script = str(Path(__file__).resolve().parents[2] / "deploy" / "install.sh")
    proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           "bash", script], capture_output=True, text=True, timeout=30)  # fmt: skip
    assert proc.returncode == 2 and "run as root" in proc.stderr
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "python3").write_text(
        "#!/bin/sh\ncase \"$1\" in -V) echo 'Python 3.9.2';; *) exit 1;; esac\n"
    )
    (shim / "python3").chmod(0o755)
    env = {**os.environ, "PATH": f"{shim}:{os.environ['PATH']}"}
    proc = subprocess.run(
        ["bash", script, "--no-start"], capture_output=True, text=True, timeout=60, env=env
    )
    assert proc.returncode == 2
    assert "Python 3.11 or newer is needed; this system has Python 3.9.2" in proc.stderr
