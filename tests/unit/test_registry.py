"""collector.registry: the stations CSV (every error at once, all or nothing, upsert) and
agent tokens (stored hashed, scoped, revocable, shared by several processes)."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.regdb import SCHEMA_VERSION, DatabaseError
from collector.registry import (
    COLUMNS,
    ImportResult,
    Registry,
    RegistryError,
    Station,
    TokenInfo,
)
from tests.conftest import ROOT
from tests.harness.postgres import RegistryBackend

EXAMPLE = ROOT / "config" / "stations.example.csv"
HEADER = ",".join(COLUMNS)
GAMBIR = (
    "3171011001001,TPS 001 Gambir,DKI Jakarta,Kota Jakarta Pusat,-6.1754,106.8272,"
    "Asia/Jakarta,telkomsel"
)


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def reg(registry_backend: RegistryBackend) -> Iterator[Registry]:
    """The example stations in a registry on SQLite, then on PostgreSQL."""
    r = registry_backend.open()
    r.import_stations_csv(EXAMPLE)
    yield r
    r.close()


def write_csv(tmp_path: Path, *lines: str, name: str = "stations.csv") -> Path:
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


# --- stations -------------------------------------------------------------------------------


def test_example_file_imports(tmp_path: Path) -> None:
    r = Registry(tmp_path / "registry.sqlite3")
    result = r.import_stations_csv(EXAMPLE)
    assert result == ImportResult(added=13, updated=0, unchanged=0)
    assert r.get_station("3171011001001") == Station(
        "3171011001001",
        "TPS 001 Gambir",
        "DKI Jakarta",
        "Kota Jakarta Pusat",
        -6.1754,
        106.8272,
        "Asia/Jakarta",
        "telkomsel",
    )
    # a quoted name with a comma; a non-TPS id with no expected operator
    assert r.get_station("3171011002004").name == "TPS 004 Cideng, Gambir"  # type: ignore[union-attr]
    assert r.get_station("lab-jakarta-01").expected_operator is None  # type: ignore[union-attr]
    assert r.get_station("3171011001999") is None
    ids = [s.id for s in r.stations()]
    assert ids == sorted(ids) and len(ids) == 13
    assert {s.tz for s in r.stations()} == {"Asia/Jakarta", "Asia/Makassar", "Asia/Jayapura"}
    assert {s.expected_operator for s in r.stations()} == {
        "telkomsel",
        "indosat",
        "xlsmart",
        None,
    }


def test_every_error_is_reported_at_once_and_nothing_is_imported(tmp_path: Path) -> None:
    p = write_csv(
        tmp_path,
        HEADER,
        GAMBIR,
        '3.17101E+12,TPS 2,DKI Jakarta,Kota Jakarta Pusat,"-6,17",106.8,Asia/Jakarta,indosat',
        "",
        "3171011001003,,DKI Jakarta,Kota Jakarta Pusat,-91,181,Asia/Tokyoo,Tel kom",
        '3171011001004,"TPS 004',
        'two lines",DKI Jakarta,Kota Jakarta Pusat,-6.1,106.8,Asia/Jakarta,',
        "3171011001005,TPS 5,DKI Jakarta,Kota Jakarta Pusat,-6.1,106.8,Asia/Jakarta",
        "3171011001006,TPS 6,,Kota Jakarta Pusat,abc,,Asia,xlsmart",
        "3171011001007,TPS 7,DKI Jakarta,Kota Jakarta Pusat,-6.1,106.8,Asia/Jakarta,XLSmart",
    )
    r = Registry(tmp_path / "registry.sqlite3")
    with pytest.raises(RegistryError) as info:
        r.import_stations_csv(p)
    f = str(p)
    tz = "an IANA time zone such as Asia/Jakarta, Asia/Makassar or Asia/Jayapura"
    assert info.value.errors == [
        f"{f}:3: column id: got '3.17101E+12', expected a station id: the 13-digit TPS code"
        " or 1..64 letters, digits, '.', '_', '-' (a spreadsheet turned the code into a"
        " number: format it as text)",
        f"{f}:3: column lat: got '-6,17', expected a latitude in degrees, -90..90"
        " (with a '.' decimal point)",
        f"{f}:5: column name: got nothing, expected a station name, 1..200 printable characters",
        f"{f}:5: column lat: got '-91', expected a latitude in degrees, -90..90",
        f"{f}:5: column lon: got '181', expected a longitude in degrees, -180..180",
        f"{f}:5: column tz: got 'Asia/Tokyoo', expected {tz}",
        f"{f}:5: column expected_operator: got 'Tel kom', expected one of telkomsel, indosat,"
        " xlsmart, smartfren, or empty; did you mean 'telkomsel'?",
        f"{f}:6: column name: got 'TPS 004\\ntwo lines', expected a station name, 1..200"
        " printable characters",
        f"{f}:8: row: got 7 fields, expected 8, one per header column (quote values that hold"
        " a comma)",
        f"{f}:9: column province: got nothing, expected a province name such as DKI Jakarta",
        f"{f}:9: column lat: got 'abc', expected a latitude in degrees, -90..90",
        f"{f}:9: column lon: got nothing, expected a longitude in degrees, -180..180",
        f"{f}:9: column tz: got 'Asia', expected {tz}",
    ]
    assert r.stations() == []  # line 2 and line 10 were fine, but nothing is imported


def test_a_bad_file_leaves_the_registry_as_it_was(reg: Registry, tmp_path: Path) -> None:
    before = reg.stations()
    changed = GAMBIR.replace("TPS 001 Gambir", "renamed")
    p = write_csv(tmp_path, HEADER, changed, "3171011001009,x,y,z,100,0,Asia/Jakarta,")
    with pytest.raises(RegistryError):
        reg.import_stations_csv(p)
    assert reg.stations() == before


def test_duplicate_ids_name_the_first_line(tmp_path: Path) -> None:
    other = GAMBIR.replace("TPS 001 Gambir", "TPS 001 again")
    p = write_csv(tmp_path, HEADER, GAMBIR, GAMBIR.replace("001001", "001002"), other, GAMBIR)
    with pytest.raises(RegistryError) as info:
        Registry(tmp_path / "r.sqlite3").import_stations_csv(p)
    assert info.value.errors == [
        f"{p}:4: column id: got '3171011001001', expected an id not already used on line 2",
        f"{p}:5: column id: got '3171011001001', expected an id not already used on line 2",
    ]


@pytest.mark.parametrize(
    ("header", "errors"),
    [
        (
            "id,name,province,regency,lat,lon,tz",
            ["1: column expected_operator: got nothing, expected a header column named"
             " expected_operator"],
        ),
        (
            "id,name,province,regency,lat,lon,tz,operator",
            ["1: column operator: got an unknown column, expected one of " + ", ".join(COLUMNS),
             "1: column expected_operator: got nothing, expected a header column named"
             " expected_operator"],
        ),
        (
            "id,id,name,province,regency,lat,lon,tz,expected_operator",
            ["1: column id: got a second column of that name, expected each once"],
        ),
    ],
    ids=["missing", "unknown", "twice"],
)  # fmt: skip
def test_header_errors(tmp_path: Path, header: str, errors: list[str]) -> None:
    p = write_csv(tmp_path, header, GAMBIR)
    with pytest.raises(RegistryError) as info:
        Registry(tmp_path / "r.sqlite3").import_stations_csv(p)
    assert info.value.errors == [f"{p}:{e}" for e in errors]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", "1: header: got nothing, expected the header line " + HEADER),
        ("\n\n", "1: header: got nothing, expected the header line " + HEADER),
        (HEADER + "\n", "2: row: got nothing, expected at least one station after the header"),
    ],
    ids=["empty", "blank", "header-only"],
)
def test_empty_files(tmp_path: Path, text: str, error: str) -> None:
    p = tmp_path / "s.csv"
    p.write_text(text)
    with pytest.raises(RegistryError) as info:
        Registry(tmp_path / "r.sqlite3").import_stations_csv(p)
    assert info.value.errors == [f"{p}:{error}"]


def test_unreadable_files(tmp_path: Path) -> None:
    r = Registry(tmp_path / "r.sqlite3")
    with pytest.raises(RegistryError) as info:
        r.import_stations_csv(tmp_path / "missing.csv")
    assert info.value.errors == [f"{tmp_path / 'missing.csv'}: file not found"]
    p = tmp_path / "latin1.csv"
    p.write_bytes(HEADER.encode() + b"\n" + GAMBIR.replace("Gambir", "G\xe2mbir").encode("latin-1"))
    with pytest.raises(RegistryError) as info:
        r.import_stations_csv(p)
    assert info.value.errors[0].startswith(f"{p}: not UTF-8 text")


def test_spreadsheet_exports_are_read(tmp_path: Path) -> None:
    """A byte-order mark, CRLF line ends, a capitalised header, spaces around values, and
    semicolons as saved by spreadsheets in Indonesian locales."""
    p = tmp_path / "excel.csv"
    rows = [HEADER.upper().replace(",", ";"), " " + GAMBIR.replace(",", " ; ")]
    p.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(rows).encode() + b"\r\n")
    r = Registry(tmp_path / "r.sqlite3")
    assert r.import_stations_csv(p) == ImportResult(1, 0, 0)
    s = r.get_station("3171011001001")
    assert s is not None and s.name == "TPS 001 Gambir" and s.lat == -6.1754


def test_reimport_updates_changed_rows_and_keeps_others(reg: Registry, tmp_path: Path) -> None:
    lines = EXAMPLE.read_text().splitlines()
    assert lines[1].startswith("3171011001001,")
    lines[1] = lines[1].replace("telkomsel", "indosat").replace("TPS 001 Gambir", "TPS 001 Baru")
    del lines[2]  # stations missing from the file are kept
    lines.append("3171011001002,TPS 002 Gambir,DKI Jakarta,Kota Jakarta Pusat,-6.17,106.82,"
                 "Asia/Jakarta,xlsmart")  # fmt: skip
    result = reg.import_stations_csv(write_csv(tmp_path, *lines))
    assert result == ImportResult(added=1, updated=1, unchanged=11)
    assert result.total == 13
    s = reg.get_station("3171011001001")
    assert s is not None and (s.name, s.expected_operator) == ("TPS 001 Baru", "indosat")
    assert reg.get_station("3171011002004") is not None
    assert len(reg.stations()) == 14
    assert reg.import_stations_csv(EXAMPLE) == ImportResult(0, 1, 12)


# --- tokens ---------------------------------------------------------------------------------


def test_add_authenticate_revoke(reg: Registry) -> None:
    info, token = reg.add_token(station="3171011001001", note="Pi at TPS 001")
    assert token.startswith("sny_") and len(token) >= 40
    assert (info.scope_kind, info.scope_value, info.note) == (
        "station",
        "3171011001001",
        "Pi at TPS 001",
    )
    assert len(info.id) == 8 and info.revoked_at is None
    assert reg.authenticate(token) == info
    assert reg.authenticate(token + "x") is None
    assert reg.authenticate("sny_" + "A" * 43) is None
    assert reg.authenticate(token[4:]) is None  # without the prefix
    assert reg.authenticate("sny_" + "x" * 10_000) is None
    assert reg.authenticate("") is None

    other, other_token = reg.add_token(region="31")
    assert reg.revoke(info.id) is True
    assert reg.authenticate(token) is None
    assert reg.authenticate(other_token) == other  # only the revoked one stops working
    assert reg.revoke(info.id) is True  # already revoked: still known
    assert reg.revoke("00000000") is False
    listed = {t.id: t for t in reg.list_tokens()}
    assert listed[info.id].revoked_at is not None and listed[other.id].revoked_at is None
    assert reg.get_token(info.id) == listed[info.id]
    assert reg.get_token("nope") is None


def test_tokens_are_stored_hashed(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "data" / "registry.sqlite3")
    reg.import_stations_csv(EXAMPLE)
    tokens = [reg.add_token(station="3171011001001")[1] for _ in range(3)]
    reg.close()
    raw = b"".join(p.read_bytes() for p in (tmp_path / "data").iterdir())
    for token in tokens:
        assert token.encode() not in raw
        assert token[4:].encode() not in raw
        assert hashlib.sha256(token.encode()).digest() in raw
    again = Registry(tmp_path / "data" / "registry.sqlite3")
    assert all(again.authenticate(t) is not None for t in tokens)


def test_authenticate_compares_in_constant_time(
    reg: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return bool(real(a, b))

    monkeypatch.setattr(hmac, "compare_digest", spy)
    _, token = reg.add_token(station="3171011001001")
    assert reg.authenticate(token) is not None
    assert calls == [(hashlib.sha256(token.encode()).digest(),) * 2]


def test_region_scope_allows_by_prefix(reg: Registry) -> None:
    for prefix in ("31", "3171", "317101", "3171011001"):
        info, token = reg.add_token(region=prefix)
        assert reg.authenticate(token) == info
        assert info.allows("3171011001001")
        assert info.allows("3171011002004") == (prefix != "3171011001")
        assert not info.allows("3271011001001")
        assert not info.allows("lab-jakarta-01")
    assert reg.add_token(region="91")[0].allows("9171011001006")


def test_station_scope_allows_only_that_station(reg: Registry) -> None:
    info, _ = reg.add_token(station="3171011001001")
    assert info.allows("3171011001001")
    assert not info.allows("3171011001002")
    assert not info.allows("31710110010011")
    assert not info.allows("317101100100")
    lab, _ = reg.add_token(station="lab-jakarta-01")
    assert lab.allows("lab-jakarta-01") and not lab.allows("lab-jakarta-011")


def test_a_revoked_token_info_allows_nothing() -> None:
    info = TokenInfo("abcd1234", "region", "31", "", "2024-02-14T00:00:00Z", "2024-02-15T00:00:00Z")
    assert not info.allows("3171011001001")


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        (
            {"station": "3171011001999"},
            "station: got '3171011001999', expected a station in the registry (import it"
            " first: sinyal-collector stations import FILE.csv)",
        ),
        (
            {"station": "31 71"},
            "station: got '31 71', expected a station id: the 13-digit TPS code or 1..64"
            " letters, digits, '.', '_', '-'",
        ),
        *(
            (
                {"region": bad},
                f"region: got {bad!r}, expected a region code prefix of 2 (province), 4"
                " (regency), 6 (district) or 10 (village) digits",
            )
            for bad in ("3", "317", "31710", "3171011001001", "31ab", "٣١")
        ),
        ({}, "scope: expected exactly one of a station id or a region prefix"),
        (
            {"station": "3171011001001", "region": "31"},
            "scope: expected exactly one of a station id or a region prefix",
        ),
        (
            {"region": "31", "note": "two\nlines"},
            "note: got 'two\\nlines', expected one line of at most 200 characters",
        ),
    ],
)
def test_add_token_rejects_bad_scopes(reg: Registry, kwargs: dict[str, str], error: str) -> None:
    with pytest.raises(RegistryError) as info:
        reg.add_token(**kwargs)
    assert info.value.errors == [error]
    assert reg.list_tokens() == []


def test_add_tokens_is_all_or_nothing_and_names_each_bad_scope(reg: Registry) -> None:
    with pytest.raises(RegistryError) as info:
        reg.add_tokens([("3171011001001", None), ("3171011001999", None), (None, "317")])
    assert info.value.errors == [
        "scope 2: station: got '3171011001999', expected a station in the registry"
        " (import it first: sinyal-collector stations import FILE.csv)",
        "scope 3: region: got '317', expected a region code prefix of 2 (province),"
        " 4 (regency), 6 (district) or 10 (village) digits",
    ]
    assert reg.list_tokens() == []
    ids = [s.id for s in reg.stations()]
    issued = reg.add_tokens([(sid, None) for sid in ids] + [(None, "31")], note="fleet")
    assert [i.scope for i, _ in issued] == [f"station {sid}" for sid in ids] + ["region 31"]
    assert len({i.id for i, _ in issued}) == len({t for _, t in issued}) == len(ids) + 1
    for info, token in issued:
        assert reg.authenticate(token) == info


def test_tokens_never_reach_reprs_or_logs(reg: Registry, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    info, token = reg.add_token(region="3171", note="survey")
    assert reg.authenticate(token) == info
    reg.revoke(info.id)
    reg.flush_usage()
    for text in (repr(info), str(info), repr(reg.list_tokens()), caplog.text, repr(reg)):
        assert token not in text and token[4:20] not in text
    assert info.id in caplog.text  # the public id is what logs name


def test_last_used_is_flushed(reg: Registry) -> None:
    info, token = reg.add_token(station="3171011001001")
    assert reg.flush_usage() == 0
    reg.authenticate(token)
    assert reg.get_token(info.id).last_used_at is None  # type: ignore[union-attr]
    assert reg.flush_usage() == 1
    used = reg.get_token(info.id).last_used_at  # type: ignore[union-attr]
    assert used is not None and used.endswith("Z")


# --- several processes on one file ----------------------------------------------------------


def test_a_second_instance_sees_changes_within_the_refresh_bound(
    registry_backend: RegistryBackend,
) -> None:
    cli = registry_backend.open()
    clock = FakeClock()
    server = registry_backend.open(refresh_s=5.0, clock=clock)
    cli.import_stations_csv(EXAMPLE)
    info, token = cli.add_token(station="3171011001001")

    # Within the bound the server may still answer from its cache ...
    assert server.authenticate(token) is None
    assert server.get_station("3171011001001") is None
    clock.t += 5.0  # ... and after it, it has re-read the registry.
    assert server.authenticate(token) == info
    assert server.get_station("3171011001001") is not None

    assert cli.revoke(info.id)
    clock.t += 4.9
    assert server.authenticate(token) == info  # cached: the documented staleness
    clock.t += 0.1
    assert server.authenticate(token) is None


def test_refresh_zero_checks_on_every_call(registry_backend: RegistryBackend) -> None:
    a, b = registry_backend.open(), registry_backend.open(refresh_s=0)
    a.import_stations_csv(EXAMPLE)
    info, token = a.add_token(region="31")
    assert b.authenticate(token) == info
    a.revoke(info.id)
    assert b.authenticate(token) is None


def test_tokens_added_by_another_process(registry_backend: RegistryBackend) -> None:
    server = registry_backend.open(refresh_s=0)
    server.import_stations_csv(EXAMPLE)
    code = (
        "import sys; from collector.registry import Registry\n"
        "r = Registry(sys.argv[1]); info, token = r.add_token(station='3171011001001')\n"
        "print(info.id, token)\n"
    )
    # The other process finds the password where libpq looks for it (PGPASSWORD).
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PGPASSWORD": registry_backend.password or ""}
    out = subprocess.run(
        [sys.executable, "-c", code, str(registry_backend.target)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        timeout=30,
        env=env,
    ).stdout.split()
    token_id, token = out
    info = server.authenticate(token)
    assert info is not None and info.id == token_id
    assert server.revoke(token_id)
    assert registry_backend.open().authenticate(token) is None


def test_names_that_look_like_sql_are_stored_as_text(reg: Registry, tmp_path: Path) -> None:
    """Every query is parameterised: a station name written to break out of a string
    literal is a name like any other, on either database."""
    hostile = "TPS 1'); DROP TABLE tokens; --"
    quoted = '"' + hostile.replace('"', '""') + '"'
    line = f"3171011001001,{quoted},DKI Jakarta,Kota Jakarta Pusat,-6.17,106.82,Asia/Jakarta,"
    assert reg.import_stations_csv(write_csv(tmp_path, HEADER, line)) == ImportResult(0, 1, 0)
    station = reg.get_station("3171011001001")
    assert station is not None and station.name == hostile
    info, token = reg.add_token(station="3171011001001", note="x' OR '1'='1")
    assert reg.authenticate(token) == info
    assert reg.get_token(info.id) == info and reg.get_token("' OR '1'='1") is None
    assert reg.revoke("' OR '1'='1") is False and reg.authenticate(token) == info


LEGACY_SCHEMA = """
CREATE TABLE stations (id TEXT PRIMARY KEY, name TEXT NOT NULL, province TEXT NOT NULL,
    regency TEXT NOT NULL, lat REAL NOT NULL, lon REAL NOT NULL, tz TEXT NOT NULL,
    expected_operator TEXT);
CREATE TABLE tokens (id TEXT PRIMARY KEY, hash BLOB NOT NULL UNIQUE, scope_kind TEXT NOT NULL,
    scope_value TEXT NOT NULL, note TEXT NOT NULL, created_at TEXT NOT NULL, revoked_at TEXT,
    last_used_at TEXT);
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO meta VALUES ('stations_gen', 1), ('tokens_gen', 1);
INSERT INTO tokens VALUES ('0badc0de', X'{digest}', 'region', '31', '', '2026-01-01T00:00:00Z',
    NULL, NULL);
PRAGMA user_version = 1;
"""


def test_a_registry_from_before_migrations_is_migrated_and_keeps_its_tokens(
    tmp_path: Path,
) -> None:
    import sqlite3

    path = tmp_path / "registry.sqlite3"
    token = "sny_" + "k" * 43
    with sqlite3.connect(path) as db:
        db.executescript(LEGACY_SCHEMA.format(digest=hashlib.sha256(token.encode()).hexdigest()))
    reg = Registry(path, refresh_s=0)
    assert reg._db.version() == SCHEMA_VERSION
    info = reg.authenticate(token)
    assert info is not None and info.id == "0badc0de"
    other = Registry(path, refresh_s=0)
    assert other.authenticate(token) is not None
    assert reg.revoke(info.id)
    assert other.authenticate(token) is None  # revoked_gen, added by migration 2


def test_a_registry_newer_than_the_code_is_refused(registry_backend: RegistryBackend) -> None:
    reg = registry_backend.open()
    with reg.transaction() as db:
        db.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?, 'later')",
            (SCHEMA_VERSION + 1,),
        )
    reg.close()
    with pytest.raises(DatabaseError) as info:
        registry_backend.open()
    assert str(info.value) == (
        f"registry {registry_backend.target}: schema version {SCHEMA_VERSION + 1}, but this "
        f"collector knows versions up to {SCHEMA_VERSION}: upgrade sinyal on this machine"
    )
