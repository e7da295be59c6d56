#!/usr/bin/env bash
# `make run`: start the loopback demo targets, then the agent with config/agent.local.yaml.
# The targets stop when the agent stops.
set -euo pipefail
cd "$(dirname "$0")/../.."
.venv/bin/python deploy/local/targets.py &
targets=$!
trap 'kill "$targets" 2>/dev/null || true' EXIT
sleep 0.5
.venv/bin/sinyal-agent check-config -c config/agent.local.yaml
.venv/bin/sinyal-agent run -c config/agent.local.yaml "$@"
