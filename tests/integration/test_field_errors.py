"""Errors a technician can act on, from the real commands (issue 17, point 4): a name that
does not resolve, a data_dir that cannot hold the spool, a read-only disk, a collector
command on an agent-only install, the collector's port already taken. No traceback."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, base_config, write_config
from tests.harness.netns import netns_lab  # noqa: F401  (fixture)
from tests.harness.servers import free_port

PY = sys.executable


def agent(
    *args: str, prefix: tuple[str, ...] = (), timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SINYAL_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [*prefix, PY, "-m", "agent.cli", *args],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT,
    )  # fmt: skip


def no_traceback(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr


@pytest.mark.root
@pytest.mark.netns
def test_unresolvable_target_warns_in_check_config_and_fails_doctor(
    tmp_path: Path,
    netns_lab,  # noqa: F811
) -> None:
    from tests.harness.nodns import namespace_without_dns

    ns = namespace_without_dns(netns_lab)
    doc = base_config(tmp_path)
    doc["probes"]["icmp"]["targets"].append({"host": "kpu-server.sinyal-test", "name": "kpu"})
    path = write_config(tmp_path, doc)
    checked = agent("check-config", "-c", str(path), prefix=tuple(ns.prefix()))
    no_traceback(checked)
    assert checked.returncode == 0, checked.stderr
    assert (
        f"{path}: warning: probes.icmp.targets[1].host: cannot resolve 'kpu-server.sinyal-test'"
        in checked.stderr
    )
    doctor = agent("doctor", "-c", str(path), prefix=tuple(ns.prefix()))
    no_traceback(doctor)
    assert doctor.returncode == 1
    assert "[FAIL] name kpu-server.sinyal-test: probes.icmp.targets[1].host: cannot resolve" in (
        doctor.stdout
    )


@pytest.mark.parametrize("command", ["once", "run"])
def test_data_dir_that_is_not_a_directory_is_one_line_not_a_traceback(
    tmp_path: Path, command: str
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory\n")
    doc = base_config(tmp_path)
    doc["data_dir"] = str(blocker / "spool")  # below a file: cannot be created
    path = write_config(tmp_path, doc)
    extra = ["--duration", "1", "--plain"] if command == "run" else []
    proc = agent(command, "-c", str(path), *extra)
    no_traceback(proc)
    assert proc.returncode == 3
    assert f"sinyal-agent: data_dir {blocker / 'spool'}: cannot keep the spool there" in (
        proc.stderr
    )
    assert "fix: set data_dir" in proc.stderr


@pytest.mark.root
def test_read_only_disk_is_explained(tmp_path: Path) -> None:
    shutil.which("unshare") or pytest.skip("needs unshare (util-linux)")
    disk = tmp_path / "disk"
    disk.mkdir()
    doc = base_config(tmp_path)
    doc["data_dir"] = str(disk / "sinyal")
    path = write_config(tmp_path, doc)
    # A private mount namespace with a read-only tmpfs: a real read-only filesystem.
    script = f"mount -t tmpfs -o ro,size=1m tmpfs {disk} && exec {PY} -m agent.cli once -c {path}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SINYAL_")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script],
        capture_output=True, text=True, timeout=60, env=env, cwd=ROOT,
    )  # fmt: skip
    no_traceback(proc)
    assert proc.returncode == 3, proc.stderr
    assert "Read-only file system" in proc.stderr
    assert "read-only disk needs remounting read-write" in proc.stderr


def test_collector_command_on_an_agent_only_install_names_the_extra(tmp_path: Path) -> None:
    # The collector extra's libraries made unimportable (None in sys.modules is how Python
    # marks a module as absent), as on a Raspberry Pi installed with .[agent] only.
    cfg = tmp_path / "collector.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "sink": {"kind": "v1", "url": "http://127.0.0.1:9", "database": "sinyal"},
                "data_dir": str(tmp_path),
                "thresholds_file": str(ROOT / "config" / "thresholds.yaml"),
            }
        )
    )
    absent = ["fastapi", "uvicorn", "influxdb_client", "aiohttp", "orjson", "msgspec",
              "prometheus_client", "starlette"]  # fmt: skip
    code = (
        f"import sys\nfor m in {absent!r}: sys.modules[m] = None\n"
        "from collector.cli import main\nsys.exit(main(sys.argv[1:]))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SINYAL_")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [PY, "-c", code, "status", "-c", str(cfg)],
        capture_output=True, text=True, timeout=60, env=env, cwd=ROOT,
    )  # fmt: skip
    no_traceback(proc)
    assert proc.returncode == 5
    assert "'collector' extra" in proc.stderr
    assert "pip install 'sinyal[collector]'" in proc.stderr


def test_serve_on_a_taken_port_exits_4_with_the_fix(tmp_path: Path) -> None:
    port = free_port()
    holder = socket.socket()
    holder.bind(("127.0.0.1", port))
    holder.listen(1)
    cfg = tmp_path / "collector.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "listen": {"host": "127.0.0.1", "port": port},
                "sink": {"kind": "v1", "url": "http://127.0.0.1:9", "database": "sinyal"},
                "data_dir": str(tmp_path / "c"),
                "thresholds_file": str(ROOT / "config" / "thresholds.yaml"),
                "status": {"sweeper": False},
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SINYAL_")}
    env["PYTHONPATH"] = str(ROOT)
    try:
        proc = subprocess.run(
            [PY, "-m", "collector.cli", "serve", "-c", str(cfg)],
            capture_output=True, text=True, timeout=60, env=env, cwd=ROOT,
        )  # fmt: skip
    finally:
        holder.close()
    no_traceback(proc)
    assert proc.returncode == 4
    assert f"cannot listen on 127.0.0.1:{port}: another process listens there" in proc.stderr
    assert "set listen.port" in proc.stderr


def test_agent_command_without_its_extra_names_it(tmp_path: Path) -> None:
    # The agent extra's libraries made unimportable, as with `pip install sinyal` alone.
    path = write_config(tmp_path, base_config(tmp_path))
    code = (
        "import sys\nfor m in ('httpx', 'icmplib', 'dns', 'rich'): sys.modules[m] = None\n"
        "from agent.cli import main\nsys.exit(main(sys.argv[1:]))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SINYAL_")}
    env["PYTHONPATH"] = str(ROOT)
    enroll = ["enroll", "--collector", "http://127.0.0.1:9", "AAAAA-AAAAA", "-c", str(path)]
    for args in (["once", "--no-spool", "-c", str(path)], [*enroll, "--no-start"]):
        proc = subprocess.run(
            [PY, "-c", code, *args], capture_output=True, text=True, timeout=60, env=env, cwd=ROOT
        )
        no_traceback(proc)
        assert proc.returncode == 3, proc.stderr
        assert "pip install 'sinyal[agent]'" in proc.stderr
