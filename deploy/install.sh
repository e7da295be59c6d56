#!/usr/bin/env bash
# Install (or upgrade, or remove) the Sinyal agent on a field device, as root:
# Raspberry Pi OS, Debian or Ubuntu; arm64, armhf or amd64; Python 3.11 or newer.
#
#   sudo deploy/install.sh                      install or upgrade from this checkout
#   sudo deploy/install.sh --source SRC         ... from SRC: a checkout, a wheel, or any
#                                               pip requirement such as "sinyal==0.1.0"
#   sudo sinyal-agent enroll --collector URL CODE      then: the code from the sheet
#   sudo deploy/install.sh --uninstall          remove it; keeps the spool (/var/lib/sinyal)
#                                               and /etc/sinyal (config, token)
#   sudo deploy/install.sh --uninstall --purge  ... and remove those and the sinyal user too
#
# What it does (each step is skipped when already done, so a second run upgrades in place
# and keeps the spool, the config and the token):
#   - apt-get installs python3, python3-venv and ca-certificates when missing
#   - creates the system user `sinyal` (no login shell, home /var/lib/sinyal)
#   - a venv in /opt/sinyal/.venv with the agent (`SRC[agent]`), upgraded in place;
#     /usr/local/bin/sinyal-agent links to it; the docs go to /opt/sinyal/docs
#   - /etc/sinyal/agent.yaml (config/agent.field.yaml) and /etc/sinyal/thresholds.yaml when
#     missing (never overwritten; the shipped thresholds also go to thresholds.yaml.dist),
#     /etc/sinyal/token (empty, 0600, owned by sinyal) when missing
#   - /var/lib/sinyal (state: the spool), owned by sinyal, mode 0750
#   - the hardened systemd unit (deploy/systemd/sinyal-agent.service), enabled; started or
#     restarted when the config is valid (that is, once enrolled)
# pip honours PIP_INDEX_URL, PIP_FIND_LINKS, PIP_NO_INDEX (a mirror or a wheelhouse).
# Exit codes: 0 done, 1 a step failed (the message says which), 2 bad usage or an
# unsupported system (not root, Python older than 3.11, no apt and packages missing).
set -euo pipefail

PREFIX=/opt/sinyal
VENV=$PREFIX/.venv
ETC=/etc/sinyal
STATE=/var/lib/sinyal
UNIT=/etc/systemd/system/sinyal-agent.service
USER_NAME=sinyal
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SOURCE=$HERE
MODE=install
PURGE=0
START=1
PACKAGES=(python3 python3-venv ca-certificates)

say() { printf 'sinyal install: %s\n' "$*"; }
die() { printf 'sinyal install: error: %s\n' "$1" >&2; exit "${2:-1}"; }

usage() {
    sed -n '2,30p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

while [ $# -gt 0 ]; do
    case $1 in
        --source) [ $# -ge 2 ] || die "--source needs a value" 2; SOURCE=$2; shift 2 ;;
        --source=*) SOURCE=${1#--source=}; shift ;;
        --uninstall) MODE=uninstall; shift ;;
        --purge) PURGE=1; shift ;;
        --no-start) START=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option $1 (see --help)" 2 ;;
    esac
done
[ "$PURGE" = 1 ] && [ "$MODE" != uninstall ] && die "--purge goes with --uninstall" 2
[ "$(id -u)" -eq 0 ] || die "run as root: sudo $0 $*" 2

have_systemd() { command -v systemctl >/dev/null 2>&1; }
systemd_running() { have_systemd && [ -d /run/systemd/system ]; }

uninstall() {
    if have_systemd; then
        if systemd_running; then systemctl stop sinyal-agent.service 2>/dev/null || true; fi
        systemctl disable sinyal-agent.service 2>/dev/null || true
    fi
    rm -f "$UNIT" /usr/local/bin/sinyal-agent
    systemd_running && systemctl daemon-reload
    rm -rf "$PREFIX"
    if [ "$PURGE" = 1 ]; then
        rm -rf "$STATE" "$ETC"
        if id -u "$USER_NAME" >/dev/null 2>&1; then userdel "$USER_NAME" 2>/dev/null || true; fi
        getent group "$USER_NAME" >/dev/null && groupdel "$USER_NAME" 2>/dev/null || true
        say "removed the agent, its spool ($STATE), $ETC and the $USER_NAME user"
    else
        say "removed the agent; kept the spool in $STATE and the config and token in $ETC" \
            "(--uninstall --purge removes them)"
    fi
}

if [ "$MODE" = uninstall ]; then
    uninstall
    exit 0
fi

# --- the system --------------------------------------------------------------------------
arch=$(uname -m)
case $arch in
    aarch64|arm64|armv7l|armv6l|x86_64) ;;
    *) say "warning: untested architecture $arch (tested: arm64, armhf, amd64)" ;;
esac
if [ -r /etc/os-release ]; then
    # shellcheck disable=SC1091
    . /etc/os-release
    case " ${ID:-} ${ID_LIKE:-} " in
        *" debian "*|*" ubuntu "*|*" raspbian "*) ;;
        *) say "warning: untested system ${PRETTY_NAME:-unknown} (tested: Debian, Ubuntu, Raspberry Pi OS)" ;;
    esac
fi

python_ok() { python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }
old_python() {
    die "Python 3.11 or newer is needed; this system has $(python3 -V 2>&1). Use Debian 12" \
        "(bookworm), Raspberry Pi OS 12 or Ubuntu 24.04, or newer" 2
}
# Before apt: an old Python is not fixed by installing packages.
if command -v python3 >/dev/null && ! python_ok; then old_python; fi

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them" 2
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed (network? mirror?)"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || die "apt-get install ${missing[*]} failed"
fi

command -v python3 >/dev/null || die "python3 not found" 2
python_ok || old_python

# --- user and directories ----------------------------------------------------------------
if ! id -u "$USER_NAME" >/dev/null 2>&1; then
    useradd --system --user-group --home-dir "$STATE" --no-create-home \
        --shell /usr/sbin/nologin --comment "Sinyal agent" "$USER_NAME"
    say "created the system user $USER_NAME"
fi
install -d -m 0750 -o "$USER_NAME" -g "$USER_NAME" "$STATE"
install -d -m 0755 "$ETC" "$PREFIX"

# --- the agent in its venv ---------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV" || die "cannot create the venv in $VENV (python3-venv?)"
fi
requirement=$SOURCE
if [ -d "$SOURCE" ]; then
    [ -f "$SOURCE/pyproject.toml" ] || die "--source $SOURCE: no pyproject.toml there" 2
    requirement="$SOURCE[agent]"
elif [ -f "$SOURCE" ]; then
    requirement="$SOURCE[agent]"  # a wheel or sdist: pip takes extras on a file path too
elif [[ "$SOURCE" != *"["* ]]; then
    requirement="${SOURCE/sinyal/sinyal[agent]}"  # e.g. sinyal==0.1.0 -> sinyal[agent]==0.1.0
fi
say "installing the agent from $SOURCE into $VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check --upgrade "$requirement" \
    || die "pip install $requirement failed (network or PyPI mirror? PIP_INDEX_URL, PIP_FIND_LINKS)"
"$VENV/bin/sinyal-agent" --version >/dev/null || die "the installed sinyal-agent does not run"
ln -sfn "$VENV/bin/sinyal-agent" /usr/local/bin/sinyal-agent
if [ -d "$HERE/docs" ]; then
    rm -rf "$PREFIX/docs" && cp -r "$HERE/docs" "$PREFIX/docs"
fi

# --- configuration (never overwritten) ---------------------------------------------------
[ -f "$HERE/config/agent.field.yaml" ] || die "$HERE/config/agent.field.yaml missing: run from a checkout"
if [ ! -f "$ETC/agent.yaml" ]; then
    install -m 0644 "$HERE/config/agent.field.yaml" "$ETC/agent.yaml"
    say "wrote $ETC/agent.yaml (station and collector are filled in by sinyal-agent enroll)"
fi
install -m 0644 "$HERE/config/thresholds.yaml" "$ETC/thresholds.yaml.dist"
[ -f "$ETC/thresholds.yaml" ] || install -m 0644 "$HERE/config/thresholds.yaml" "$ETC/thresholds.yaml"
if [ ! -e "$ETC/token" ]; then
    install -m 0600 -o "$USER_NAME" -g "$USER_NAME" /dev/null "$ETC/token"
fi

# --- the service -------------------------------------------------------------------------
install -m 0644 "$HERE/deploy/systemd/sinyal-agent.service" "$UNIT"
if ! have_systemd; then
    say "systemd not found: the unit is in $UNIT; run the agent with: sinyal-agent run"
    exit 0
fi
systemd_running && systemctl daemon-reload
systemctl enable sinyal-agent.service >/dev/null 2>&1 || die "systemctl enable sinyal-agent failed"
if SINYAL_CONFIG=$ETC/agent.yaml "$VENV/bin/sinyal-agent" check-config --no-resolve >/dev/null 2>&1; then
    if [ "$START" = 1 ] && systemd_running; then
        systemctl restart sinyal-agent.service || die "systemctl restart sinyal-agent failed"
        say "sinyal-agent (re)started: journalctl -u sinyal-agent -f"
    else
        say "installed and enabled; the config is valid (start: systemctl start sinyal-agent)"
    fi
else
    say "installed and enabled. Next, with the code from the enrolment sheet:"
    say "  sudo sinyal-agent enroll --collector https://COLLECTOR CODE"
fi
