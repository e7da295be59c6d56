#!/usr/bin/env bash
# `make run`: the whole local stack on loopback.
#   1. InfluxDB: $INFLUX_URL when given, else Debian's influxd with a project-local data dir
#      (var/local/influxdb; installed with apt when missing and running as root)
#   2. loopback demo targets (DNS and HTTP) for the agent's probes
#   3. the collector, with the example station registry and a token for the demo station
#   4. the agent (config/agent.local.yaml) uploading to it, with its live view
# Ctrl-C stops everything. The control room's view: `make status` in another terminal.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
VAR=${SINYAL_RUN_DIR:-$ROOT/var/local}
BIN=$ROOT/.venv/bin
INFLUX_PORT=${SINYAL_INFLUX_PORT:-18086}
COLLECTOR_PORT=${SINYAL_COLLECTOR_PORT:-18080}
STATION=3171011001001
mkdir -p "$VAR"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_http() {  # URL what
    for _ in $(seq 1 100); do
        if python3 -c "import sys,urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)" "$1" 2>/dev/null; then
            return 0
        fi
        sleep 0.2
    done
    echo "run: $2 did not answer at $1; see $VAR/*.log" >&2
    exit 1
}

if [ -n "${INFLUX_URL:-}" ]; then
    influx_url=$INFLUX_URL
else
    if ! command -v influxd >/dev/null; then
        if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
            echo "run: installing Debian's influxdb (apt-get)…"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq influxdb >/dev/null
        else
            echo "run: influxd not found: install InfluxDB (apt-get install influxdb) or set" \
                 "INFLUX_URL=http://host:8086" >&2
            exit 1
        fi
    fi
    mkdir -p "$VAR/influxdb"
    cat > "$VAR/influxdb.conf" <<CONF
reporting-disabled = true
bind-address = "127.0.0.1:$((INFLUX_PORT + 2))"
[meta]
  dir = "$VAR/influxdb/meta"
[data]
  dir = "$VAR/influxdb/data"
  wal-dir = "$VAR/influxdb/wal"
  max-values-per-tag = 0
  query-log-enabled = false
[http]
  bind-address = "127.0.0.1:$INFLUX_PORT"
  log-enabled = false
[logging]
  level = "warn"
CONF
    influxd run -config "$VAR/influxdb.conf" > "$VAR/influxd.log" 2>&1 &
    pids+=($!)
    influx_url=http://127.0.0.1:$INFLUX_PORT
    wait_http "$influx_url/ping" "influxd"
fi

"$BIN/python" deploy/local/targets.py > "$VAR/targets.log" 2>&1 &
pids+=($!)

cat > "$VAR/collector.yaml" <<CONF
listen: {host: 127.0.0.1, port: $COLLECTOR_PORT}
sink: {kind: v1, url: "$influx_url", database: sinyal}
data_dir: $VAR/collector
thresholds_file: $ROOT/config/thresholds.yaml
status: {silent_after_s: 180, sweep_interval_s: 10}
CONF
"$BIN/sinyal-collector" check-config -c "$VAR/collector.yaml" >/dev/null
"$BIN/sinyal-collector" stations import config/stations.example.csv -c "$VAR/collector.yaml" >/dev/null
if [ ! -s "$VAR/agent-token" ]; then
    "$BIN/sinyal-collector" agents add --station "$STATION" --note "make run demo" \
        -c "$VAR/collector.yaml" > "$VAR/agent-token" 2>/dev/null
    chmod 600 "$VAR/agent-token"
fi
"$BIN/sinyal-collector" serve -c "$VAR/collector.yaml" > "$VAR/collector.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$COLLECTOR_PORT/healthz" "the collector"

echo "run: InfluxDB $influx_url · collector http://127.0.0.1:$COLLECTOR_PORT · logs in $VAR"
echo "run: control-room view in another terminal: make status"
export SINYAL_COLLECTOR__URL=http://127.0.0.1:$COLLECTOR_PORT
export SINYAL_COLLECTOR__TOKEN_FILE=$VAR/agent-token
"$BIN/sinyal-agent" check-config -c config/agent.local.yaml >/dev/null
"$BIN/sinyal-agent" run -c config/agent.local.yaml "$@"
