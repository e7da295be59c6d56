"""The agent against a hostile collector (issue 15, finding 10): its peak memory and how long
one upload can be held, for each kind of hostile answer.

Each case runs the real agent (`sinyal-agent run --plain --duration D`, 50 records spooled)
against tests/harness/hostile.py's server on loopback, polling the agent's VmHWM (peak RSS)
from /proc; the slow-drip case times one upload of the uploader against the per-request
deadline. Writes benchmarks/results/hardening-agent.md.

    python benchmarks/hostile_answers.py [--seconds 6]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine

from agent.safehttp import DEADLINE_FACTOR, MAX_ANSWER_BYTES
from tests.harness.hostile import Behaviour, hostile_collector
from tests.integration.test_hardening_agent_answers import (
    agent_config_file,
    fill_spool,
    one_upload,
    peak_rss_mb_of_agent_run,
    uploader,
)

CASES = {
    "ok": "the collector's acknowledgement (baseline)",
    "huge": "200, 512 MiB body with Content-Length",
    "huge_chunked": "200, 512 MiB body, chunked (no length)",
    "bomb": "200, gzip bomb: 512 MiB of zeros in 0.5 MiB",
    "reject_huge": "200, three rejections with a 20 MiB reason each",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=6)
    args = ap.parse_args()
    rows = []
    for ack, what in CASES.items():
        with tempfile.TemporaryDirectory() as tmp_s:
            tmp = Path(tmp_s)
            fill_spool(tmp / "data")
            with hostile_collector(Behaviour(ack=ack)) as hostile:
                peak, log = peak_rss_mb_of_agent_run(
                    agent_config_file(tmp, hostile.url), args.seconds
                )
                uploads = hostile.behaviour.uploads
            refused = sum(1 for line in log.splitlines() if "failed (AnswerError" in line)
            rows.append(f"| {what} | {peak:.0f} MB | {uploads} | {refused} |")
            print(rows[-1], flush=True)
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        fill_spool(tmp / "data")
        with hostile_collector(Behaviour(ack="drip")) as hostile:
            outcome, took = asyncio.run(one_upload(uploader(tmp / "data", hostile.url, 1)))
    drip = f"{took:.1f} s (deadline {DEADLINE_FACTOR} x timeout_s 1 = {DEADLINE_FACTOR} s)"
    text = f"""# The agent against a hostile collector (issue 15, finding 10)

Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}. `python
benchmarks/hostile_answers.py --seconds {args.seconds:g}`: the real agent (`sinyal-agent run
--plain`, {args.seconds:g} s, 50 records in its spool, collector.timeout_s 5) against the hostile
server of tests/harness/hostile.py on loopback; peak RSS is the agent's VmHWM. The agent caps
an answer at {MAX_ANSWER_BYTES // 2**20} MiB on the wire and after decompression
(agent/safehttp.py); a refused answer leaves the batch in the spool, which is retried with
backoff ("uploads" counts the attempts the server saw, "refused" the agent's log lines).

| collector's answer | agent peak RSS | uploads | refused |
|---|---|---|---|
{chr(10).join(rows)}

- Before the bound (issue 15's figures on the earlier agent): a 512 MiB body took the agent
  to 1.6 GB RSS and a 1 MiB gzip bomb to 2.1 GB; a 20 MiB reason was stored whole.
- A slow drip (headers, then one byte every 0.2 s, each read within the read timeout): one
  upload ended after {drip}, as "{outcome.error if outcome else ""}", the batch kept;
  before, the request never ended.
"""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "hardening-agent.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
