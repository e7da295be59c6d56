"""Kemendagri regions and operator labels: what ``stations import`` checks a station against.

Reports group by province, regency and operator, so these must be right in the registry.

- **Regions.** The official code table of the 38 provinces and 514 regencies/cities ships as
  data (``collector/data/kemendagri_wilayah.csv``; its source and date are in the README next
  to it). A province is accepted by its name, its name as the decree writes it, or its
  2-digit code; a regency by its name (``Kabupaten``/``Kab.``, ``Kota``, ``Kota
  Administrasi``/``Kota Adm.``), its decree name or its 4-digit code (``3171`` or the
  decree's ``31.71``); case, dots and
  repeated spaces do not matter. The registry stores the table's ``name``. Anything else
  ("Jakarta", "Jabar", "Bandung") is refused, with a "did you mean" when there is a likely
  answer: a guess is never stored, because a report would then count the station in a
  region nobody chose.
- **TPS codes.** A station id made only of digits (and separators) is a TPS code: 13 digits,
  the 10-digit village code (province 2, regency 2, district 2, village 4 digits, the first
  of which is 1 kelurahan, 2 desa or 3 desa adat) plus a 3-digit TPS number (001..999). Its
  first 4 digits must be the regency the row names. Other ids (letters too: a lab laptop)
  are not TPS codes and have no prefix to check.
- **Operators.** Labels are lower-case: the built-in ``telkomsel``, ``indosat``,
  ``xlsmart``, ``smartfren`` plus ``registry.extra_operators`` of the collector config. A
  label is matched ignoring case, spaces, dots, ``-`` and ``_`` ("XL Smart" is xlsmart);
  brand names, former companies and PLMN codes ("xl", "XL Axiata", "IM3", "51010") get a
  "did you mean".
"""

from __future__ import annotations

import csv
import difflib
import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

WILAYAH_VERSION = "Kepmendagri 300.2.2-2138/2025"
TABLE_PATH = Path(__file__).resolve().parent / "data" / "kemendagri_wilayah.csv"
TABLE_COLUMNS = ("code", "level", "name", "official_name", "zone", "tz")
ZONES = {"WIB": "Asia/Jakarta", "WITA": "Asia/Makassar", "WIT": "Asia/Jayapura"}
BUILTIN_OPERATORS = ("telkomsel", "indosat", "xlsmart", "smartfren")
TPS_EXAMPLE = "3171011001001"
TPS_FORMAT = (
    f"a 13-digit TPS code: the 10-digit village code + a 3-digit TPS number, e.g. {TPS_EXAMPLE}"
)

_TPS_LIKE_RE = re.compile(r"[0-9][0-9._ -]*")
_SEPARATORS_RE = re.compile(r"[._ -]")
# Suggestions cost milliseconds (difflib over hundreds of names), so each distinct bad value
# is looked up once, and after this many distinct ones a file gets no more "did you mean"
# (its errors are still all reported): a file of a million different typos stays fast.
_SUGGESTIONS_MAX = 2_000
_VILLAGE_KINDS = "123"  # 1 kelurahan, 2 desa, 3 desa adat (Permendagri 58/2021)

# What people write instead of a province's name: suggested, never accepted.
_PROVINCE_ALIASES = {
    "jakarta": "31",
    "dki": "31",
    "dkj": "31",
    "daerah khusus jakarta": "31",  # its name since UU 2/2024; the decree still has DKI
    "jabar": "32",
    "jateng": "33",
    "jatim": "35",
    "diy": "34",
    "yogyakarta": "34",
    "jogja": "34",
    "jogjakarta": "34",
    "nad": "11",
    "nanggroe aceh darussalam": "11",
    "sumut": "12",
    "sumbar": "13",
    "sumsel": "16",
    "babel": "19",
    "bangka belitung": "19",
    "kepri": "21",
    "ntb": "52",
    "ntt": "53",
    "kalbar": "61",
    "kalteng": "62",
    "kalsel": "63",
    "kaltim": "64",
    "kaltara": "65",
    "sulut": "71",
    "sulteng": "72",
    "sulsel": "73",
    "sultra": "74",
    "sulbar": "76",
    "malut": "82",
    "pabar": "92",
    "irian jaya": "91",
    "pbd": "96",
}

# Operator brands, former companies and PLMN codes (MCC 510; docs/collector.md) -> label.
_OPERATOR_ALIASES = {
    "telkom": "telkomsel",
    "tsel": "telkomsel",
    "simpati": "telkomsel",
    "kartuhalo": "telkomsel",
    "halo": "telkomsel",
    "byu": "telkomsel",
    "51010": "telkomsel",
    "im3": "indosat",
    "ioh": "indosat",
    "isat": "indosat",
    "ooredoo": "indosat",
    "indosatooredoo": "indosat",
    "indosatooredoohutchison": "indosat",
    "tri": "indosat",
    "three": "indosat",
    "3": "indosat",
    "h3i": "indosat",
    "hutchison": "indosat",
    "51001": "indosat",
    "51021": "indosat",
    "51089": "indosat",
    "xl": "xlsmart",
    "xlaxiata": "xlsmart",
    "axis": "xlsmart",
    "xlsmarttelecomsejahtera": "xlsmart",
    "51011": "xlsmart",
    "51008": "xlsmart",
    "fren": "smartfren",
    "smart": "smartfren",
    "smartfrentelecom": "smartfren",
    "51009": "smartfren",
    "51028": "smartfren",
}
_OPERATOR_NOTES = {
    "xlsmart": " (XL Axiata and AXIS are XLSmart since April 2025)",
    "indosat": " (IM3 and Tri are Indosat Ooredoo Hutchison)",
}


@dataclass(frozen=True, slots=True)
class Region:
    """One row of the table: a province (2-digit code) or a regency/city (4 digits)."""

    code: str
    level: str  # provinsi, kabupaten, kota
    name: str  # what the registry stores
    official_name: str  # as the decree writes it
    zone: str  # WIB, WITA, WIT
    tz: str  # IANA zone of the province

    @property
    def province_code(self) -> str:
        return self.code[:2]

    def label(self) -> str:
        return f"{self.name} ({self.code})"


@dataclass(frozen=True, slots=True)
class Problem:
    """One bad value of a station row: `column` and what was expected instead."""

    column: str
    expected: str


@dataclass(frozen=True, slots=True)
class Place:
    """A row's province and regency as the registry stores them (None where refused)."""

    province: str | None
    regency: str | None
    problems: tuple[Problem, ...]


def _key(text: str) -> str:
    """Case, dots and repeated spaces do not matter."""
    return " ".join(text.replace(".", " ").casefold().split())


def _spellings(region: Region) -> set[str]:
    """Every accepted way to write a region (as `_key`s)."""
    out = {_key(region.name), _key(region.official_name), region.code}
    if len(region.code) == 4:
        out.add(_key(f"{region.code[:2]}.{region.code[2:]}"))  # the decree's dotted form, 31.71
    for full, short in (
        ("kabupaten administrasi ", "kab adm "),
        ("kota administrasi ", "kota adm "),
        ("kabupaten ", "kab "),
    ):
        for k in list(out):
            if k.startswith(full):
                out.add(short + k.removeprefix(full))
    return out


def _did_you_mean(candidates: Sequence[str]) -> str:
    if not candidates:
        return ""
    return "; did you mean " + " or ".join(f"'{c}'" for c in candidates) + "?"


class Wilayah:
    """The Kemendagri table, indexed by code and by every accepted spelling."""

    def __init__(self, regions: Iterable[Region], source: str = str(TABLE_PATH)) -> None:
        self.provinces: dict[str, Region] = {}
        self.regencies: dict[str, Region] = {}
        self._province_by: dict[str, Region] = {}
        self._regency_by: dict[str, Region] = {}
        self._bare: dict[str, list[Region]] = {}  # "bandung" -> both Bandungs
        # A national file repeats the same wrong value on thousands of rows: look it up once.
        self._suggested: dict[tuple[str, str, str], list[str]] = {}
        self._names: dict[str, dict[str, Region]] = {}
        for r in regions:
            if r.level == "provinsi" and len(r.code) == 2:
                self.provinces[r.code] = r
            elif r.level in ("kabupaten", "kota") and len(r.code) == 4:
                self.regencies[r.code] = r
            else:
                raise ValueError(f"{source}: {r.code}: got level {r.level!r} for that code")
        for r in self.regencies.values():
            if r.province_code not in self.provinces:
                raise ValueError(f"{source}: {r.code}: no province {r.province_code}")
        for by, table in ((self._province_by, self.provinces), (self._regency_by, self.regencies)):
            for r in table.values():
                for k in _spellings(r):
                    if by.setdefault(k, r) is not r:
                        raise ValueError(f"{source}: {k!r} names both {by[k].code} and {r.code}")
        for r in self.regencies.values():
            bare = _key(r.name).split(" ", 1)[1]
            self._bare.setdefault(bare, []).append(r)

    # --- look-ups ---------------------------------------------------------------------------

    def province(self, text: str) -> Region | None:
        return self._province_by.get(_key(text))

    def regency(self, text: str) -> Region | None:
        return self._regency_by.get(_key(text))

    def province_of(self, regency: Region) -> Region:
        return self.provinces[regency.province_code]

    def forget_suggestions(self) -> None:
        """Start a new file: its own budget of suggestions."""
        self._suggested = {}

    def _cached(self, kind: str, text: str, province: Region | None) -> list[str]:
        key = (kind, text, province.code if province is not None else "")
        found = self._suggested.get(key)
        if found is None:
            if len(self._suggested) >= _SUGGESTIONS_MAX:
                return []
            if kind == "province":
                found = self.province_suggestions(text)
            else:
                found = self.regency_suggestions(text, province)
            self._suggested[key] = found
        return found

    def province_suggestions(self, text: str) -> list[str]:
        k = _key(text)
        alias = _PROVINCE_ALIASES.get(k)
        if alias is not None:
            return [self.provinces[alias].name]
        regency = self.regency(text)
        if regency is not None:  # a regency's name in the province column
            return [self.province_of(regency).name]
        names = {_key(r.name): r.name for r in self.provinces.values()}
        return [names[m] for m in difflib.get_close_matches(k, names, n=2, cutoff=0.75)]

    def regency_suggestions(self, text: str, province: Region | None) -> list[str]:
        k = _key(text)
        for prefix in ("kabupaten administrasi ", "kota administrasi ", "kab adm ", "kota adm "):
            k = k.removeprefix(prefix)
        for prefix in ("kabupaten ", "kab ", "kota "):
            k = k.removeprefix(prefix)
        code = province.code if province is not None else ""
        bare = [r for r in self._bare.get(k, []) if r.code.startswith(code)]
        if bare:
            return [r.label() for r in bare]
        names = self._names.get(code)
        if names is None:  # full and bare names of the regencies of a province (or all)
            pool = [r for r in self.regencies.values() if r.code.startswith(code)]
            names = {_key(r.name): r for r in pool}
            names.update({_key(r.name).split(" ", 1)[1]: r for r in pool})
            self._names[code] = names
        found: list[str] = []
        for m in difflib.get_close_matches(k, names, n=3, cutoff=0.75):
            if names[m].label() not in found:
                found.append(names[m].label())
        return found[:2]

    # --- a station row ----------------------------------------------------------------------

    def check_place(self, station_id: str, province: str, regency: str) -> Place:
        """Check a row's province, regency and (for a TPS code) the id's region prefix."""
        problems: list[Problem] = []
        prov = self.province(province) if province else None
        if province and prov is None:
            problems.append(
                Problem(
                    "province",
                    "a province of the Kemendagri table (its name or 2-digit code, e.g."
                    " DKI Jakarta or 31)" + _did_you_mean(self._cached("province", province, None)),
                )
            )
        reg = self.regency(regency) if regency else None
        if regency and reg is None:
            where = f"of {prov.name}" if prov is not None else "of the Kemendagri table"
            example = self._example(prov)
            problems.append(
                Problem(
                    "regency",
                    f"a regency or city {where} (its name or 4-digit code, e.g. {example})"
                    + _did_you_mean(self._cached("regency", regency, prov)),
                )
            )
        elif reg is not None and prov is not None and reg.province_code != prov.code:
            home = self.province_of(reg)
            split = ""
            if prov.code in ("91", "92") and home.code in ("93", "94", "95", "96"):
                split = f" since {prov.name} was split in 2022"
            problems.append(
                Problem(
                    "regency",
                    f"a regency or city of {prov.label()}: {reg.label()} is in"
                    f" {home.label()}{split}",
                )
            )
            reg = None  # which of the two is wrong is for the user to say
        id_problem = self._prefix_problem(station_id, prov, reg)
        if id_problem is not None:
            problems.append(Problem("id", id_problem))
        ok = not problems
        return Place(
            prov.name if prov is not None and ok else None,
            reg.name if reg is not None and ok else None,
            tuple(problems),
        )

    def _example(self, prov: Region | None) -> str:
        if prov is None:
            return "Kota Jakarta Pusat or 3171"
        first = min(c for c in self.regencies if c.startswith(prov.code))
        return f"{self.regencies[first].name} or {first}"

    def _prefix_problem(
        self, station_id: str, prov: Region | None, reg: Region | None
    ) -> str | None:
        if not is_tps_code(station_id) or tps_shape_problem(station_id) is not None:
            return None  # not a TPS code, or its shape is reported by tps_shape_problem
        own = self.regencies.get(station_id[:4])
        if own is None:
            if station_id[:2] not in self.provinces:
                what = f"{station_id[:2]} is no province"
            else:
                province = self.provinces[station_id[:2]].name
                what = f"{station_id[:4]} is no regency or city of {province}"
            return f"a TPS code starting with a regency code of the Kemendagri table; {what}"
        if reg is not None and own is not reg:
            return (
                f"a TPS code of {reg.name}, {self.province_of(reg).name} (starting {reg.code}),"
                f" as the regency column says; {own.code} is {own.name},"
                f" {self.province_of(own).name}"
            )
        if reg is None and prov is not None and own.province_code != prov.code:
            return (
                f"a TPS code of {prov.name} (starting {prov.code}), as the province column"
                f" says; {own.province_code} is {self.province_of(own).name}"
            )
        return None


def is_tps_code(station_id: str) -> bool:
    """Is this id meant as a TPS code (digits and separators only)? Ids with letters are
    other stable ids (a lab laptop) and are not checked against the table."""
    return _TPS_LIKE_RE.fullmatch(station_id) is not None


def tps_shape_problem(station_id: str) -> str | None:
    """What is wrong with a TPS code's shape (None: nothing, or not a TPS code)."""
    if not is_tps_code(station_id):
        return None
    digits = _SEPARATORS_RE.sub("", station_id)
    if digits != station_id:
        if len(digits) == 13:
            return f"{TPS_FORMAT}, written without separators ({digits})"
        return f"{TPS_FORMAT} (without separators), not {len(digits)} digits"
    if len(digits) != 13:
        return f"{TPS_FORMAT}, not {len(digits)} digits"
    if digits[4:6] == "00":
        return f"{TPS_FORMAT}, with a district number (digits 5-6) of 01..99, not 00"
    if digits[6] not in _VILLAGE_KINDS:
        return (
            f"{TPS_FORMAT}, whose 7th digit is 1 (kelurahan), 2 (desa) or 3 (desa adat),"
            f" not {digits[6]}"
        )
    if digits[10:] == "000":
        return f"{TPS_FORMAT}, with a TPS number (last 3 digits) of 001..999, not 000"
    return None


def tps_code(regency_code: str, n: int) -> str:
    """The `n`-th (0-based) well-formed TPS code in a regency, for tests, drills and
    benchmarks that need many stations: 999 TPS per village, 999 villages per district."""
    if not re.fullmatch(r"[0-9]{4}", regency_code) or not 0 <= n < 99 * 999 * 999:
        raise ValueError(f"tps_code: got {regency_code!r}, {n}")
    tps, rest = n % 999 + 1, n // 999
    village, district = rest % 999 + 1, rest // 999 + 1
    return f"{regency_code}{district:02d}1{village:03d}{tps:03d}"


@functools.cache
def wilayah() -> Wilayah:
    """The shipped table, read once."""
    return read_table(TABLE_PATH)


def read_table(path: Path) -> Wilayah:
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != TABLE_COLUMNS:
            raise ValueError(f"{path}: header: expected {','.join(TABLE_COLUMNS)}")
        rows = [Region(**{c: row[c] for c in TABLE_COLUMNS}) for row in reader]
    for r in rows:
        # WIB has two IANA zones: West and Central Kalimantan use Asia/Pontianak.
        allowed = {ZONES.get(r.zone), "Asia/Pontianak" if r.zone == "WIB" else None}
        if r.zone not in ZONES or r.tz not in allowed:
            raise ValueError(f"{path}: {r.code}: zone {r.zone} with tz {r.tz}")
    return Wilayah(rows, str(path))


class Operators:
    """The operator labels a station may expect: the built-in ones plus configured extras."""

    def __init__(self, extra: Iterable[str] = ()) -> None:
        self.labels: tuple[str, ...] = tuple(dict.fromkeys((*BUILTIN_OPERATORS, *extra)))
        self._by = {self._key(label): label for label in self.labels}

    @staticmethod
    def _key(text: str) -> str:
        return re.sub(r"[\s._-]+", "", text.casefold())

    def resolve(self, text: str) -> str | None:
        """The label `text` names (case, spaces, '.', '-', '_' ignored), or None."""
        return self._by.get(self._key(text))

    def expected(self, text: str) -> str:
        """What to say when `text` is not a label: the list, and a likely one."""
        k = self._key(text)
        k = k.removeprefix("pt").removesuffix("tbk") if k not in _OPERATOR_ALIASES else k
        guess = self._by.get(k) or _OPERATOR_ALIASES.get(k)
        if guess is None:
            close = difflib.get_close_matches(k, list(self._by), n=1, cutoff=0.75)
            guess = self._by[close[0]] if close else None
        hint = ""
        if guess is not None and guess in self.labels:
            hint = f"; did you mean '{guess}'?{_OPERATOR_NOTES.get(guess, '')}"
        return f"one of {', '.join(self.labels)}, or empty{hint}"
