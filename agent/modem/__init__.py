"""Reading the cellular radio: one reading per modem, from ModemManager or a HiLink device.

Both sources return a `Reading`; `agent/probes/signal.py` turns it into a `signal` record.
Values a modem reports for "unknown" (0, -32768, 255, anything outside the 3GPP reporting
range of the quantity) are dropped by `clean()`: not measured, never a figure.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from agent.contract.record import MEASUREMENTS, ErrorCode

# Access technologies, as the `access_tech` tag spells them, newest first.
ACCESS_TECHS = ("nr5g", "lte", "umts", "gsm")
UNKNOWN = "unknown"
GENERATION = {"nr5g": "5G", "lte": "4G", "umts": "3G", "gsm": "2G"}

# The radio values of a reading, with their range from the record contract.
RADIO_FIELDS = ("rsrp_dbm", "rsrq_db", "sinr_db", "rssi_dbm", "rscp_dbm", "ecio_db")
_SPECS = MEASUREMENTS["signal"].fields
# What modem firmware sends for "not known": never a measurement, whatever the range says.
_SENTINELS = {0.0, -32768.0, 32767.0, -32767.0, 255.0, -255.0, 2147483647.0, -2147483648.0}

# MCC-MNC of Indonesian networks -> the operator labels the config uses
# (ITU-T E.212 list; Indosat Ooredoo Hutchison holds IM3 and Tri, XLSmart holds XL, Axis and
# Smartfren since 2025).
PLMN_OPERATORS = {
    "51010": "telkomsel",
    "51001": "indosat",
    "51021": "indosat",
    "51089": "indosat",
    "51011": "xlsmart",
    "51008": "xlsmart",
    "51009": "xlsmart",
    "51028": "xlsmart",
}
_LABEL_RE = re.compile(r"[^0-9a-z._-]+")
# MCC (3 digits, 2xx..7xx for real networks; 001 and 999 are test and private ones) + MNC
_PLMN_RE = re.compile(r"[2-7][0-9]{4,5}")


class SourceError(Exception):
    """The source could not give a reading; `code` is the record's error code."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Reading:
    """What one source read from one modem; None means not known."""

    access_tech: str = UNKNOWN
    values: dict[str, float] = field(default_factory=dict)  # RADIO_FIELDS, cleaned
    quality_pct: float | None = None
    plmn: str | None = None  # "51010"
    operator_name: str | None = None
    registered: bool | None = None
    roaming: bool | None = None
    band: str | None = None  # "B3", "n40", "900" (GSM/UMTS band in MHz)
    cell_id: int | None = None
    tac: int | None = None
    lac: int | None = None
    earfcn: int | None = None
    modem: str | None = None  # what identifies the modem: a D-Bus path, a URL


def clean(name: str, value: object) -> float | None:
    """A radio value as a float in its 3GPP range, or None (unknown, sentinel, garbage)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    v = float(value)
    if not math.isfinite(v) or v in _SENTINELS:
        return None
    spec = _SPECS[name]
    lo, hi = spec.minimum, spec.maximum
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        return None
    return v


def clean_values(raw: dict[str, object]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, value in raw.items():
        v = clean(name, value)
        if v is not None:
            out[name] = v
    return out


def operator_label(plmn: str | None, name: str | None) -> str | None:
    """The config's label for the network: from the PLMN when known, else its name."""
    if plmn and plmn in PLMN_OPERATORS:
        return PLMN_OPERATORS[plmn]
    if name:
        label = _LABEL_RE.sub("-", name.strip().lower()).strip("-._")[:64]
        if label:
            return label
    return plmn or None


def plmn_code(text: object) -> str | None:
    """MCC-MNC of a real network ("51010"), else None (test networks, garbage)."""
    return text if isinstance(text, str) and _PLMN_RE.fullmatch(text) else None


def printable(text: str, limit: int = 64) -> str:
    """A name from the modem as a field value: no control characters, at most `limit`."""
    return "".join(c for c in text if c.isprintable()).strip()[:limit]


def bounded_int(value: object, hi: int) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= hi:
        return None
    return value


__all__ = [
    "ACCESS_TECHS",
    "GENERATION",
    "PLMN_OPERATORS",
    "RADIO_FIELDS",
    "UNKNOWN",
    "Reading",
    "SourceError",
    "bounded_int",
    "clean",
    "clean_values",
    "operator_label",
    "plmn_code",
    "printable",
]
