#!/bin/sh
# Run once by the influxdb:2.7 image after its first-start setup (/docker-entrypoint-initdb.d),
# with the influx CLI already configured with the admin token. Creates the two tokens the
# stack uses instead of that admin token, each limited to the sinyal bucket:
#   collector-write.token  write only (the collector stores points; it never reads)
#   grafana-read.token     read only  (dashboards and alerts; `sinyal-collector status`)
# and leaves them in the sinyal-secrets volume, readable only by the service that uses it
# (the collector image runs as uid 10001, Grafana's as uid 472). The admin token stays with
# InfluxDB and the operator (.env), for administration only.
set -eu
out=/run/sinyal-secrets
org="${DOCKER_INFLUXDB_INIT_ORG}"
# The image exports the new bucket's id to init scripts.
bucket_id="${DOCKER_INFLUXDB_INIT_BUCKET_ID}"
token_of() {  # the "token" of `influx auth create --json`
    influx auth create --org "$org" --description "$1" "$2" "$bucket_id" --json \
        | sed -n 's/^ *"token": *"\([^"]*\)".*/\1/p'
}
if [ ! -w "$out" ]; then
    echo "10-least-privilege-tokens.sh: $out is not writable by uid $(id -u)" >&2
    exit 1
fi
umask 077
token_of "sinyal collector (write only)" --write-bucket > "$out/collector-write.token"
token_of "sinyal grafana (read only)" --read-bucket > "$out/grafana-read.token"
test -s "$out/collector-write.token" && test -s "$out/grafana-read.token"
if chown 10001 "$out/collector-write.token" 2>/dev/null \
        && chown 472 "$out/grafana-read.token" 2>/dev/null; then
    chmod 0400 "$out/collector-write.token" "$out/grafana-read.token"
else
    # Not root here: readable by the two services that mount the volume (and nothing else).
    chmod 0444 "$out/collector-write.token" "$out/grafana-read.token"
fi
