"""agent.contract.configkit: the reader both loaders use (defaults, errors with dotted paths,
unknown and required keys), environment overrides, YAML errors and every converter."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.contract import configkit as ck
from agent.contract.configkit import ConfigError, Key, Reader


@dataclass
class Section:
    interval_s: float = 60.0
    count: int = 10
    mode: str = "fast"
    targets: list[str] = field(default_factory=lambda: ["a"])
    host: str | None = None


TABLE = {
    "interval_s": Key(ck.number(0, 3600, lo_open=True), "a number of seconds in (0, 3600]"),
    "count": Key(ck.integer(1, 100), "an integer 1..100"),
    "mode": Key(ck.one_of("fast", "slow"), "fast or slow"),
    "host": Key(ck.host_or_ip, "a host name or IP address"),
}


def test_section_gives_checked_values_and_the_dataclass_defaults() -> None:
    r = Reader("agent.yaml", {})
    values = r.section({"count": 5, "host": "kpu.go.id"}, "probes.icmp", Section, TABLE)
    assert values == {"interval_s": 60.0, "count": 5, "mode": "fast", "host": "kpu.go.id"}
    assert r.errors == []
    assert Section(**values).count == 5


def test_bad_values_are_errors_with_dotted_paths_and_defaults_stand() -> None:
    r = Reader("agent.yaml", {})
    doc = {"interval_s": 0, "count": True, "mode": "medium", "host": "bad host"}
    values = r.section(doc, "probes.icmp", Section, TABLE)
    assert values == {"interval_s": 60.0, "count": 10, "mode": "fast", "host": None}
    assert r.errors == [
        "agent.yaml: probes.icmp.interval_s: got 0, expected a number of seconds in (0, 3600]",
        "agent.yaml: probes.icmp.count: got true, expected an integer 1..100",
        "agent.yaml: probes.icmp.mode: got 'medium', expected fast or slow",
        "agent.yaml: probes.icmp.host: got 'bad host', expected a host name or IP address",
    ]


def test_unknown_and_missing_required_keys() -> None:
    r = Reader("c.yaml", {})
    r.section({"cuont": 3, "targets": []}, "probes.icmp", Section, TABLE,
              required=frozenset({"mode"}), extra=frozenset({"targets"}))  # fmt: skip
    assert r.errors == [
        "c.yaml: probes.icmp.cuont: got an unknown key, expected one of count, host,"
        " interval_s, mode, targets",
        "c.yaml: probes.icmp.mode: got nothing, expected a value (required)",
    ]


def test_a_section_that_is_not_a_mapping() -> None:
    r = Reader("c.yaml", {})
    assert r.section(["x"], "station", Section, TABLE) == {
        "interval_s": 60.0, "count": 10, "mode": "fast", "host": None,
    }  # fmt: skip
    assert r.errors == ["c.yaml: station: got a list, expected a mapping"]
    r = Reader("c.yaml", {})
    r.mapping("text", "", {"a"}, set())
    assert r.errors == ["c.yaml: (top level): got 'text', expected a mapping"]
    r = Reader("c.yaml", {})
    assert r.mapping(None, "optional", {"a"}, set()) == {}  # an empty optional section
    assert r.errors == []


def test_get_without_a_default_and_null_values() -> None:
    r = Reader("c.yaml", {})
    check = ck.integer(0, 9)
    assert r.get({}, "n", "", check, "a digit") is None
    assert r.get({"n": None}, "n", "", check, "a digit", 4) == 4  # YAML's "n:" means absent
    assert r.get({"n": 12}, "n", "", check, "a digit") is None
    assert r.errors == ["c.yaml: n: got 12, expected a digit"]  # top level: no leading dot


def test_secrets_are_never_shown_and_env_sources_are_named() -> None:
    r = Reader("agent.yaml", {"collector.token": "SINYAL_COLLECTOR__TOKEN"})
    r.get({"token": 42}, "token", "collector", ck.string(), "a string")
    assert r.errors == [
        "agent.yaml ($SINYAL_COLLECTOR__TOKEN): collector.token: got '***', expected a string"
    ]


@pytest.mark.parametrize(
    ("value", "shown"),
    [({"a": 1}, "a mapping"), ([], "an empty list"), ([1], "a list"), (None, "nothing"),
     (False, "false"), (3.5, "3.5"), ("x" * 100, repr("x" * 100)[:77] + "...")],
)  # fmt: skip
def test_show(value: Any, shown: str) -> None:
    assert ck.show(value) == shown


def test_apply_env_overlays_scalars_by_dotted_path() -> None:
    doc: dict[str, Any] = {"station": {"id": "1"}, "schedule": {"jitter_fraction": 0.1}}
    environ = {
        "SINYAL_STATION__ID": "0031",  # ids stay text (a TPS code is all digits)
        "SINYAL_SCHEDULE__JITTER_FRACTION": "0.25",  # parsed as a YAML scalar
        "SINYAL_COLLECTOR__TOKEN": "123",  # secrets stay text; missing sections are made
        "SINYAL_PROBES__ICMP__ENABLED": "false",
        "SINYAL_DATA_DIR": "",  # empty: null
        "SINYAL_CONFIG": "/etc/x.yaml",  # the config file's own variable is not a key
        "SINYAL_NOT_A_SECTION__X": "1",
        "HOME": "/root",
    }
    top = {"station", "schedule", "collector", "probes", "data_dir"}
    out, sources = ck.apply_env(doc, environ, top)
    assert out == {
        "station": {"id": "0031"},
        "schedule": {"jitter_fraction": 0.25},
        "collector": {"token": "123"},
        "probes": {"icmp": {"enabled": False}},
        "data_dir": None,
    }
    assert sources == {
        "station.id": "SINYAL_STATION__ID",
        "schedule.jitter_fraction": "SINYAL_SCHEDULE__JITTER_FRACTION",
        "collector.token": "SINYAL_COLLECTOR__TOKEN",
        "probes.icmp.enabled": "SINYAL_PROBES__ICMP__ENABLED",
        "data_dir": "SINYAL_DATA_DIR",
    }


def test_apply_env_replaces_a_scalar_in_its_way_and_keeps_unparsable_text() -> None:
    out, _ = ck.apply_env({"sink": "v1"}, {"SINYAL_SINK__URL": "[unclosed"}, {"sink"})
    assert out == {"sink": {"url": "[unclosed"}}
    assert ck.apply_env(["not", "a", "mapping"], {"SINYAL_A": "1"}, {"a"}) == (
        ["not", "a", "mapping"], {},
    )  # fmt: skip


def test_read_yaml(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("a:\n  b: 1\n")
    assert ck.read_yaml(good) == {"a": {"b": 1}}
    with pytest.raises(ConfigError) as e:
        ck.read_yaml(tmp_path / "missing.yaml", " (copy config/agent.example.yaml)")
    assert e.value.errors == [f"{tmp_path}/missing.yaml: file not found (copy"
                              " config/agent.example.yaml)"]  # fmt: skip
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\nb: 3\n")
    with pytest.raises(ConfigError) as e:
        ck.read_yaml(bad)
    (line,) = e.value.errors
    assert line.startswith(f"{bad}: line ") and "not valid YAML: " in line
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin\.yaml: cannot read: "):
        ck.read_yaml(latin)
    with pytest.raises(ConfigError, match="cannot read: "):
        ck.read_yaml(tmp_path)  # a directory
    assert str(ConfigError(["one", "two"])) == "one\ntwo"


CONVERTERS: list[tuple[Any, list[Any], list[Any]]] = [
    # (converter, accepted values, refused values)
    (ck.string(), ["x", " y "], ["", "  ", 1, None, ["x"]]),
    (ck.string(ck.STATION_ID_RE), ["3171011001001", "tps-1.a_b"], ["-a", "a b", "x" * 65]),
    (ck.string(ck.NAME_RE), ["lo", "modem:0"], [":a", "a/b"]),
    (ck.string(ck.IFNAME_RE), ["eth0", "wwan0"], ["a b", "a/b", "x" * 16]),
    (ck.number(0, 10), [0, 10, 2.5], [-0.1, 10.5, True, "1", math.nan, math.inf, None]),
    (ck.number(0, 10, lo_open=True), [0.001, 10], [0, 0.0]),
    (ck.integer(1, 5), [1, 5], [0, 6, 2.0, True, "3"]),
    (ck.boolean, [True, False], [1, 0, "yes", None]),
    (ck.one_of("v1", "v2"), ["v1", "v2"], ["v3", "V1", 1]),
    (ck.ip_address, ["10.0.0.1", "::1", "fd00::2"], ["10.0.0.256", "host", 1]),
    (ck.host_or_ip, ["kpu.go.id", "localhost", "a_b.example.", "10.1.2.3", "::1"],
     ["a..b", "-a.com", "a b", "x" * 65 + ".com", "a." * 127 + "a", 5]),
    (ck.timezone, ["Asia/Jakarta", "UTC", "Asia/Makassar"], ["Asia", "Mars/Base", "", 7]),
    (ck.http_url, ["http://a", "https://kpu.go.id:8443/x"],
     ["ftp://a", "http://", "https://a:99999", "a.com", None]),
]  # fmt: skip


@pytest.mark.parametrize(("check", "accepted", "refused"), CONVERTERS)
def test_every_converter_accepts_and_refuses(
    check: Any, accepted: list[Any], refused: list[Any]
) -> None:
    for v in accepted:
        assert check(v) is not None, v
    for v in refused:
        assert check(v) is None, v


def test_converters_normalise() -> None:
    assert ck.number(0, 10)(3) == 3.0 and type(ck.number(0, 10)(3)) is float
    assert ck.ip_address("fd00:0::2") == "fd00::2"
    assert ck.host_or_ip("::ffff:10.0.0.1") == "::ffff:a00:1"
