"""The docs describe what the code does: every measurement, tag, field and error code."""

from __future__ import annotations

import re

from agent.contract.record import MEASUREMENTS, ErrorCode
from tests.conftest import ROOT

DATA_MODEL = (ROOT / "docs" / "data-model.md").read_text()
EXAMPLE = (ROOT / "config" / "agent.example.yaml").read_text()


def test_every_measurement_tag_and_field_is_documented() -> None:
    for name, m in MEASUREMENTS.items():
        assert re.search(rf"^### `{name}`", DATA_MODEL, re.M), f"measurement {name}"
        for tag in m.tags:
            assert f"| `{tag}` |" in DATA_MODEL, f"tag {tag}"
        for field, spec in m.fields.items():
            row = re.search(rf"^\| `{field}` \| ([^|]+) \|", DATA_MODEL, re.M)
            assert row, f"{name}.{field} has no row in docs/data-model.md"
            assert row.group(1).strip() == spec.unit, f"{name}.{field} unit"


def test_every_error_code_is_documented() -> None:
    for code in ErrorCode:
        assert f"| `{code.value}` |" in DATA_MODEL, code


def test_example_config_documents_every_key() -> None:
    for key in (
        "station:",
        "collector:",
        "uplinks:",
        "probes:",
        "icmp:",
        "dns:",
        "http:",
        "schedule:",
        "spool:",
        "data_dir:",
        "thresholds_file:",
        "count:",
        "spacing_s:",
        "timeout_s:",
        "payload_bytes:",
        "resolvers:",
        "names:",
        "qtype:",
        "max_bytes:",
        "expect_status:",
        "jitter_fraction:",
        "max_jitter_s:",
        "max_mb:",
        "token_file:",
        "ca_bundle:",
        "interface:",
        "source:",
        "operator:",
        "tz:",
        "lat:",
        "lon:",
        "throughput:",
        "upload:",
        "backend:",
        "duration_s:",
        "ping_interval_s:",
        "first_estimate_mb:",
        "server_id:",
        "secure:",
        "budget:",
        "daily_mb:",
        "monthly_mb:",
        "quiet_windows:",
        "start:",
        "end:",
        "dates:",
    ):
        lines = [
            ln
            for ln in EXAMPLE.splitlines()
            if ln.strip().startswith(key) or ln.strip().startswith(f"# {key}")
        ]
        assert lines, f"{key} missing from config/agent.example.yaml"
        assert any("#" in ln for ln in lines), f"{key} has no comment"
