"""Enrolment against a real collector (issue 17, point 2): codes issued by the CLI, stored
hashed, exchanged once by `sinyal-agent enroll` for a token that uploads; reuse, expiry, a
wrong code, a revoked station and the per-address rate limit each refused with a clear
error; the printable sheet; nothing secret printed."""

from __future__ import annotations

import csv
import io
import sqlite3
import stat
import subprocess
from pathlib import Path

import httpx
import pytest

from agent import cli as agent_cli
from agent import config as agent_config
from collector import cli as collector_cli
from collector.enrolment import ATTEMPTS
from tests.conftest import base_config, require_tool, write_config
from tests.harness.collector_stack import STATION, Stack


def issue(capsys: pytest.CaptureFixture[str], stack: Stack, *extra: str) -> str:
    capsys.readouterr()
    rc = collector_cli.main(
        ["agents", "enroll", "--station", STATION, "-c", str(stack.cfg.path), *extra]
    )
    out, err = capsys.readouterr()
    assert rc == 0, err
    [row] = list(csv.DictReader(io.StringIO(out)))
    assert row["station"] == STATION
    return row["code"]


def enroll(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, stack: Stack, code: str
) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = agent_cli.main(
        ["enroll", "--collector", stack.url, code, "-c", str(tmp_path / "agent.yaml"),
         "--token-file", str(tmp_path / "token"), "--no-start"]
    )  # fmt: skip
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def device(tmp_path: Path) -> Path:
    """The config a fresh install leaves: a placeholder station, comments to keep."""
    doc = base_config(tmp_path)
    doc["station"]["id"] = "0000000000000"
    path = write_config(tmp_path, doc)
    path.write_text("# installed by deploy/install.sh\n" + path.read_text()
                    + "# end of the installed config\n")  # fmt: skip
    return path


def test_code_exchanged_once_for_a_working_token(
    tmp_path: Path, stack: Stack, device: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = issue(capsys, stack)
    assert len(code) == 11 and code[5] == "-"
    # stored hashed: the registry file does not hold the code
    raw = Path(stack.cfg.registry_path).read_bytes()
    wal = Path(str(stack.cfg.registry_path) + "-wal")
    raw += wal.read_bytes() if wal.exists() else b""
    assert code.replace("-", "").encode() not in raw

    rc, out, err = enroll(capsys, tmp_path, stack, code.lower().replace("-", " "))
    assert rc == 0, out + err
    token_file = tmp_path / "token"
    token = token_file.read_text().strip()
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert token not in out + err  # nothing secret printed
    assert f"enrolled station {STATION}" in out
    assert "[ok  ] token: accepted for station " + STATION in out
    assert "not started (--no-start)" in out
    cfg = agent_config.load(device, environ={})
    assert cfg.station.id == STATION and cfg.station.tz == "Asia/Jakarta"
    assert cfg.collector is not None and cfg.collector.url == stack.url
    assert cfg.collector.token_file == token_file
    text = device.read_text()
    assert text.startswith("# installed by deploy/install.sh\n")
    assert "# end of the installed config\n" in text  # kept; collector: appended after it

    # used once: the same code again is refused, and nothing changes
    rc, out, err = enroll(capsys, tmp_path, stack, code)
    assert rc == 1
    assert "this enrolment code was already used at 20" in err
    assert "nothing was changed" in err
    assert token_file.read_text().strip() == token


def test_wrong_and_expired_codes(
    tmp_path: Path, stack: Stack, device: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, err = enroll(capsys, tmp_path, stack, "7KQ2M-9XD4T")
    assert rc == 1 and "unknown enrolment code: check it against the sheet" in err
    code = issue(capsys, stack, "--expires", "1m")
    # A minute is the shortest expiry; the test moves it into the past in the registry.
    with sqlite3.connect(stack.cfg.registry_path) as db:
        db.execute("UPDATE enrolment_codes SET expires_at = '2020-01-01T00:00:00Z'")
    rc, _, err = enroll(capsys, tmp_path, stack, code)
    assert rc == 1 and "this enrolment code expired at 2020-01-01T00:00:00Z" in err
    assert not (tmp_path / "token").exists()


def test_revoked_station(
    tmp_path: Path, stack: Stack, device: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = issue(capsys, stack)
    rc = collector_cli.main(["agents", "revoke", "--station", STATION, "-c", str(stack.cfg.path)])
    out = capsys.readouterr().out
    assert rc == 0 and f"revoked station {STATION}: 1 token(s)" in out
    assert "1 unused enrolment code(s)" in out
    rc, _, err = enroll(capsys, tmp_path, stack, code)
    assert rc == 1
    assert f"station {STATION} was revoked by the control room at 20" in err
    # a new code enrols it again
    rc, out, err = enroll(capsys, tmp_path, stack, issue(capsys, stack))
    assert rc == 0, err


def test_failed_attempts_are_rate_limited_per_address(stack: Stack) -> None:
    url = stack.url + "/api/v1/enroll"
    for _ in range(ATTEMPTS):
        r = httpx.post(url, json={"code": "AAAAA-AAAAA"})
        assert r.status_code == 404
    limited = httpx.post(url, json={"code": "AAAAA-AAAAA"})
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) >= 1
    assert "too many failed enrolment attempts" in limited.json()["error"]
    for bad in (b"not json", b'{"code": 5}', b"[]"):
        assert httpx.post(url, content=bad).status_code in (400, 429)


def test_codes_for_a_regency_and_the_printed_sheet(
    tmp_path: Path, stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    require_tool("pdftotext")
    stations = [s.id for s in stack.registry.stations()][:5]
    listing = tmp_path / "regency.csv"
    listing.write_text("id,name\n" + "".join(f"{s},x\n" for s in stations))
    out_csv, pdf = tmp_path / "codes.csv", tmp_path / "sheet.pdf"
    rc = collector_cli.main(
        ["agents", "enroll", "--stations", str(listing), "--out", str(out_csv), "--pdf",
         str(pdf), "--collector-url", "https://collector.example", "--expires", "36h",
         "-c", str(stack.cfg.path)]
    )  # fmt: skip
    _, err = capsys.readouterr()
    assert rc == 0, err
    assert stat.S_IMODE(out_csv.stat().st_mode) == 0o600
    rows = list(csv.DictReader(out_csv.open()))
    assert [r["station"] for r in rows] == stations
    assert len({r["code"] for r in rows}) == len(stations)
    text = subprocess.run(
        ["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, check=True
    ).stdout
    for r in rows:
        assert r["code"] in text and r["station"] in text
    assert "sinyal-agent enroll --collector https://collector.example" in text
    assert "WIB" in text or "WITA" in text or "WIT" in text
    # unknown stations: nothing issued, exit 2
    listing.write_text("id\n9999999999999\n")
    rc = collector_cli.main(
        ["agents", "enroll", "--stations", str(listing), "-c", str(stack.cfg.path)]
    )
    assert rc == 2
    assert "expected a station in the registry" in capsys.readouterr().err


def test_enroll_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = agent_cli.main(["enroll", "--collector", "ftp://x", "AAAAA-AAAAA", "--no-start"])
    assert rc == 2 and "--collector: got 'ftp://x'" in capsys.readouterr().err


def test_a_user_who_cannot_write_the_config_keeps_the_code(
    tmp_path: Path, stack: Stack, device: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without sudo, enroll stops before spending the code: it still works afterwards."""
    import os
    import sys

    from tests.conftest import ROOT

    if os.geteuid() != 0:
        pytest.skip("needs root to run enroll as another user")
    require_tool("setpriv")
    code = issue(capsys, stack)
    tmp_path.chmod(0o755)
    device.chmod(0o644)
    proc = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
         "agent.cli", "enroll", "--collector", stack.url, code, "-c", str(device),
         "--token-file", str(tmp_path / "token"), "--no-start"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": os.environ["PATH"]},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"sinyal-agent enroll: cannot write {tmp_path / 'token'}: " in proc.stderr
    assert "the code is still unused" in proc.stderr
    rc, _, err = enroll(capsys, tmp_path, stack, code)
    assert rc == 0, err
