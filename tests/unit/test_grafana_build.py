"""The Grafana files hold together without a Grafana server: they are what grafana/build.py
builds, every dashboard and rule is well formed, every datasource they name is provisioned,
every variable they use is defined, every query stays in the InfluxQL subset InfluxDB 3
speaks, and the compose stack mounts files that exist with documented variables.
(tests/integration/test_grafana_queries.py runs the queries.)"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from collector import config as collector_config
from grafana import build
from tests.conftest import ROOT
from tests.harness.grafana_artifacts import (
    DATASOURCE_FILES,
    GRAFANA,
    dashboards,
    outer,
    queries,
    rules,
)

COMPOSE_DIR = ROOT / "deploy" / "compose"
COMPOSE = yaml.safe_load((COMPOSE_DIR / "docker-compose.yml").read_text())
DOCS = (ROOT / "docs" / "grafana.md").read_text()
PROVISIONING = GRAFANA / "provisioning"
BOARDS = dashboards()
# Grafana's own names: macros, builtin variables, alias patterns, data-link fields.
BUILTIN = re.compile(r"^(timeFilter|__\w+|col|tag_\w+|__all)$")


def test_committed_files_are_what_build_makes() -> None:
    for path, text in build.outputs().items():
        assert path.read_text() == text, f"{path}: run python -m grafana.build"
    assert build.main(["--check"]) == 0


def test_provisioned_datasources() -> None:
    """Three variants (1.x, 2.x, 3.x), one uid, InfluxQL mode, secrets only from the
    environment."""
    assert [p.name for p in DATASOURCE_FILES] == [
        "influxdb1.yaml",
        "influxdb2.yaml",
        "influxdb3.yaml",
    ]
    for path in DATASOURCE_FILES:
        (ds,) = yaml.safe_load(path.read_text())["datasources"]
        assert ds["uid"] == build.DATASOURCE_UID and ds["type"] == "influxdb", path
        assert ds["jsonData"]["version"] == "InfluxQL", path
        assert ds["jsonData"]["dbName"] == "${SINYAL_INFLUX_DATABASE}"
        assert ds["url"] == "${SINYAL_INFLUX_URL}"
        for secret in ds["secureJsonData"].values():
            assert re.fullmatch(r"(Token )?\$\{SINYAL_INFLUX_\w+\}", secret), (path, secret)
        if path.name != "influxdb1.yaml":  # 2.x and 3.x: Authorization: Token <token>
            assert ds["jsonData"]["httpHeaderName1"] == "Authorization"
            assert ds["secureJsonData"]["httpHeaderValue1"] == "Token ${SINYAL_INFLUX_TOKEN}"
        else:
            assert ds["secureJsonData"] == {"password": "${SINYAL_INFLUX_PASSWORD}"}


def datasource_refs(node: Any) -> list[str]:
    """Every datasource uid named anywhere inside a dashboard or rule."""
    found: list[str] = []
    if isinstance(node, dict):
        ds = node.get("datasource")
        if isinstance(ds, dict) and "uid" in ds:
            found.append(ds["uid"])
        if "datasourceUid" in node:
            found.append(node["datasourceUid"])
        for v in node.values():
            found += datasource_refs(v)
    elif isinstance(node, list):
        for v in node:
            found += datasource_refs(v)
    return found


@pytest.mark.parametrize("uid", sorted(BOARDS))
def test_dashboard_structure(uid: str) -> None:
    d = BOARDS[uid]
    assert d["schemaVersion"] == 39 and d["uid"] == uid and d["title"].startswith("Sinyal")
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for p in d["panels"]:
        g = p["gridPos"]
        assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not mine & cells, f"{p['title']} overlaps another panel"
        cells |= mine
        assert p["targets"] and p["description"], p["title"]
    builtin = {"grafana", "-- Grafana --"}
    assert set(datasource_refs(d)) - builtin == {build.DATASOURCE_UID}


@pytest.mark.parametrize("uid", sorted(BOARDS))
def test_every_variable_used_is_defined(uid: str) -> None:
    d = BOARDS[uid]
    defined = {v["name"] for v in d["templating"]["list"]}
    text = json_text(d["panels"]) + json_text(d["templating"]) + json_text(d["annotations"])
    used = set(re.findall(r"\$\{?(\w+)", text))
    undefined = {u for u in used if u not in defined and not BUILTIN.match(u)}
    assert not undefined, undefined
    # and chained variables only refer to variables defined before them
    seen: set[str] = set()
    for v in d["templating"]["list"]:
        refs = set(re.findall(r"\$(\w+)", v.get("query", ""))) - {"__all"}
        assert refs <= seen, (v["name"], refs - seen)
        seen.add(v["name"])


def json_text(node: Any) -> str:
    return json.dumps(node)


def test_station_search_is_not_a_list_of_every_station() -> None:
    """100,000 stations: station choice is a text box (id or prefix), never a dropdown."""
    for d in BOARDS.values():
        for v in d["templating"]["list"]:
            if v["type"] == "query":
                assert '"station"' not in v["query"].split("WITH KEY")[1].split("WHERE")[0]
            if v["name"] in ("station", "search"):
                assert v["type"] == "textbox"


QUERIES = list(queries())


@pytest.mark.parametrize("query", QUERIES, ids=[x.where for x in QUERIES])
def test_queries_stay_in_the_v3_subset_and_within_series_limits(query: Any) -> None:
    text = query.text
    for banned in (
        "SLIMIT",
        "SOFFSET",
        "INTEGRAL(",
        "SAMPLE(",
        "HOLT_WINTERS",
        "SHOW SERIES",
        "SHOW DATABASES",
        "ORDER BY time DESC LIMIT",
    ):
        assert banned.lower() not in text.lower(), banned
    if text.startswith("SHOW TAG VALUES"):
        assert " FROM " in text and "time > now() - " in text
    group = outer(text).partition("GROUP BY")[2]
    per_station = '"station"' in group
    if query.dashboard is not None:
        # a panel never gets a series per station (Grafana's limit: 1000 series)
        assert not per_station, query.where
    else:
        # alert rules: a series only for stations in trouble (the outer query filters)
        assert not per_station or "WHERE" in outer(text), query.where


def test_alert_rules() -> None:
    doc = yaml.safe_load((PROVISIONING / "alerting" / "rules.yaml").read_text())
    (group,) = doc["groups"]
    assert group["folder"] == "Sinyal" and group["interval"] == "1m"
    uids = [r["uid"] for r in rules()]
    assert len(uids) == len(set(uids)) == 6
    for r in rules():
        refs = {d["refId"] for d in r["data"]}
        assert r["condition"] in refs, r["uid"]
        assert set(datasource_refs(r["data"])) <= {build.DATASOURCE_UID, "__expr__"}
        for d in r["data"]:
            expr = d["model"].get("expression")
            assert expr is None or expr in refs, (r["uid"], expr)
        assert re.fullmatch(r"\d+m", r["for"]), r["uid"]  # debounced
        assert r["labels"]["severity"] in ("critical", "warning") and r["labels"]["scope"]
        summary = r["annotations"]["summary"]
        assert "$labels.province" in summary, r["uid"]  # names the region
        if r["labels"]["scope"] in ("station", "agent"):
            assert "$labels.station" in summary and "$labels.regency" in summary
        assert r["noDataState"] == "OK"  # no station in trouble is not an outage


def test_contact_points_and_policies() -> None:
    cps = yaml.safe_load((PROVISIONING / "alerting" / "contact-points.yaml").read_text())
    names = {c["name"] for c in cps["contactPoints"]}
    types = {rc["type"] for c in cps["contactPoints"] for rc in c["receivers"]}
    assert types == {"webhook", "email"}
    for c in cps["contactPoints"]:
        for rc in c["receivers"]:
            assert rc["disableResolveMessage"] is False  # recovery is notified
            for key in ("url", "addresses"):  # from the environment, never in the file
                assert re.fullmatch(r"\$\{SINYAL_\w+\}", rc["settings"].get(key, "${SINYAL_X}"))
    (policy,) = yaml.safe_load((PROVISIONING / "alerting" / "policies.yaml").read_text())[
        "policies"
    ]
    receivers = {policy["receiver"], *(r["receiver"] for r in policy["routes"])}
    assert receivers <= names
    labels = {m[0] for r in policy["routes"] for m in r["object_matchers"]}
    rule_labels = {k for r in rules() for k in r["labels"]}
    assert labels <= rule_labels


def env_refs(path: Path) -> set[str]:
    return set(re.findall(r"\$\{(\w+)", path.read_text()))


def test_dashboard_provider_points_where_compose_mounts_the_dashboards() -> None:
    (provider,) = yaml.safe_load((PROVISIONING / "dashboards" / "sinyal.yaml").read_text())[
        "providers"
    ]
    grafana = COMPOSE["services"]["grafana"]
    mounts = dict(reversed(m.rsplit(":", 2)[:2]) for m in grafana["volumes"] if m.startswith("."))
    source = mounts[provider["options"]["path"]]
    assert (COMPOSE_DIR / source).resolve() == build.DASHBOARDS
    assert provider["folder"] == build.FOLDER


def test_compose_mounts_exist_and_variables_are_documented() -> None:
    env_example = (COMPOSE_DIR / ".env.example").read_text()
    documented = set(re.findall(r"^(\w+)=", env_example, re.M))
    text = (COMPOSE_DIR / "docker-compose.yml").read_text()
    for var, default in re.findall(r"\$\{(\w+)(:[-?][^}]*)?\}", text):
        assert var in documented or default.startswith(":-"), var
        assert var in DOCS, f"{var} not in docs/grafana.md"
    for name, svc in COMPOSE["services"].items():
        for m in svc.get("volumes", []):
            source = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", m).split(":")[0]
            if source.startswith("."):
                assert (COMPOSE_DIR / source).exists(), f"{name}: {source}"
    # everything the provisioning files read from the environment, Grafana's service sets
    grafana_env = set(COMPOSE["services"]["grafana"]["environment"])
    mounted = [
        COMPOSE_DIR / m.split(":")[0]
        for m in COMPOSE["services"]["grafana"]["volumes"]
        if m.startswith(".")
    ]
    needed: set[str] = set()
    for path in mounted:
        for f in [path] if path.is_file() else sorted(path.glob("*.yaml")):
            needed |= env_refs(f)
    assert needed and needed <= grafana_env, needed - grafana_env
    for var in needed:
        assert var in DOCS, f"{var} not in docs/grafana.md"
    build_ctx = COMPOSE["services"]["collector"]["build"]
    assert (COMPOSE_DIR / build_ctx["context"] / build_ctx["dockerfile"]).is_file()


def compose_collector_config(
    extra_env: dict[str, str] | None = None,
) -> collector_config.CollectorConfig:
    """The collector's config in the stack, loaded here (container paths mapped to the
    mounts), with the stack's environment and `extra_env`."""
    svc = COMPOSE["services"]["collector"]
    mounts = {
        m.split(":")[1]: COMPOSE_DIR / m.split(":")[0] for m in svc["volumes"] if m.startswith(".")
    }
    cfg_path = mounts[svc["environment"]["SINYAL_COLLECTOR_CONFIG"]]
    doc = yaml.safe_load(cfg_path.read_text())
    environ = {
        "SINYAL_SINK__TOKEN": "from-the-environment",
        "SINYAL_THRESHOLDS_FILE": str(mounts[doc["thresholds_file"]].resolve()),
        **(extra_env or {}),
    }
    return collector_config.load(cfg_path, environ=environ)


def test_compose_collector_config_loads() -> None:
    """The collector's config in the stack is valid (container paths mapped to the mounts)."""
    cfg = compose_collector_config()
    assert cfg.sink.kind == "v2" and cfg.sink.url == "http://influxdb:8086"
    assert (
        cfg.sink.bucket
        == COMPOSE["services"]["influxdb"]["environment"]["DOCKER_INFLUXDB_INIT_BUCKET"]
    )
    grafana_env = COMPOSE["services"]["grafana"]["environment"]
    assert grafana_env["SINYAL_INFLUX_DATABASE"] == cfg.sink.bucket  # virtual DBRP: bucket = db
    assert cfg.status.sweeper is True


def test_docs_describe_every_panel_and_rule() -> None:
    for d in BOARDS.values():
        assert d["title"] in DOCS, d["title"]
        for p in d["panels"]:
            assert p["title"] in DOCS, f"{d['title']}: panel {p['title']!r} not in docs/grafana.md"
    for r in rules():
        assert r["title"] in DOCS, r["title"]
    for variant in ("influxdb1.yaml", "influxdb2.yaml", "influxdb3.yaml"):
        assert variant in DOCS
    assert "not run" in DOCS.lower()


def test_the_within_thresholds_query_follows_inclusive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operators board's "within thresholds" conditions come from the thresholds model:
    flipping `inclusive` on a metric flips its comparison (a value at the limit breaches)."""
    shipped = build.within_conditions()
    assert '"loss_pct" < ' in " ".join(shipped)  # loss is inclusive in the shipped file
    assert '"rtt_p50_ms" <= ' in " ".join(shipped)
    doc = yaml.safe_load((ROOT / "config" / "thresholds.yaml").read_text())
    doc["metrics"]["latency"]["inclusive"] = True
    doc["metrics"]["loss"]["inclusive"] = False
    doc["metrics"]["mos"]["inclusive"] = True
    changed = tmp_path / "thresholds.yaml"
    changed.write_text(yaml.safe_dump(doc))
    monkeypatch.setattr(build, "THRESHOLDS", changed)
    flipped = " ".join(build.within_conditions())
    assert '"rtt_p50_ms" < ' in flipped
    assert '"loss_pct" <= ' in flipped
    assert '"mos" > ' in flipped
