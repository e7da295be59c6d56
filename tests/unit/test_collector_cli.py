"""collector.cli: check-config, stations import/list, agents add/list/revoke; exit codes,
help texts, and the token shown exactly once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from collector import cli
from tests.conftest import ROOT
from tests.harness.postgres import RegistryBackend

EXAMPLE = ROOT / "config" / "stations.example.csv"


@pytest.fixture
def config(tmp_path: Path, registry_backend: RegistryBackend) -> Path:
    """A config whose registry is the default SQLite file, then a PostgreSQL database."""
    doc = {
        "sink": {"kind": "v1", "url": "http://127.0.0.1:9"},  # registry commands never use it
        "data_dir": str(tmp_path / "data"),
        "thresholds_file": str(ROOT / "config" / "thresholds.yaml"),
    }
    if registry_backend.name == "postgres":
        doc["registry"] = registry_backend.config(tmp_path)
    path = tmp_path / "collector.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def imported(config: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    assert run(capsys, "-c", str(config), "stations", "import", str(EXAMPLE))[0] == 0
    return config


# --- help -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "purpose"),
    [
        ([], "receives the agents' measurements"),
        (["check-config"], "Validate the config and the thresholds file"),
        (["stations"], "The station registry"),
        (["stations", "import"], "Add or update stations from a CSV file"),
        (["stations", "list"], "List the registered stations"),
        (["agents"], "Agent tokens."),
        (["agents", "add"], "The token is shown only this once"),
        (["agents", "list"], "Tokens themselves are never shown"),
        (["agents", "revoke"], "Exit 1 when no token has that id"),
    ],
    ids=lambda v: "-".join(v) if isinstance(v, list) else None,
)
def test_help(command: list[str], purpose: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main([*command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: sinyal-collector {' '.join(command)}".rstrip())
    assert purpose in " ".join(out.split())
    assert "-c FILE, --config FILE" in out


def test_top_level_help_lists_commands_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for name in ("check-config", "stations", "agents"):
        assert f"    {name} " in out
    assert "exit codes: 0 ok, 1 failure, 2 invalid config, usage or input" in out


@pytest.mark.parametrize("argv", [[], ["stations"], ["agents"]], ids=["none", "stations", "agents"])
def test_a_missing_command_prints_usage_and_exits_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith(f"usage: sinyal-collector {' '.join(argv)}".rstrip())


# --- check-config ---------------------------------------------------------------------------


def test_check_config_valid(
    config: Path, registry_backend: RegistryBackend, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "check-config", "-c", str(config))
    assert code == 0 and err == ""
    assert out.count("\n") == 1
    assert out.startswith(f"{config}: valid (listen 127.0.0.1:8080, sink v1 http://127.0.0.1:9")
    assert f"registry {registry_backend.target}" in out
    assert not (config.parent / "data").exists()  # checking creates nothing


def test_check_config_hides_credentials_in_the_sink_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "sink": {"kind": "v1", "url": "http://admin:s3cret@127.0.0.1:8086"},
                "thresholds_file": str(ROOT / "config" / "thresholds.yaml"),
            }
        )
    )
    code, out, _ = run(capsys, "-c", str(path), "check-config")
    assert code == 0 and "s3cret" not in out and "http://127.0.0.1:8086" in out


def test_config_option_before_or_after_the_command_and_from_the_environment(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run(capsys, "-c", str(config), "check-config")[0] == 0
    assert run(capsys, "check-config", "--config", str(config))[0] == 0
    monkeypatch.setenv("SINYAL_COLLECTOR_CONFIG", str(config))
    assert run(capsys, "check-config")[0] == 0


def test_check_config_invalid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"sink": {"kind": "v9", "url": "ftp://x"}, "listen": 1}))
    code, out, err = run(capsys, "-c", str(path), "check-config")
    assert code == 2 and out == ""
    lines = err.splitlines()
    assert f"{path}: sink.kind: got 'v9', expected v1 or v2" in lines
    assert f"{path}: sink.url: got 'ftp://x', expected the database's http(s) base URL" in lines
    assert lines[-1].endswith("problems; see docs/collector.md")


def test_a_missing_config_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "-c", str(tmp_path / "nope.yaml"), "stations", "list")
    assert code == 2 and "nope.yaml: file not found" in err


# --- stations -------------------------------------------------------------------------------


def test_stations_import_and_list(
    config: Path, registry_backend: RegistryBackend, capsys: pytest.CaptureFixture[str]
) -> None:
    c = str(config)
    code, out, err = run(capsys, "-c", c, "stations", "import", str(EXAMPLE))
    assert code == 0 and err == ""
    registry = registry_backend.target
    assert out == f"imported 13 stations (13 added, 0 updated, 0 unchanged) into {registry}\n"
    code, out, _ = run(capsys, "-c", c, "stations", "import", str(EXAMPLE))
    assert "(0 added, 0 updated, 13 unchanged)" in out

    code, out, _ = run(capsys, "-c", c, "stations", "list")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 14
    assert lines[0].split() == ["ID", "NAME", "PROVINCE", "REGENCY", "LAT", "LON", "TZ", "OPERATOR"]
    gambir = next(line for line in lines if line.startswith("3171011001001 "))
    assert "TPS 001 Gambir" in gambir and "Kota Jakarta Pusat" in gambir
    assert gambir.split()[-3:] == ["106.82720", "Asia/Jakarta", "telkomsel"]

    code, out, _ = run(capsys, "-c", c, "stations", "list", "--json")
    stations = json.loads(out)
    assert code == 0 and len(stations) == 13
    assert stations[0] == {
        "id": "1171031001002",
        "name": "TPS 002 Baiturrahman",
        "province": "Aceh",
        "regency": "Kota Banda Aceh",
        "lat": 5.5483,
        "lon": 95.3238,
        "tz": "Asia/Jakarta",
        "expected_operator": "telkomsel",
    }


def test_stations_import_errors(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "id,name,province,regency,lat,lon,tz,expected_operator\n"
        "3171011001001,TPS 1,DKI Jakarta,Kota Jakarta Pusat,-6.1,106.8,Asia/Jakarta,telkomsel\n"
        "3171011001002,TPS 2,DKI Jakarta,Kota Jakarta Pusat,-6.1,200,Asia/Jakarta,telkomsel\n"
        "3171011001001,TPS 3,DKI Jakarta,Kota Jakarta Pusat,-6.1,106.8,WIB,telkomsel\n"
    )
    code, out, err = run(capsys, "-c", str(config), "stations", "import", str(bad))
    assert code == 2 and out == ""
    assert err.splitlines() == [
        f"{bad}:3: column lon: got '200', expected a longitude in degrees, -180..180",
        f"{bad}:4: column id: got '3171011001001', expected an id not already used on line 2",
        f"{bad}:4: column tz: got 'WIB', expected an IANA time zone such as Asia/Jakarta,"
        " Asia/Makassar or Asia/Jayapura",
        "3 problems; nothing was changed; see docs/collector.md",
    ]
    code, out, err = run(capsys, "-c", str(config), "stations", "list", "--json")
    assert code == 0 and json.loads(out) == []
    code, out, err = run(capsys, "-c", str(config), "stations", "list")
    assert code == 0 and out == "" and "no stations in the registry" in err


def test_stations_import_of_a_missing_file(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "-c", str(config), "stations", "import", str(tmp_path / "x.csv"))
    assert code == 2 and f"{tmp_path / 'x.csv'}: file not found" in err


def test_a_registry_that_cannot_be_opened_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "data").write_text("a file where the data directory should be")
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "sink": {"kind": "v1", "url": "http://127.0.0.1:9"},
                "data_dir": str(tmp_path / "data" / "sub"),
                "thresholds_file": str(ROOT / "config" / "thresholds.yaml"),
            }
        )
    )
    code, _, err = run(capsys, "-c", str(path), "stations", "list")
    assert code == 1 and err.startswith(f"registry {tmp_path / 'data' / 'sub'}")


# --- agents ---------------------------------------------------------------------------------


def test_agents_add_prints_the_token_once(
    imported: Path, registry_backend: RegistryBackend, capsys: pytest.CaptureFixture[str]
) -> None:
    c = str(imported)
    code, out, err = run(capsys, "-c", c, "agents", "add", "--station", "3171011001001",
                         "--note", "Pi at TPS 001")  # fmt: skip
    assert code == 0
    token = out.strip()
    assert out == token + "\n" and token.startswith("sny_")  # stdout: the token alone
    assert token not in err
    assert "WARNING: this is the only time the token is shown" in err
    registry = registry_backend.open()
    info = registry.authenticate(token)
    assert info is not None and info.scope_value == "3171011001001"
    assert err.splitlines()[0] == f"token id {info.id}, scoped to station 3171011001001"

    for argv in (["agents", "list"], ["agents", "list", "--json"], ["stations", "list"]):
        code, out, err = run(capsys, "-c", c, *argv)
        assert code == 0 and token not in out + err and token[4:24] not in out + err
    code, out, _ = run(capsys, "-c", c, "agents", "list")
    lines = out.splitlines()
    assert lines[0].split() == [
        "TOKEN",
        "ID",
        "SCOPE",
        "CREATED",
        "LAST",
        "USED",
        "REVOKED",
        "NOTE",
    ]
    assert lines[1].startswith(f"{info.id}  station 3171011001001  ")
    assert lines[1].endswith("Pi at TPS 001")
    code, out, _ = run(capsys, "-c", c, "agents", "list", "--json")
    assert json.loads(out) == [
        {
            "id": info.id,
            "scope_kind": "station",
            "scope_value": "3171011001001",
            "note": "Pi at TPS 001",
            "created_at": info.created_at,
            "revoked_at": None,
            "last_used_at": None,
        }
    ]


def test_agents_add_region(imported: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "-c", str(imported), "agents", "add", "--region", "3171")
    assert code == 0 and out.startswith("sny_")
    assert "scoped to region 3171" in err and "no station in the registry" not in err
    code, out, err = run(capsys, "-c", str(imported), "agents", "add", "--region", "3172")
    assert code == 0 and "note: no station in the registry starts with 3172 yet" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--station", "3171011001999"],
            "station: got '3171011001999', expected a station in the registry",
        ),
        (["--region", "317"], "region: got '317', expected a region code prefix of 2"),
    ],
    ids=["unknown-station", "bad-region"],
)
def test_agents_add_rejects_bad_scopes(
    imported: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "-c", str(imported), "agents", "add", *argv)
    assert code == 2 and out == ""
    assert err.startswith(message)
    assert err.splitlines()[-1] == "1 problem; nothing was changed; see docs/collector.md"
    assert run(capsys, "-c", str(imported), "agents", "list", "--json")[1] == "[]\n"


@pytest.mark.parametrize(
    "argv",
    [[], ["--station", "3171011001001", "--region", "31"]],
    ids=["neither", "both"],
)
def test_agents_add_needs_exactly_one_scope(
    imported: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["-c", str(imported), "agents", "add", *argv])
    assert info.value.code == 2
    assert "--station" in capsys.readouterr().err


def test_agents_add_all_stations_provisions_the_fleet_once(
    imported: Path,
    registry_backend: RegistryBackend,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    c = str(imported)
    code, out, _ = run(capsys, "-c", c, "agents", "add", "--station", "3171011001001")
    assert code == 0
    first = out.strip()
    out_file = tmp_path / "tokens.csv"
    code, out, err = run(capsys, "-c", c, "agents", "add", "--all-stations", "--out",
                         str(out_file), "--note", "bulk")  # fmt: skip
    assert code == 0 and out == ""
    stations = [s.id for s in registry_backend.open().stations()]
    rows = out_file.read_text().splitlines()
    assert rows[0] == "station,token_id,token"
    issued = [r.split(",") for r in rows[1:]]
    # every station but the one that already had a token, each once
    assert sorted(r[0] for r in issued) == sorted(set(stations) - {"3171011001001"})
    assert f"{len(issued)} tokens issued (1 stations already had one)" in err
    assert out_file.stat().st_mode & 0o777 == 0o600
    registry = registry_backend.open()
    for station, token_id, token in issued:
        info = registry.authenticate(token)
        assert info is not None and (info.id, info.scope_value) == (token_id, station)
    assert registry.authenticate(first) is not None
    assert len({r[1] for r in issued}) == len(issued)

    # the file is never overwritten; --out belongs to --all-stations
    code, _, err = run(capsys, "-c", c, "agents", "add", "--all-stations", "--out",
                       str(out_file))  # fmt: skip
    assert code == 2 and f"{out_file}: cannot create (File exists)" in err
    assert out_file.read_text().splitlines() == rows
    code, _, err = run(capsys, "-c", c, "agents", "add", "--all-stations")
    assert code == 2 and "--all-stations needs --out FILE" in err
    code, _, err = run(capsys, "-c", c, "agents", "add", "--station", "3171011001001",
                       "--out", str(tmp_path / "x.csv"))  # fmt: skip
    assert code == 2 and "--out goes with --all-stations" in err
    assert len(registry.list_tokens()) == len(stations)


def test_agents_revoke(
    imported: Path, registry_backend: RegistryBackend, capsys: pytest.CaptureFixture[str]
) -> None:
    c = str(imported)
    token = run(capsys, "-c", c, "agents", "add", "--region", "31")[1].strip()
    registry = registry_backend.open(refresh_s=0)
    info = registry.authenticate(token)
    assert info is not None

    code, out, err = run(capsys, "-c", c, "agents", "revoke", info.id)
    assert (code, out, err) == (0, f"revoked token {info.id} (region 31)\n", "")
    assert registry.authenticate(token) is None
    code, out, _ = run(capsys, "-c", c, "agents", "revoke", info.id)
    assert code == 0 and out.startswith(f"token {info.id} (region 31) was already revoked at ")
    code, out, _ = run(capsys, "-c", c, "agents", "list")
    assert out.splitlines()[1].split()[:3] == [info.id, "region", "31"]
    assert registry.get_token(info.id).revoked_at in out  # type: ignore[union-attr,operator]

    code, out, err = run(capsys, "-c", c, "agents", "revoke", "deadbeef")
    assert code == 1 and out == ""
    assert err == "no token with id 'deadbeef'; see: sinyal-collector agents list\n"


def test_agents_list_when_empty(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "-c", str(config), "agents", "list")
    assert code == 0 and out == "" and "no tokens" in err
