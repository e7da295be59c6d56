"""agent.cli: help texts, `once`, `status`, `doctor`, `run --plain`, and the start-up failure
when ICMP is impossible (an unprivileged user in a fresh network namespace)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

import pytest

from agent import cli
from agent.contract.record import Record
from agent.spool import SPOOL_FILE, Spool
from tests.conftest import base_config, require, require_root, require_tool, write_config

ISO_TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
NOBODY = 65534


def loopback_doc(tmp_path: Path, data_dir: Path | None = None) -> dict[str, Any]:
    """Two loopback ICMP targets, short rounds, no start-up jitter."""
    doc = base_config(tmp_path)
    doc["probes"] = {
        "icmp": {
            "interval_s": 10,
            "count": 3,
            "spacing_s": 0.05,
            "timeout_s": 1,
            "targets": [{"host": "127.0.0.1", "name": "lo1"}, {"host": "127.0.0.2", "name": "lo2"}],
        }
    }
    doc["schedule"] = {"jitter_fraction": 0, "max_jitter_s": 0}
    if data_dir is not None:
        doc["data_dir"] = str(data_dir)
    return doc


def clean_environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SINYAL_")}


# --- help ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "purpose"),
    [
        ([], "measures a polling station's links"),
        (["check-config"], "Validate the config and the thresholds file"),
        (["once"], "Run every configured probe once"),
        (["run"], "Run the agent until stopped"),
        (["status"], "Show what the spool holds"),
        (["doctor"], "Preflight checks with the fix for each problem"),
    ],
    ids=["top", "check-config", "once", "run", "status", "doctor"],
)
def test_help(command: list[str], purpose: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main([*command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: sinyal-agent {' '.join(command)}".rstrip())
    assert purpose in " ".join(out.split())
    assert "-c FILE, --config FILE" in out


def test_top_level_help_lists_every_command_and_exit_code(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for command in ("check-config", "once", "run", "status", "doctor"):
        assert re.search(rf"^\s+{command}\s+\S", out, re.M), command
    assert "simulate" not in out  # the fleet simulator is a bench tool: benchmarks/simulate.py
    assert "exit codes: 0 ok, 1 failure, 2 invalid config or usage, 3 environment" in out


def test_help_as_a_process() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "agent.cli", "--help"],
        capture_output=True,
        text=True,
        env=clean_environ(),
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert "usage: sinyal-agent" in proc.stdout


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "usage: sinyal-agent" in capsys.readouterr().out


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["explode"])
    assert info.value.code == 2
    assert "invalid choice: 'explode'" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert re.fullmatch(r"sinyal-agent \d+\.\d+\.\d+\S*\n", capsys.readouterr().out)


# --- once and status ----------------------------------------------------------------------


def run_once_json(path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> list[str]:
    assert cli.main(["once", "--json", *extra, "-c", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return out.splitlines()


@pytest.mark.root
def test_once_json_round_trips_and_is_spooled(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    require_root()  # ICMP on loopback with raw sockets
    path = write_config(tmp_path, loopback_doc(tmp_path))
    lines = run_once_json(path, capsys)
    assert len(lines) == 2  # one record per target
    records = [Record.from_json(line) for line in lines]
    for line, r in zip(lines, records, strict=True):
        assert json.loads(r.to_json()) == json.loads(line)
        assert r.kind == "icmp"
        assert r.error is None
        assert r.tags["station"] == "3171011001001"
        assert r.tags["uplink"] == "lo"
        assert r.fields["sent"] == 3 and r.fields["loss_pct"] == 0.0
    assert sorted(r.tags["target"] for r in records) == ["lo1", "lo2"]
    with Spool.in_dir(tmp_path / "data") as spool:
        assert spool.stats().records == 2
        assert spool.ids() == {r.id for r in records}


@pytest.mark.root
def test_once_no_spool_stores_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    require_root()
    path = write_config(tmp_path, loopback_doc(tmp_path))
    assert len(run_once_json(path, capsys, "--no-spool")) == 2
    assert not (tmp_path / "data" / SPOOL_FILE).exists()


@pytest.mark.root
def test_once_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    require_root()
    path = write_config(tmp_path, loopback_doc(tmp_path))
    assert cli.main(["once", "--no-spool", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "lo1" in out and "lo2" in out


@pytest.mark.root
def test_status_after_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    require_root()
    path = write_config(tmp_path, loopback_doc(tmp_path))
    records = [Record.from_json(line) for line in run_once_json(path, capsys)]

    assert cli.main(["status", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"spool:          {tmp_path / 'data' / SPOOL_FILE}" in out
    assert "unsent records: 2 " in out and "by kind: icmp 2" in out
    assert "dropped:        0" in out
    latest = out.split("last results:\n", 1)[1].splitlines()
    assert len(latest) == 2
    for line, target in zip(latest, ["lo1", "lo2"], strict=True):
        assert re.match(rf"  {ISO_TIME} icmp uplink=lo target={target} ok p50=", line), line

    assert cli.main(["status", "--json", "-c", str(path)]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["records"] == 2
    assert st["by_kind"] == {"icmp": 2}
    assert st["dropped_total"] == 0
    assert st["oldest_unsent_s"] >= 0
    assert {r["id"] for r in st["latest"]} == {r.id for r in records}
    assert [Record.from_dict(r) for r in st["latest"]]  # the wire format


def test_status_without_spool(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, base_config(tmp_path))
    assert cli.main(["status", "-c", str(path)]) == 1
    assert "no spool yet at" in capsys.readouterr().err


def test_invalid_config_exits_2_for_every_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = base_config(tmp_path)
    doc["station"]["lat"] = 100
    path = write_config(tmp_path, doc)
    for command in ("check-config", "once", "run", "status", "doctor"):
        assert cli.main([command, "-c", str(path)]) == 2, command
        err = capsys.readouterr().err
        assert err.splitlines()[-1] == "1 problem; see docs/configuration.md"
    assert not (tmp_path / "data").exists()


# --- doctor -------------------------------------------------------------------------------

DOCTOR_LINE = re.compile(r"^(\[(ok  |WARN|FAIL)\] \S[^:]*: \S.*|       fix: \S.*)$")


def test_doctor(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, base_config(tmp_path))
    rc = cli.main(["doctor", "-c", str(path)])
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert all(DOCTOR_LINE.match(line) for line in lines), out
    assert lines[0] == f"[ok  ] config: {path} is valid"
    assert f"[ok  ] data_dir: {tmp_path / 'data'} is writable" in lines
    assert "[ok  ] uplink lo: routed by the system, operator test" in lines
    assert "[WARN] collector: no collector configured: results stay in the spool" in lines
    assert rc == (1 if "[FAIL]" in out else 0)


def test_doctor_fails_when_data_dir_is_not_writable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    data_dir = blocker / "data"  # cannot be created, even by root
    path = write_config(tmp_path, base_config(tmp_path) | {"data_dir": str(data_dir)})
    assert cli.main(["doctor", "-c", str(path)]) == 1
    lines = capsys.readouterr().out.splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith("[FAIL] data_dir: "))
    assert lines[i] == f"[FAIL] data_dir: cannot write to {data_dir}: Not a directory"
    assert lines[i + 1].startswith("       fix: create it and give the agent's user write access")

    assert cli.main(["doctor", "--json", "-c", str(path)]) == 1
    checks = json.loads(capsys.readouterr().out)
    assert {c["status"] for c in checks} <= {"ok", "warn", "fail"}
    (dd,) = [c for c in checks if c["name"] == "data_dir"]
    assert dd["status"] == "fail" and dd["fix"]


# --- run ------------------------------------------------------------------------------------


@pytest.mark.root
def test_run_plain(tmp_path: Path) -> None:
    require_root()
    path = write_config(tmp_path, loopback_doc(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-m", "agent.cli", "run", "--plain", "--duration", "4", "-c", str(path)],
        capture_output=True,
        text=True,
        env=clean_environ(),
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    all_lines = proc.stdout.splitlines()
    # The heartbeat within a few seconds of start-up; a second one only if the station's
    # slot for it falls inside the 4 s, as for the ICMP rounds below.
    beats = [ln for ln in all_lines if " agent " in ln]
    assert len(beats) in (1, 2), proc.stdout
    for beat in beats:
        assert re.fullmatch(rf"{ISO_TIME} agent uplink=- target=self ok spool=\d+ .*", beat)
    lines = [ln for ln in all_lines if ln not in beats]
    # One round of both targets within a second of start-up; a second round only if the
    # station's slot falls inside the 4 s.
    assert len(lines) in (2, 4), proc.stdout
    for line in lines:
        assert re.fullmatch(rf"{ISO_TIME} icmp uplink=lo target=lo[12] ok p50=\S+ .*", line), line
    log = proc.stderr.splitlines()
    # Single-line logs only (no tracebacks), from start-up to a clean stop.
    for line in log:
        assert re.fullmatch(r"\S+ (DEBUG|INFO|WARNING|ERROR) sinyal\.\S+: \S.*", line), line
    assert "started: station 3171011001001, 2 probe(s)" in log[0]  # icmp and the heartbeat
    assert log[-1].endswith("INFO sinyal.agent: sinyal-agent stopped")
    with Spool.in_dir(tmp_path / "data") as spool:
        assert spool.stats().records == len(all_lines)


# --- ICMP impossible: exit 3 with the fix -------------------------------------------------


class Netns:
    """A fresh network namespace: net.ipv4.ping_group_range is per namespace, '1 0' (closed)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.ip = require_tool("ip")

    def __enter__(self) -> Netns:
        subprocess.run([self.ip, "netns", "add", self.name], check=True, timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run([self.ip, "netns", "delete", self.name], check=False, timeout=10)

    def run(self, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.ip, "netns", "exec", self.name, *argv],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
        )


def _unprivileged_python(ns: Netns, setpriv: list[str], env: dict[str, str]) -> str:
    """An interpreter uid 65534 can execute (a venv under /root is often out of its reach)."""
    candidates = [sys.executable, shutil.which("python3") or "", "/usr/bin/python3"]
    for python in dict.fromkeys(c for c in candidates if c):
        if ns.run([*setpriv, python, "-c", "import agent.cli"], env).returncode == 0:
            return python
    require(False, f"no Python interpreter that uid {NOBODY} can run and import agent with")
    raise AssertionError  # unreachable


@pytest.mark.netns
def test_icmp_impossible_exits_3_with_the_fix() -> None:
    setpriv = [require_tool("setpriv"), f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    work = Path(tempfile.mkdtemp(prefix="sinyal-test-cli-"))  # not under pytest's 0700 tmp
    try:
        work.chmod(0o1777)
        path = write_config(work, loopback_doc(work, data_dir=work / "data"))
        path.chmod(0o644)
        env = {
            "PATH": "/usr/bin:/bin:/usr/sbin:/sbin",
            "HOME": str(work),
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            # The project and its dependencies, for an interpreter outside the venv.
            "PYTHONPATH": os.pathsep.join(
                [str(Path(cli.__file__).parents[1]), sysconfig.get_paths()["purelib"]]
            ),
        }
        with Netns(f"sinyal-cli-{os.getpid()}") as ns:
            python = _unprivileged_python(ns, setpriv, env)
            agent = [*setpriv, python, "-m", "agent.cli"]
            for command in (["run", "--plain", "--duration", "2"], ["once", "--json"]):
                proc = ns.run([*agent, *command, "-c", str(path)], env)
                assert proc.returncode == 3, proc.stderr
                assert proc.stdout == ""
                err = proc.stderr.splitlines()
                assert err[0] == (
                    "sinyal-agent: cannot run ICMP probes: no raw ICMP socket (CAP_NET_RAW "
                    "missing) and unprivileged ICMP is closed (net.ipv4.ping_group_range = "
                    f"['1', '0'], gid {NOBODY} not in it)"
                )
                assert err[1].startswith("fix: ")
                assert "CAP_NET_RAW" in err[1] and "ping_group_range" in err[1]
                assert len(err) == 2
            assert not (work / "data").exists()  # nothing started

            # doctor shares the preflight: the same check fails, with its fix.
            proc = ns.run([*agent, "doctor", "-c", str(path)], env)
            assert proc.returncode == 1
            assert "[FAIL] icmp: no raw ICMP socket (CAP_NET_RAW missing)" in proc.stdout

            # Control: open unprivileged ICMP in this namespace and the same user measures.
            sysctl = ["sysctl", "-q", "-w", "net.ipv4.ping_group_range=0 2147483647"]
            assert ns.run(sysctl, env).returncode == 0
            assert ns.run(["ip", "link", "set", "lo", "up"], env).returncode == 0
            proc = ns.run([*agent, "once", "--json", "--no-spool", "-c", str(path)], env)
            assert proc.returncode == 0, proc.stderr
            records = [Record.from_json(line) for line in proc.stdout.splitlines()]
            assert [r.error for r in records] == [None, None]
    finally:
        shutil.rmtree(work, ignore_errors=True)
