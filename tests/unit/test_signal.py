"""The signal contract and the pure parts of the sources: ranges, "unknown" sentinels, operator
labels, ModemManager's enumerations and 3GPP location string, HiLink's XML and units, the
collector's range check, and the live view's signal row."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent.contract import thresholds as agent_thresholds
from agent.contract.record import ContractError, Record, new_id
from agent.modem import clean, operator_label
from agent.modem.hilink import HiLinkError, number, parse_xml
from agent.modem.modemmanager import access_tech, band_label, parse_3gpp_location
from agent.probes.signal import gateway_of
from agent.view import BoardView, format_line, signal_bars
from tests.conftest import ROOT

TH = agent_thresholds.load(ROOT / "config" / "thresholds.yaml")


def raw_signal(**fields: Any) -> dict[str, Any]:
    return {
        "id": new_id(),
        "kind": "signal",
        "measured_at": "2026-11-22T04:13:00.000000Z",
        "tags": {
            "station": "3171011001001",
            "uplink": "modem0",
            "operator": "telkomsel",
            "access_tech": "lte",
            "band": "B3",
        },
        "fields": fields,
        "error": None,
    }


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("rsrp_dbm", -95, -95.0),
        ("rsrp_dbm", -156, -156.0),
        ("rsrp_dbm", -31, -31.0),
        ("rsrp_dbm", -157, None),
        ("rsrp_dbm", -30, None),
        ("rsrp_dbm", 0, None),
        ("rsrp_dbm", -32768, None),
        ("rsrp_dbm", float("nan"), None),
        ("rsrp_dbm", True, None),
        ("rsrp_dbm", "-95", None),
        ("sinr_db", 0.0, None),  # 0 is what firmware sends for unknown, even where in range
        ("sinr_db", 12.5, 12.5),
        ("rscp_dbm", -101, -101.0),
        ("ecio_db", -25, None),
        ("rssi_dbm", 255, None),
    ],
)
def test_clean_drops_unknown_and_out_of_range(name: str, value: object, expected: object) -> None:
    assert clean(name, value) == expected


def test_collector_rejects_out_of_range_signal_values() -> None:
    Record.from_dict(raw_signal(rsrp_dbm=-118.0, rsrq_db=-12.0, plmn=51010))
    for field, bad in (("rsrp_dbm", -20.0), ("rsrp_dbm", -200.0), ("rsrq_db", 30.0),
                       ("ecio_db", 3.0), ("operator_mismatch", 2)):  # fmt: skip
        with pytest.raises(ContractError) as info:
            Record.from_dict(raw_signal(**{field: bad}))
        assert info.value.path == f"fields.{field}"
    with pytest.raises(ContractError) as info:
        d = raw_signal()
        del d["tags"]["access_tech"]
        Record.from_dict(d)
    assert info.value.path == "tags.access_tech"
    rec = Record.from_dict({**raw_signal(), "error": "not_registered"})
    assert rec.error == "not_registered"


def test_operator_labels() -> None:
    assert operator_label("51010", "TELKOMSEL") == "telkomsel"
    assert operator_label("51089", "3") == "indosat"
    assert operator_label("51011", None) == "xlsmart"
    assert operator_label("52501", "SingTel") == "singtel"
    assert operator_label(None, " My Net! ") == "my-net"
    assert operator_label(None, None) is None


def test_modemmanager_enumerations() -> None:
    assert access_tech(1 << 14) == "lte"
    assert access_tech((1 << 14) | (1 << 15)) == "nr5g"  # NSA: LTE anchor + NR
    assert access_tech((1 << 5) | (1 << 8)) == "umts"
    assert access_tech(1 << 4) == "gsm"
    assert access_tech(0) == "unknown"
    assert band_label([33]) == "B3"
    assert band_label([340]) == "n40"
    assert band_label([33, 38]) is None  # several configured: the serving one is not known
    assert parse_3gpp_location("510,10,2A3B,1A2B3C4,5D6E") == (0x2A3B, 0x1A2B3C4, 0x5D6E)
    assert parse_3gpp_location("510,10,FFFE,0,") == (None, None, None)
    assert parse_3gpp_location("garbage") == (None, None, None)


def test_hilink_xml_and_units() -> None:
    assert number("-97dBm") == -97.0
    assert number(">=-51dBm") == -51.0
    assert number("-10.5dB") == -10.5
    assert number("") is None and number("Unknown") is None
    body = b'<?xml version="1.0"?><response><rsrp>-97dBm</rsrp><sinr></sinr></response>'
    assert parse_xml(body, "api/device/signal") == {"rsrp": "-97dBm", "sinr": ""}
    with pytest.raises(HiLinkError) as info:
        parse_xml(b"<error><code>125002</code><message/></error>", "api/device/signal")
    assert info.value.code == "125002"
    bomb = b'<!DOCTYPE x [<!ENTITY a "aaaa">]><response><a>&a;</a></response>'
    from agent.modem import SourceError

    with pytest.raises(SourceError):
        parse_xml(bomb, "api/device/signal")


def test_gateway_of_reads_proc_net_route(tmp_path: Path) -> None:
    routes = tmp_path / "route"
    routes.write_text(
        "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n"
        "eth0\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\n"
        "eth1\t00000000\t0108A8C0\t0003\t0\t0\t700\t00000000\n"
    )
    assert gateway_of("eth1", routes) == "192.168.8.1"
    assert gateway_of("wwan0", routes) is None


def signal_record(**fields: Any) -> Record:
    tags = {"station": "s", "uplink": "modem0", "operator": "telkomsel", "access_tech": "lte",
            "band": "B3"}  # fmt: skip
    return Record("signal", datetime.now(UTC), tags, fields)


def test_live_view_signal_row() -> None:
    from rich.console import Console

    assert signal_bars(signal_record(rsrp_dbm=-90.0, sinr_db=12.0), TH) == (4, "good")
    assert signal_bars(signal_record(rsrp_dbm=-118.0, sinr_db=12.0), TH) == (1, "alert")
    assert signal_bars(signal_record(rscp_dbm=-90.0, quality_pct=50.0), TH) == (2, None)
    view = BoardView(TH, "3171011001001")
    view.board.update([signal_record(rsrp_dbm=-118.0, rsrq_db=-11.0, sinr_db=3.0)])
    out = io.StringIO()
    Console(file=out, width=160, color_system="truecolor", force_terminal=True).print(view.render())
    text = out.getvalue()
    assert "signal" in text and "rsrp (dBm)" in text and "lte telkomsel" in text
    assert "\x1b[1;31m-118" in text  # below the alert level: bold red
    line = format_line(signal_record(rsrp_dbm=-118.0))
    assert "tech=lte network=telkomsel" in line and "rsrp=-118.0dBm" in line


def test_config_signal_per_uplink(tmp_path: Path) -> None:
    from agent import config as agent_config
    from tests.conftest import base_config, write_config

    doc = base_config(tmp_path)
    doc["uplinks"] = [
        {"name": "modem0", "operator": "telkomsel", "interface": "wwan0",
         "signal": "modemmanager"},
        {"name": "mifi", "operator": "indosat", "signal": {"source": "hilink",
                                                          "url": "http://192.168.8.1"}},
        {"name": "wifi", "operator": "indihome"},
    ]  # fmt: skip
    cfg = agent_config.load(write_config(tmp_path, doc), environ={})
    m, h, w = cfg.uplinks
    assert m.signal == agent_config.SignalSource("modemmanager", None, "system", None)
    assert h.signal is not None and h.signal.url == "http://192.168.8.1"
    assert w.signal is None
    assert cfg.probes.signal == agent_config.SignalProbeConfig(True, 30.0, 5.0)

    doc["uplinks"] = [{"name": "wifi"}]
    doc["probes"]["signal"] = {"interval_s": 60}
    with pytest.raises(agent_config.ConfigError) as info:
        agent_config.load(write_config(tmp_path, doc), environ={})
    assert info.value.errors == [
        f"{tmp_path / 'agent.yaml'}: probes.signal: got a signal probe, expected an uplink "
        "with signal: {source: ...} to read"
    ]


def test_signal_records_take_the_collectors_fast_path() -> None:
    from collector.ingest import FastPath

    for raw in (raw_signal(rsrp_dbm=-97.0, plmn=51010, ok=1),
                {**raw_signal(ok=0), "error": "no_modem"}):  # fmt: skip
        hit = FastPath().decode(raw)
        assert hit is not None and hit[0] == Record.from_dict(raw)
    assert FastPath().decode(raw_signal(rsrp_dbm=-20.0)) is None  # the reference path words it
