#!/usr/bin/env bash
# System tools the test suite uses as real peers: fping (RTT reference), iperf3 (throughput
# reference), nginx (the Speedtest Mini endpoint at high concurrency), socat (a relay into the
# field lab), faketime (a board whose clock is wrong), dnsmasq (resolver), iptables and
# iproute2 (namespaces, loss), iputils-ping, debootstrap (a clean Debian root for the install
# test), poppler-utils (pdftotext and pdftoppm: the enrolment sheet and the reports), dbus
# (dbus-daemon: a private bus for the mocked ModemManager of the signal tests), libdbus-1-dev,
# libglib2.0-dev and pkg-config (to build dbus-python for python-dbusmock), chromium (the
# /reports page, headless), fonts-dejavu-core and Pango (WeasyPrint's PDF rendering),
# postgresql (the shared registry's server: tests start a throwaway cluster of their own), wrk
# (the load generator of the fleet benchmark and its smoke test: benchmarks/wrkload.py).
# Installed with apt when running as root; otherwise the tests that need them skip with a
# reason (and fail in CI).
set -euo pipefail
packages=(fping iperf3 nginx-light socat faketime dnsmasq-base iptables iproute2 iputils-ping
    procps util-linux debootstrap poppler-utils influxdb victoria-metrics dbus
    libdbus-1-dev libglib2.0-dev pkg-config chromium fonts-dejavu-core libpango-1.0-0
    libpangoft2-1.0-0 postgresql wrk)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "note: not installing ${missing[*]} (needs root and apt); tests that need them will skip" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
