"""The report's words in Indonesian (`id`, the default) and English (`en`), and number, date
and time formatting for each language (Babel's CLDR data): `1.234,5` and `3 Desember 2026`
in Indonesian, `1,234.5` and `3 December 2026` in English.

Machine formats (CSV) never go through here: they use dot decimals and ISO times.
"""

from __future__ import annotations

from datetime import datetime, tzinfo

from babel.dates import format_date
from babel.numbers import format_decimal

# key -> (id, en)
TEXT: dict[str, tuple[str, str]] = {
    "title": ("Laporan Kualitas Layanan Telekomunikasi TPS", "Polling Station Telecom QoS Report"),
    "period": ("Periode", "Period"),
    "scope": ("Cakupan", "Scope"),
    "national": ("Nasional", "National"),
    "all": ("semua", "all"),
    "voting_hours": (
        "jam pemungutan suara (07.00–13.00 waktu setempat tiap TPS)",
        "voting hours (07:00–13:00 in each station's local time)",
    ),
    "whole_days": ("sepanjang hari", "whole days"),
    "times_in": ("Waktu dalam", "Times in"),
    "own_zone": ("zona waktu masing-masing TPS", "each station's own time zone"),
    "generated": ("Dibuat", "Generated"),
    "version": ("Versi perangkat lunak", "Software version"),
    "overall": ("Putusan keseluruhan per operator", "Overall verdict per operator"),
    "operators": ("Per operator (nasional)", "Per operator (national)"),
    "provinces": ("Per operator dan provinsi", "Per operator and province"),
    "regencies": ("Per operator dan kabupaten/kota", "Per operator and regency"),
    "stations": ("Per TPS", "Per polling station"),
    "coverage": ("Cakupan data", "Coverage"),
    "thresholds": ("Ambang batas dan sumbernya", "Thresholds and their sources"),
    "charts": ("Grafik", "Charts"),
    "method": ("Metode perhitungan", "How it was computed"),
    "met": ("memenuhi", "met"),
    "not_met": ("tidak memenuhi", "not met"),
    "no_data": ("tidak ada data", "no data"),
    "silent": ("senyap", "silent"),
    "clipped": (
        "Periode dipotong pada waktu pembuatan laporan.",
        "The period was cut at the generation time.",
    ),
    "chart_latency": (
        "Latensi (rata-rata RTT median putaran per jam) per operator",
        "Latency (hourly mean of the rounds' median RTT) per operator",
    ),
    "chart_loss": (
        "Kehilangan paket (rata-rata per jam) per operator",
        "Packet loss (hourly mean) per operator",
    ),
    "chart_dist": (
        "Sebaran latensi median per TPS, per provinsi",
        "Distribution of each station's median latency, per province",
    ),
    "chart_map": ("Peta TPS menurut status", "Map of stations by status"),
    "hour": ("jam", "hour"),
    "latitude": ("lintang", "latitude"),
    "longitude": ("bujur", "longitude"),
    "files": ("Berkas laporan", "Report files"),
    "manifest_note": (
        "SHA-256 setiap berkas ada di manifest.json.",
        "The SHA-256 of every file is in manifest.json.",
    ),
    "target_share": (
        "Putusan: sebuah ambang dipenuhi bila sekurang-kurangnya {share} % putaran tidak "
        "melampaui batas 'warn'-nya.",
        "Verdict: a threshold is met when at least {share} % of rounds do not cross its "
        "'warn' limit.",
    ),
    "readme_title": ("Kolom berkas CSV", "Columns of the CSV files"),
    "form_submit": ("Buat laporan", "Make report"),
    "download": ("Unduh", "Download"),
    "preview": ("Pratinjau", "Preview"),
    "from": ("Dari", "From"),
    "to": ("Sampai", "To"),
    "zone": ("Zona waktu", "Time zone"),
    "province": ("Provinsi", "Province"),
    "regency": ("Kabupaten/kota", "Regency"),
    "operator": ("Operator", "Operator"),
    "station": ("TPS", "Station"),
    "language": ("Bahasa", "Language"),
    "formats": ("Format", "Formats"),
    "stations_cut": (
        "{shown} dari {total} baris TPS yang terburuk; daftar lengkap ada di CSV dan XLSX.",
        "The worst {shown} of {total} station rows; CSV and XLSX list them all.",
    ),
    "queries_note": (
        "{shown} dari {total} kueri; semuanya ada di manifest.json.",
        "{shown} of {total} queries; manifest.json holds them all.",
    ),
    "by_regency": ("Rinci per kabupaten/kota", "Break down by regency"),
}

MONTH_FMT = "d MMMM y"


class Lang:
    """Texts and formatting for one language."""

    def __init__(self, code: str) -> None:
        if code not in ("id", "en"):
            raise ValueError(f"language {code!r}: expected id or en")
        self.code = code
        self._i = 0 if code == "id" else 1

    def t(self, key: str, **kw: object) -> str:
        text = TEXT[key][self._i]
        return text.format(**kw) if kw else text

    def pick(self, pair: tuple[str, str]) -> str:
        return pair[self._i]

    def number(self, value: float | int | None, decimals: int = 1) -> str:
        if value is None:
            return "–"
        if isinstance(value, int):
            return format_decimal(value, format="#,##0", locale=self.code)
        fmt = "#,##0" + ("." + "0" * decimals if decimals else "")
        return format_decimal(value, format=fmt, locale=self.code)

    def date(self, d: datetime) -> str:
        return format_date(d.date(), MONTH_FMT, locale=self.code)

    def datetime(self, t: datetime, tz: tzinfo, zone: str) -> str:
        """`3 Desember 2026 07.00 WITA` / `3 December 2026 07:00 WITA`."""
        local = t.astimezone(tz)
        sep = "." if self.code == "id" else ":"
        return f"{self.date(local)} {local.hour:02d}{sep}{local.minute:02d} {zone}"

    def duration(self, seconds: float | None) -> str:
        if seconds is None:
            return "–"
        return self.number(seconds / 3600.0, 1) + (" jam" if self.code == "id" else " h")
