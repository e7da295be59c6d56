"""deploy/compose/docker-compose.shards.yml, structurally (no Docker engine here): nginx runs
deploy/nginx/collector.conf in the collector's network namespace, its upstream lines are the
ports the collector serves, and every variable is documented."""

from __future__ import annotations

import re

import yaml

from tests.conftest import ROOT
from tests.unit.test_grafana_build import compose_collector_config

COMPOSE_DIR = ROOT / "deploy" / "compose"
SHARDS = yaml.safe_load((COMPOSE_DIR / "docker-compose.shards.yml").read_text())
BASE = yaml.safe_load((COMPOSE_DIR / "docker-compose.yml").read_text())
NGINX_CONF = (ROOT / "deploy" / "nginx" / "collector.conf").read_text()


def test_nginx_routes_to_the_ports_the_collector_serves() -> None:
    collector, nginx = SHARDS["services"]["collector"], SHARDS["services"]["nginx"]
    command = collector["entrypoint"][-1]
    assert "exec sinyal-collector serve --ports " in command
    served = [int(p) for p in command.rsplit("--ports ", 1)[1].split(",")]
    upstream = [int(p) for p in re.findall(r"^\s*server 127\.0\.0\.1:(\d+)", NGINX_CONF, re.M)]
    assert served == upstream and len(served) >= 2
    # loopback upstreams: nginx shares the collector's network namespace
    assert nginx["network_mode"] == "service:collector"
    assert collector["environment"]["SINYAL_LISTEN__HOST"] == "127.0.0.1"
    # the same write-token entrypoint as the single collector, only the serve arguments differ
    base_command = BASE["services"]["collector"]["entrypoint"][-1]
    assert command.startswith(base_command.removesuffix("serve"))


def test_mounts_exist_and_variables_are_documented() -> None:
    nginx = SHARDS["services"]["nginx"]
    conf_mount = next(m for m in nginx["volumes"] if m.startswith("../nginx/"))
    source, target, _ = conf_mount.split(":")
    assert (COMPOSE_DIR / source).resolve() == ROOT / "deploy" / "nginx" / "collector.conf"
    assert target.startswith("/etc/nginx/conf.d/")
    cert_dir = next(m for m in nginx["volumes"] if m.startswith("${TLS_CERT_DIR"))
    for name in ("fullchain.pem", "privkey.pem"):
        assert f"{cert_dir.split(':')[-2]}/{name}" in NGINX_CONF
    env_example = (COMPOSE_DIR / ".env.example").read_text()
    documented = set(re.findall(r"^(\w+)=", env_example, re.M))
    docs = (ROOT / "docs" / "grafana.md").read_text()
    text = (COMPOSE_DIR / "docker-compose.shards.yml").read_text()
    found = re.findall(r"\$\{(\w+)(:[-?][^}]*)?\}", text)
    assert found
    for var, default in found:
        assert var in documented or default.startswith(":-"), var
        assert var in docs, f"{var} not in docs/grafana.md"


def test_collector_config_loads_with_the_shards_environment() -> None:
    cfg = compose_collector_config(SHARDS["services"]["collector"]["environment"])
    assert cfg.listen.host == "127.0.0.1"
