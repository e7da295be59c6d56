"""Issue 15, compose item (structural: no Docker engine here): the collector and Grafana get
least-privilege InfluxDB tokens (write-only, read-only) instead of the admin token, and
nothing is published as plain HTTP beyond the host."""

from __future__ import annotations

import re

import yaml

from tests.conftest import ROOT

COMPOSE_DIR = ROOT / "deploy" / "compose"
COMPOSE = yaml.safe_load((COMPOSE_DIR / "docker-compose.yml").read_text())
INIT = COMPOSE_DIR / "influxdb-init" / "10-least-privilege-tokens.sh"


def test_only_influxdb_sees_the_admin_token() -> None:
    for name in ("collector", "grafana"):
        svc = COMPOSE["services"][name]
        assert "${INFLUX_TOKEN" not in yaml.safe_dump(svc), name
    assert "${INFLUX_TOKEN" in yaml.safe_dump(COMPOSE["services"]["influxdb"])


def test_each_service_reads_its_own_least_privilege_token() -> None:
    script = INIT.read_text()
    write = r'token_of "[^"]*write only[^"]*" --write-bucket > "\$out/collector-write'
    read = r'token_of "[^"]*read only[^"]*" --read-bucket > "\$out/grafana-read'
    assert re.search(write, script) and re.search(read, script)
    assert "--all-access" not in script and "--operator" not in script
    influx = COMPOSE["services"]["influxdb"]["volumes"]
    assert "./influxdb-init:/docker-entrypoint-initdb.d:ro" in influx
    collector = COMPOSE["services"]["collector"]
    assert "collector-write.token" in " ".join(collector["entrypoint"])
    assert "SINYAL_SINK__TOKEN" in " ".join(collector["entrypoint"])
    grafana = COMPOSE["services"]["grafana"]
    assert "grafana-read.token" in " ".join(grafana["entrypoint"])
    for svc in (collector, grafana):
        assert "sinyal-secrets:/run/sinyal-secrets:ro" in svc["volumes"]
    # the owners the script gives the files are the services' users
    assert "--uid 10001" in (COMPOSE_DIR / "collector.Dockerfile").read_text()
    assert "chown 10001" in script and "chown 472" in script  # 472: Grafana's image user


def test_no_port_is_published_beyond_the_host() -> None:
    for name, svc in COMPOSE["services"].items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
