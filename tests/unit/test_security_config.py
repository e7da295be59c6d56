"""Issue 15 (collector side), without servers: the new config keys and their errors, the
token buckets, the daily quota, speedtest tickets, the connection cap's arithmetic."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from collector import config as collector_config
from collector.config import ConfigError, ConnectionLimits, Limits, SpeedtestConfig
from collector.connguard import FD_RESERVE, effective_connection_cap
from collector.ratelimit import DailyQuota, TokenBuckets, retry_after
from collector.tickets import TicketSigner, load_key, ticket_in_path
from tests.conftest import ROOT

EXAMPLE = ROOT / "config" / "collector.example.yaml"


def load(tmp_path: Path, **sections: Any) -> collector_config.CollectorConfig:
    doc: dict[str, Any] = {
        "sink": {"kind": "v1", "url": "http://127.0.0.1:8086"},
        "data_dir": str(tmp_path / "data"),
        "thresholds_file": str(ROOT / "config" / "thresholds.yaml"),
        **sections,
    }
    path = tmp_path / "collector.yaml"
    path.write_text(yaml.safe_dump(doc))
    return collector_config.load(path, environ={})


def errors(tmp_path: Path, **sections: Any) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, **sections)
    return [e.split(": ", 1)[1] for e in exc.value.errors]


def test_defaults(tmp_path: Path) -> None:
    cfg = load(tmp_path)
    assert cfg.listen.tls is None
    assert cfg.listen.connections == ConnectionLimits()
    assert cfg.speedtest == SpeedtestConfig()
    assert cfg.admin.token is None
    assert cfg.limits.records_burst >= cfg.limits.max_records


def test_example_config_documents_every_new_key() -> None:
    text = EXAMPLE.read_text()
    for key in (
        *ConnectionLimits.__dataclass_fields__,
        "tls:",
        "client_ca:",
        *("records_per_s", "records_burst", "requests_per_s", "requests_burst"),
        *SpeedtestConfig.__dataclass_fields__,
        "admin:",
    ):
        assert re.search(rf"^\s*#?\s*{key.rstrip(':')}:", text, re.M), key


def test_example_values_are_the_defaults(tmp_path: Path) -> None:
    doc = yaml.safe_load(EXAMPLE.read_text())
    d = ConnectionLimits()
    for key in ConnectionLimits.__dataclass_fields__:
        assert doc["listen"][key] == getattr(d, key), key
    for key in ("records_per_s", "records_burst", "requests_per_s", "requests_burst"):
        assert doc["limits"][key] == getattr(Limits(), key), key
    for key in SpeedtestConfig.__dataclass_fields__:
        assert doc["speedtest"][key] == getattr(SpeedtestConfig(), key), key


def test_listen_limits_and_tls(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    cfg = load(
        tmp_path,
        listen={
            "max_headers": 20,
            "header_timeout_s": 2.5,
            "tls": {"cert": str(cert), "key": str(cert)},
        },
    )
    assert cfg.listen.connections.max_headers == 20
    assert cfg.listen.connections.header_timeout_s == 2.5
    assert cfg.listen.tls is not None and cfg.listen.tls.cert == cert
    assert cfg.listen.tls.client_ca is None


def test_bad_values_are_all_reported(tmp_path: Path) -> None:
    got = errors(
        tmp_path,
        listen={"max_headers": 0, "header_timeout_s": "soon", "tls": {"cert": "/nope.pem"}},
        limits={"max_records": 5000, "records_burst": 100, "requests_per_s": -1},
        speedtest={"daily_bytes_per_token": "lots", "colour": 1},
        admin={"token": "short"},
    )
    assert got == [
        "listen.tls.key: got nothing, expected a value (required)",
        "listen.tls.cert: got '/nope.pem', expected a readable PEM certificate (chain) file",
        "listen.max_headers: got 0, expected header lines, 8..1000",
        "listen.header_timeout_s: got 'soon', expected seconds, 0.1..600",
        "limits.requests_per_s: got -1, expected requests/s",
        "limits.records_burst: got 100, expected at least limits.max_records (5000),"
        " or a full request never passes",
        "speedtest.colour: got an unknown key, expected one of daily_bytes_per_token,"
        " enabled, max_upload_bytes, ticket_ttl_s",
        "speedtest.daily_bytes_per_token: got 'lots', expected bytes",
        "admin.token: got '***', expected an admin token of 16+ characters",
    ]


def test_admin_token_from_the_environment(tmp_path: Path) -> None:
    load(tmp_path)
    path = tmp_path / "collector.yaml"
    cfg = collector_config.load(path, environ={"SINYAL_ADMIN__TOKEN": "t" * 32})
    assert cfg.admin.token == "t" * 32
    assert "t" * 32 not in repr(cfg)


def test_token_bucket() -> None:
    now = [0.0]
    b = TokenBuckets(rate=2.0, burst=4, clock=lambda: now[0])
    assert [b.take("a") for _ in range(4)] == [0.0] * 4
    assert b.take("a") == pytest.approx(0.5)
    assert b.take("b") == 0.0  # its own bucket
    now[0] = 1.0
    assert b.take("a", 2) == 0.0
    assert b.take("a", 3) == pytest.approx(1.5)
    assert b.take("a", 5) == math.inf  # more than the burst never passes
    assert retry_after(0.2) == "1" and retry_after(1.5) == "2" and retry_after(math.inf) == "86400"


def test_daily_quota_resets_at_utc_midnight() -> None:
    now = [86400.0 * 100 + 3600]
    q = DailyQuota(1000, clock=lambda: now[0])
    assert q.charge("a", 600) and not q.charge("a", 500) and q.charge("a", 400)
    assert q.remaining("a") == 0 and q.remaining("b") == 1000
    assert q.seconds_to_reset() == 86400 - 3600
    now[0] += 86400
    assert q.remaining("a") == 1000


def test_tickets(tmp_path: Path) -> None:
    key_file = tmp_path / "speedtest.key"
    key = load_key(key_file)
    assert load_key(key_file) == key and key_file.stat().st_mode & 0o777 == 0o600
    now = [1_800_000_000.0]
    signer = TicketSigner(key, 600, clock=lambda: now[0])
    t = signer.issue("deadbeef")
    assert signer.verify(t.text) == t
    assert ticket_in_path(f"/speedtest/t/{t.text}/random350x350.jpg") == t.text
    assert ticket_in_path(f"/speedtest/t/{t.text}/") == t.text
    assert ticket_in_path("/speedtest/random350x350.jpg") is None
    token_id, expires, sig = t.text.split(".")
    assert signer.verify(f"cafebabe.{expires}.{sig}") is None  # another token's id
    assert signer.verify(f"{token_id}.{int(expires) + 1}.{sig}") is None
    assert TicketSigner(b"k" * 32, 600, clock=lambda: now[0]).verify(t.text) is None
    now[0] += 601
    assert signer.verify(t.text) is None
    key_file.write_bytes(b"short")
    with pytest.raises(ValueError, match="expected 32 random bytes"):
        load_key(key_file)


def test_connection_cap_stays_below_the_file_limit() -> None:
    assert effective_connection_cap(4096, 65536) == 4096
    assert effective_connection_cap(4096, 1024) == 1024 - FD_RESERVE
    assert effective_connection_cap(4096, 100) == 16


def test_processes_starting_together_share_one_key(tmp_path: Path) -> None:
    """serve --workers starts its processes at once: each must read the same whole key,
    never a file another one has created and not written yet."""
    import multiprocessing

    for round_ in range(5):
        key_file = tmp_path / f"speedtest{round_}.key"
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(4) as pool:
            keys = pool.map(load_key, [key_file] * 8)
        assert len(set(keys)) == 1 and len(keys[0]) == 32
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
