"""The configuration-reading toolkit shared by the agent's and the collector's loaders.

Every problem is collected and reported at once, one per line, as
``FILE: dotted.path: got VALUE, expected WHAT``; unknown keys are errors. A checker takes a
parsed YAML value and returns the converted value or None when it does not fit; `Reader.get`
records the error with its dotted path and returns the caller's default, so a loader states
each default once (on its dataclass) and never repeats it as a fallback.

Environment variables override scalar keys: ``SINYAL_`` + the dotted path in upper case with
``__`` between levels (``SINYAL_COLLECTOR__TOKEN``); values are parsed as YAML scalars.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar, overload
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

ENV_PREFIX = "SINYAL_"

STATION_ID_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,63}$")
NAME_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._:-]{0,63}$")
HOST_RE = re.compile(
    r"^(?=.{1,253}$)[0-9A-Za-z_]([0-9A-Za-z_-]{0,62}[0-9A-Za-z_])?"
    r"(\.[0-9A-Za-z_]([0-9A-Za-z_-]{0,62}[0-9A-Za-z_])?)*\.?$"
)
IFNAME_RE = re.compile(r"^[^\s/]{1,15}$")
SECRET_KEYS = {"token", "password"}


class ConfigError(Exception):
    """The configuration is invalid; `errors` holds one line per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


T = TypeVar("T")


def show(value: Any, secret: bool = False) -> str:
    if secret and value is not None:
        return "'***'"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list" if value else "an empty list"
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclasses.dataclass(frozen=True)
class Key:
    """One key of a section's table: its checker and what it expects, in words."""

    check: Callable[[Any], Any]
    expected: str


def _defaults(model: type[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(model):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def one_of(*choices: str) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return v if isinstance(v, str) and v in choices else None

    return check


class Reader:
    """Walks the parsed YAML, collecting errors with their dotted paths."""

    def __init__(self, file: str, env_sources: Mapping[str, str]) -> None:
        self.file = file
        self.env_sources = env_sources  # dotted path -> env var that set it
        self.errors: list[str] = []

    def error(self, path: str, got: str, expected: str) -> None:
        where = self.file
        if path in self.env_sources:
            where = f"{self.file} (${self.env_sources[path]})"
        self.errors.append(f"{where}: {path}: got {got}, expected {expected}")

    def mapping(self, value: Any, path: str, keys: set[str], required: set[str]) -> dict[str, Any]:
        if value is None and not required:
            return {}
        if not isinstance(value, dict):
            self.error(path or "(top level)", show(value), "a mapping")
            return {}
        for key in value:
            if key not in keys:
                self.error(
                    f"{path}.{key}" if path else str(key),
                    "an unknown key",
                    f"one of {', '.join(sorted(keys))}",
                )
        for key in sorted(required - set(value)):
            self.error(f"{path}.{key}" if path else key, "nothing", "a value (required)")
        return value

    @overload
    def get(
        self,
        m: dict[str, Any],
        key: str,
        path: str,
        check: Callable[[Any], T | None],
        expected: str,
    ) -> T | None: ...

    @overload
    def get(
        self,
        m: dict[str, Any],
        key: str,
        path: str,
        check: Callable[[Any], T | None],
        expected: str,
        default: T,
    ) -> T: ...

    def get(
        self,
        m: dict[str, Any],
        key: str,
        path: str,
        check: Callable[[Any], T | None],
        expected: str,
        default: T | None = None,
    ) -> T | None:
        """The checked value of m[key]; the default when it is absent or (error recorded) bad."""
        full = f"{path}.{key}" if path else key
        if key not in m or m[key] is None:
            return default
        value = m[key]
        result = check(value)
        if result is None:
            self.error(full, show(value, key in SECRET_KEYS), expected)
            return default
        return result

    def section(
        self,
        raw: Any,
        path: str,
        model: type[Any],
        table: Mapping[str, Key],
        required: frozenset[str] = frozenset(),
        extra: frozenset[str] = frozenset(),
    ) -> dict[str, Any]:
        """Read one section by its key table: each key's checked value, or the default stated
        on the section's dataclass (`model`) when the key is absent or bad (error recorded).
        `extra` keys (lists the caller reads itself) are allowed but not read. The caller
        checks what spans keys, then builds `model(**values)`."""
        m = self.mapping(raw, path, set(table) | extra, set(required))
        defaults = _defaults(model)
        return {
            key: self.get(m, key, path, spec.check, spec.expected, defaults.get(key))
            for key, spec in table.items()
        }


def string(pattern: re.Pattern[str] | None = None) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if not isinstance(v, str) or not v.strip():
            return None
        if pattern is not None and not pattern.fullmatch(v):
            return None
        return v

    return check


def number(lo: float, hi: float, lo_open: bool = False) -> Callable[[Any], float | None]:
    def check(v: Any) -> float | None:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            return None
        if (v <= lo if lo_open else v < lo) or v > hi:
            return None
        return float(v)

    return check


def integer(lo: int, hi: int) -> Callable[[Any], int | None]:
    def check(v: Any) -> int | None:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            return None
        return v

    return check


def boolean(v: Any) -> bool | None:
    return v if isinstance(v, bool) else None


def ip_address(v: Any) -> str | None:
    if not isinstance(v, str):
        return None
    try:
        return str(ipaddress.ip_address(v))
    except ValueError:
        return None


def host_or_ip(v: Any) -> str | None:
    if not isinstance(v, str):
        return None
    return ip_address(v) or (v if HOST_RE.fullmatch(v) else None)


def timezone(v: Any) -> str | None:
    if not isinstance(v, str) or not v:
        return None
    try:
        ZoneInfo(v)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: "Asia" is a directory
        return None
    return v


def http_url(v: Any) -> str | None:
    if not isinstance(v, str):
        return None
    try:
        parts = urlsplit(v)
        _ = parts.port  # raises on a bad port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return v


def apply_env(
    doc: Any, environ: Mapping[str, str], top_keys: set[str]
) -> tuple[Any, dict[str, str]]:
    """Overlay SINYAL_A__B=value onto doc["a"]["b"]; returns the doc and path->var sources."""
    sources: dict[str, str] = {}
    if not isinstance(doc, dict):
        return doc, sources
    for var, text in sorted(environ.items()):
        if not var.startswith(ENV_PREFIX) or var in ("SINYAL_CONFIG",):
            continue
        parts = [s.lower() for s in var[len(ENV_PREFIX) :].split("__")]
        if parts[0] not in top_keys:
            continue
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        if parts[-1] in SECRET_KEYS or parts[-1].endswith(("id", "name")):
            value = text  # never reinterpret tokens or ids (a TPS code is all digits)
        node = doc
        for key in parts[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = {}
                node[key] = child
            node = child
        node[parts[-1]] = value
        sources[".".join(parts)] = var
    return doc, sources


def read_yaml(path: Path, missing_hint: str = "") -> Any:
    """Parse a YAML file; every failure is a one-line ConfigError naming the file."""
    name = str(path)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"{name}: file not found{missing_hint}"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{name}: cannot read: {exc}"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).replace("\n", " ")
        raise ConfigError([f"{name}: {where}not valid YAML: {problem}"]) from None
