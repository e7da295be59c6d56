"""agent.config: invalid configs as a table test (each fixture with its exact errors), the
shipped configs, defaults, relative paths and environment overrides."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent import cli
from agent import config as agent_config
from agent.config import ConfigError
from agent.contract import thresholds as agent_thresholds
from tests.conftest import FIXTURES, ROOT, base_config, write_config

INVALID = FIXTURES / "config" / "invalid"
CASES = sorted(INVALID.glob("*.yaml"))
SUMMARY_HINT = "see docs/configuration.md"


def expected_lines(case: Path) -> list[str]:
    text = case.with_suffix(".err").read_text(encoding="utf-8")
    return text.replace("{file}", str(case)).splitlines()


def summary(n: int) -> str:
    return f"{n} problem{'s' if n != 1 else ''}; {SUMMARY_HINT}"


def clean_environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SINYAL_")}


# --- invalid configs: the table test -----------------------------------------------------


def test_every_invalid_case_has_its_error_file() -> None:
    assert len(CASES) >= 18
    for case in CASES:
        err = case.with_suffix(".err")
        assert err.is_file(), f"{case.name} has no {err.name}"
        lines = err.read_text(encoding="utf-8").splitlines()
        assert lines, f"{err.name} is empty"
        assert all(line.startswith("{file}: ") for line in lines), err.name
    orphans = {p.stem for p in INVALID.glob("*.err")} - {p.stem for p in CASES}
    assert not orphans


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.stem)
def test_invalid_config(case: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["check-config", "-c", str(case)])
    out, err = capsys.readouterr()
    expected = expected_lines(case)
    assert rc == cli.EXIT_CONFIG == 2
    assert out == ""
    assert err.splitlines() == [*expected, summary(len(expected))]


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.stem)
def test_invalid_config_error_lists_the_same_lines(case: Path) -> None:
    with pytest.raises(ConfigError) as info:
        agent_config.load(case, environ={})
    assert info.value.errors == expected_lines(case)


def test_check_config_subprocess_exit_code() -> None:
    """End to end: a real process, its exit status and its stderr."""
    case = INVALID / "several_errors.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "agent.cli", "check-config", "-c", str(case)],
        capture_output=True,
        text=True,
        env=clean_environ(),
        cwd=ROOT,
        timeout=30,
    )
    expected = expected_lines(case)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [*expected, summary(len(expected))]
    assert len(expected) > 5  # several problems, reported at once


def test_fixture_thresholds_path_is_relative_to_the_config_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The invalid fixtures say thresholds_file: ../../../../config/thresholds.yaml; none of
    # their .err files mentions thresholds_file, so it resolves from any working directory.
    monkeypatch.chdir(tmp_path)
    case = INVALID / "icmp_count_zero.yaml"
    with pytest.raises(ConfigError) as info:
        agent_config.load(case, environ={})
    assert not any("thresholds_file" in e for e in info.value.errors)
    doc = yaml.safe_load(case.read_text())
    assert (case.parent / doc["thresholds_file"]).resolve() == ROOT / "config" / "thresholds.yaml"


# --- secrets ------------------------------------------------------------------------------

SECRET = "s3cr3t-t0ken-do-not-print"


@pytest.mark.parametrize(
    ("collector", "expected_masked"),
    [
        ({"url": "https://c.example/", "token": SECRET, "token_file": "agent.yaml"}, False),
        ({"url": "https://c.example/", "token": [SECRET]}, True),
        ({"url": "https://c.example/", "token": {"value": SECRET}}, True),
        ({"url": "https://c.example/", "token": "   "}, True),
        ({"url": "ftp://c.example/", "token": SECRET}, False),
        ({"url": "https://c.example/", "token": SECRET, "timeout_s": 0}, False),
        ({"url": "https://c.example/", "tokne": SECRET}, False),
    ],
    ids=[
        "token-and-file",
        "token-list",
        "token-mapping",
        "token-blank",
        "bad-url",
        "bad-timeout",
        "misspelt-key",
    ],
)
def test_token_never_appears_in_errors(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    collector: dict[str, Any],
    expected_masked: bool,
) -> None:
    doc = base_config(tmp_path)
    doc["collector"] = collector
    path = write_config(tmp_path, doc)
    assert cli.main(["check-config", "-c", str(path)]) == 2
    out, err = capsys.readouterr()
    assert SECRET not in out + err
    assert ("collector.token: got '***'" in err) is expected_masked


@pytest.mark.parametrize(
    "line",
    [
        f"  token: {SECRET}: more",
        f'  token: "{SECRET}',
        f'  token: "{SECRET}\\q"',
        f"  token: [{SECRET}",
        f"\ttoken: {SECRET}",
    ],
    ids=["colon", "unterminated", "bad-escape", "unclosed-list", "tab"],
)
def test_token_never_appears_in_yaml_syntax_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str
) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(f"collector:\n  url: https://c.example/\n{line}\n")
    assert cli.main(["check-config", "-c", str(path)]) == 2
    out, err = capsys.readouterr()
    assert "not valid YAML" in err
    assert SECRET not in out + err


def test_token_is_masked_in_the_fixture_that_holds_one(capsys: pytest.CaptureFixture[str]) -> None:
    case = INVALID / "collector_token_and_token_file.yaml"
    assert SECRET in case.read_text()
    assert cli.main(["check-config", "-c", str(case)]) == 2
    assert SECRET not in capsys.readouterr().err
    case = INVALID / "collector_token_not_a_string.yaml"
    assert cli.main(["check-config", "-c", str(case)]) == 2
    err = capsys.readouterr().err
    assert "8675309424242" not in err
    assert "got '***'" in err


def test_token_not_in_repr(tmp_path: Path, make_config: Any) -> None:
    cfg = make_config(collector={"url": "https://c.example/", "token": SECRET})
    assert cfg.collector.read_token() == SECRET
    assert SECRET not in repr(cfg)


# --- valid configs -----------------------------------------------------------------------

SHIPPED = ["agent.local.yaml", "agent.example.yaml"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_config_is_valid(
    name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = ROOT / "config" / name
    if not path.exists():
        pytest.skip(f"config/{name} does not exist yet")
    # A deployment file such as /etc/sinyal/token is not on a test machine: supply it the
    # documented way, through the environment.
    collector = yaml.safe_load(path.read_text()).get("collector") or {}
    token_file = collector.get("token_file")
    if token_file and not (path.parent / token_file).is_file():
        (tmp_path / "token").write_text("test-token\n")
        monkeypatch.setenv("SINYAL_COLLECTOR__TOKEN_FILE", str(tmp_path / "token"))
    cfg = agent_config.load(path)
    assert cfg.station.id
    assert cfg.thresholds_file.is_file()
    assert cli.main(["check-config", "-c", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"{path}: valid (station {cfg.station.id}")
    assert err == ""


def test_check_config_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, base_config(tmp_path))
    assert cli.main(["check-config", "-c", str(path)]) == 0
    out, err = capsys.readouterr()
    th = ROOT / "config" / "thresholds.yaml"
    n = len(agent_thresholds.load(th).metrics)
    assert out == (
        f"{path}: valid (station 3171011001001, uplinks lo, probes icmp, "
        f"{n} thresholds from {th})\n"
    )
    assert err == ""
    assert not (tmp_path / "data").exists()  # checking a config creates nothing


def test_check_config_reads_sinyal_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, base_config(tmp_path))
    monkeypatch.setenv("SINYAL_CONFIG", str(path))
    assert cli.main(["check-config"]) == 0
    assert "valid" in capsys.readouterr().out


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nope.yaml"
    assert cli.main(["check-config", "-c", str(path)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"{path}: file not found (give one with -c FILE or SINYAL_CONFIG)",
        summary(1),
    ]


def test_defaults(tmp_path: Path) -> None:
    doc = base_config(tmp_path)
    del doc["uplinks"]
    doc["probes"] = {
        "icmp": {"targets": ["127.0.0.1"]},
        "dns": {"resolvers": ["127.0.0.1"], "names": ["kpu.go.id"]},
        "http": {"targets": ["https://www.kpu.go.id/"]},
    }
    cfg = agent_config.load(write_config(tmp_path, doc), environ={})
    icmp = cfg.probes.icmp
    assert icmp is not None
    assert (icmp.enabled, icmp.interval_s, icmp.count, icmp.spacing_s, icmp.timeout_s) == (
        True,
        60.0,
        10,
        0.2,
        2.0,
    )
    assert isinstance(icmp.count, int)
    assert icmp.payload_bytes == 56
    assert icmp.targets == (agent_config.IcmpTarget("127.0.0.1", "127.0.0.1"),)
    assert cfg.uplinks == (agent_config.Uplink("default", "unknown"),)
    dns = cfg.probes.dns
    assert dns is not None
    assert (dns.interval_s, dns.timeout_s, dns.qtype) == (300.0, 2.0, "A")
    assert dns.resolvers == (agent_config.Resolver("127.0.0.1", 53, "127.0.0.1"),)
    http = cfg.probes.http
    assert http is not None
    assert (http.interval_s, http.timeout_s, http.max_bytes) == (300.0, 10.0, 2**20)
    assert http.targets == (
        agent_config.HttpTarget("https://www.kpu.go.id/", "www.kpu.go.id", (200,)),
    )
    assert cfg.collector is None
    assert cfg.schedule == agent_config.Schedule(0.1, 30.0)
    assert cfg.spool.max_mb == 256.0


def test_default_paths(tmp_path: Path) -> None:
    doc = base_config(tmp_path)
    del doc["data_dir"], doc["thresholds_file"]
    shutil.copy(ROOT / "config" / "thresholds.yaml", tmp_path / "thresholds.yaml")
    cfg = agent_config.load(write_config(tmp_path, doc), environ={})
    assert cfg.data_dir == Path("/var/lib/sinyal")
    assert cfg.thresholds_file == tmp_path / "thresholds.yaml"  # next to the config


def test_default_thresholds_file_missing(tmp_path: Path) -> None:
    doc = base_config(tmp_path)
    del doc["thresholds_file"]
    path = write_config(tmp_path, doc)
    with pytest.raises(ConfigError) as info:
        agent_config.load(path, environ={})
    assert info.value.errors == [
        f"{path}: thresholds_file: got nothing, expected a thresholds file "
        f"(none at {tmp_path / 'thresholds.yaml'})"
    ]


def test_relative_paths_resolve_against_the_config_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    shutil.copy(ROOT / "config" / "thresholds.yaml", etc / "th.yaml")
    (etc / "token").write_text("abc\n")
    doc = base_config(tmp_path)
    doc.update(
        data_dir="../var/data",
        thresholds_file="th.yaml",
        collector={"url": "https://c.example/", "token_file": "token"},
    )
    path = write_config(etc, doc)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = agent_config.load(Path("..") / "etc" / "agent.yaml", environ={})
    assert cfg.data_dir.resolve() == tmp_path / "var" / "data"
    assert cfg.data_dir.is_absolute()
    assert cfg.thresholds_file == path.parent / "th.yaml"
    assert cfg.collector is not None and cfg.collector.token_file == etc / "token"
    assert cfg.collector.read_token() == "abc"


# --- environment overrides ----------------------------------------------------------------


def test_env_overrides(tmp_path: Path) -> None:
    doc = base_config(tmp_path)
    doc["collector"] = {"url": "https://c.example/"}
    path = write_config(tmp_path, doc)
    cfg = agent_config.load(
        path,
        environ={
            "SINYAL_STATION__ID": "3171011001002",
            "SINYAL_PROBES__ICMP__COUNT": "5",
            "SINYAL_COLLECTOR__TOKEN": "from-the-environment",
            "SINYAL_DATA_DIR": str(tmp_path / "elsewhere"),
            "SINYAL_CONFIG": "/not/used/by/load",
            "SINYAL_UNRELATED": "ignored",
            "OTHER__THING": "ignored",
        },
    )
    assert cfg.station.id == "3171011001002"  # all digits, still a string
    assert isinstance(cfg.station.id, str)
    assert cfg.probes.icmp is not None
    assert cfg.probes.icmp.count == 5
    assert isinstance(cfg.probes.icmp.count, int)
    assert cfg.collector is not None and cfg.collector.read_token() == "from-the-environment"
    assert cfg.data_dir == tmp_path / "elsewhere"


def test_env_override_keeps_leading_zeros_of_ids(tmp_path: Path) -> None:
    path = write_config(tmp_path, base_config(tmp_path))
    cfg = agent_config.load(path, environ={"SINYAL_STATION__ID": "0171011001002"})
    assert cfg.station.id == "0171011001002"


def test_env_override_from_os_environ(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, base_config(tmp_path))
    monkeypatch.setenv("SINYAL_STATION__ID", "3171011001002")
    assert cli.main(["check-config", "-c", str(path)]) == 0
    assert "station 3171011001002" in capsys.readouterr().out


def test_bad_env_override_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, base_config(tmp_path))
    monkeypatch.setenv("SINYAL_PROBES__ICMP__COUNT", "zero")
    monkeypatch.setenv("SINYAL_PROBES__ICMP__COUTN", "5")
    assert cli.main(["check-config", "-c", str(path)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"{path} ($SINYAL_PROBES__ICMP__COUTN): probes.icmp.coutn: got an unknown key, "
        "expected one of count, enabled, interval_s, payload_bytes, spacing_s, targets, "
        "timeout_s",
        f"{path} ($SINYAL_PROBES__ICMP__COUNT): probes.icmp.count: got 'zero', "
        "expected an integer, 1..1000",
        summary(2),
    ]


def test_bad_env_token_is_masked(tmp_path: Path) -> None:
    doc = base_config(tmp_path)
    doc["collector"] = {"url": "https://c.example/"}
    path = write_config(tmp_path, doc)
    with pytest.raises(ConfigError) as info:
        agent_config.load(path, environ={"SINYAL_COLLECTOR__TOKEN": " "})
    assert info.value.errors == [
        f"{path} ($SINYAL_COLLECTOR__TOKEN): collector.token: got '***', "
        "expected a non-empty token string"
    ]


# --- regressions ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "error"),
    [
        (
            {"station": {"id": "3171011001001\n", "lat": 0, "lon": 0, "tz": "UTC"}},
            "station.id: got '3171011001001\\n', expected a station id",
        ),
        (
            {"probes": {"icmp": {"targets": ["kpu.go.id\n"]}}},
            "probes.icmp.targets[0].host: got 'kpu.go.id\\n', expected an IP address",
        ),
        (
            {"uplinks": [{"name": "m", "interface": "wwan0\n"}]},
            "uplinks[0].interface: got 'wwan0\\n', expected a network interface name",
        ),
    ],
    ids=["station-id", "host", "interface"],
)
def test_trailing_newline_is_not_accepted(
    tmp_path: Path, section: dict[str, Any], error: str
) -> None:
    doc = base_config(tmp_path)
    doc.update(section)
    path = write_config(tmp_path, doc)
    with pytest.raises(ConfigError) as info:
        agent_config.load(path, environ={})
    assert len(info.value.errors) == 1
    assert info.value.errors[0].startswith(f"{path}: {error}")


@pytest.mark.parametrize(
    "token_file", ["x" * 300, "~no-such-user-sinyal/token", "a\0b"], ids=["long", "user", "nul"]
)
def test_unusable_token_file_is_an_error_not_a_crash(tmp_path: Path, token_file: str) -> None:
    doc = base_config(tmp_path)
    doc["collector"] = {"url": "https://c.example/", "token_file": token_file}
    path = write_config(tmp_path, doc)
    with pytest.raises(ConfigError) as info:
        agent_config.load(path, environ={})
    assert len(info.value.errors) == 1
    assert "collector.token_file: got " in info.value.errors[0]
    assert info.value.errors[0].endswith("expected a readable file holding the token")
