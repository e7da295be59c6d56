"""Property-based fuzzing of the ingest API: whatever arrives, the collector never answers 5xx,
and every record of a 200 answer is accounted for (accepted or rejected, never lost)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.harness.collector_stack import (
    Stack,
    collector_config_file,
    envelope,
    golden,
    running_collector,
)
from tests.harness.dbs import InfluxServer

EXAMPLES = 500

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=40),
)  # fmt: skip
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=12,
)  # fmt: skip
tag_text = st.text(min_size=0, max_size=300)
FIELD_NAMES = ["loss_pct", "rtt_p50_ms", "sent", "received", "ok", "status", "rcode", "mos",
               "bytes", "resolve_ms", "made_up", "id", "error"]  # fmt: skip


@st.composite
def mutated_record(draw: st.DrawFn) -> dict[str, Any]:
    rec = golden(draw(st.sampled_from(["icmp-ok", "icmp-total-loss", "dns-ok", "http-ok"])))
    for _ in range(draw(st.integers(0, 3))):
        what = draw(st.sampled_from(["field", "tag", "kind", "time", "id", "error", "drop"]))
        if what in ("field", "tag") and not isinstance(rec.get(what + "s"), dict):
            continue  # dropped earlier in this record
        if what == "field":
            rec["fields"][draw(st.sampled_from(FIELD_NAMES))] = draw(json_values)
        elif what == "tag":
            key = draw(st.sampled_from(["target", "uplink", "operator", "station", "resolver",
                                        "qname", "province", "x"]))  # fmt: skip
            rec["tags"][key] = draw(st.one_of(tag_text, json_values))
        elif what == "kind":
            rec["kind"] = draw(st.one_of(st.sampled_from(["icmp", "dns", "agent"]), json_values))
        elif what == "time":
            rec["measured_at"] = draw(st.one_of(st.text(max_size=40), json_values))
        elif what == "id":
            rec["id"] = draw(st.one_of(st.just(uuid.uuid4().hex), json_values))
        elif what == "error":
            rec["error"] = draw(st.one_of(st.sampled_from(["timeout", "nope"]), json_values))
        else:
            rec.pop(draw(st.sampled_from(["id", "kind", "tags", "fields", "measured_at"])), None)
    return rec


bodies = st.one_of(
    st.builds(lambda recs: envelope(recs), st.lists(mutated_record(), max_size=6)),
    json_values,
    st.builds(lambda env, k, v: {**env, k: v}, st.builds(envelope, st.just([])),
              st.sampled_from(["schema", "agent", "sent_at", "records"]), json_values),
)  # fmt: skip


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, influxdb: InfluxServer) -> Iterator[Stack]:
    name = f"fuzz_{uuid.uuid4().hex[:8]}"
    influxdb.create_database(name)
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    with running_collector(collector_config_file(tmp, influxdb.url, name)) as s:
        yield s


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large])  # fmt: skip
@given(body=bodies, raw=st.booleans())
def test_no_input_gets_a_5xx(stack: Stack, body: Any, raw: bool) -> None:
    data = json.dumps(body).encode()
    if raw:
        data = data[: len(data) // 2]  # truncated JSON
    with httpx.Client(timeout=30) as client:
        r = client.post(f"{stack.url}/api/v1/measurements", content=data,
                        headers={"Authorization": f"Bearer {stack.token}"})  # fmt: skip
    assert r.status_code < 500, r.text
    assert r.status_code in (200, 403, 413, 422), r.status_code
    if r.status_code == 200:
        answer = r.json()
        records = body.get("records", []) if isinstance(body, dict) else []
        answered = len(answer["accepted"]) + len(answer["rejected"])
        assert answered == len(records), answer
