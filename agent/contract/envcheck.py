"""Environment variables with the SINYAL_ prefix: a typo is refused, never ignored.

Both programs read ``SINYAL_`` + a dotted config path (``SINYAL_DATA_DIR``,
``SINYAL_COLLECTOR__TOKEN``); a variable of that prefix that neither program nor the deploy
scripts know is an error that names the closest valid name. A variable that belongs to the
other program (the collector's ``SINYAL_SINK__URL`` in the agent's environment) is left
alone, so one shell can hold both. Stdlib only: this is part of the config toolkit.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping

PREFIX = "SINYAL_"

# The top-level config keys of each program, defined here once; agent.config and
# collector.config take their key tables from these.
AGENT_KEYS = frozenset(
    {
        "station",
        "collector",
        "uplinks",
        "probes",
        "schedule",
        "spool",
        "clock",
        "data_dir",
        "thresholds_file",
        "budget",
        "quiet_windows",
    }
)
COLLECTOR_KEYS = frozenset(
    {
        "listen",
        "sink",
        "data_dir",
        "thresholds_file",
        "status",
        "limits",
        "registry",
        "reports",
        "speedtest",
        "admin",
        "shard",
    }
)

# Variables that are not config overrides: the config file paths, and the settings of the
# deploy scripts, the compose stack and Grafana provisioning (deploy/local/run.sh,
# deploy/compose/, grafana/datasources/), and of the test harness. A new SINYAL_ variable
# anywhere in the project is added here, or both programs refuse to start where it is set.
OTHER_NAMES = frozenset(
    {
        "SINYAL_CONFIG",
        "SINYAL_ADMIN_TOKEN",
        "SINYAL_COLLECTOR_CONFIG",
        "SINYAL_RUN_DIR",
        "SINYAL_COLLECTOR_PORT",
        "SINYAL_STATIONS_CSV",
        "SINYAL_ALERT_WEBHOOK_URL",
        "SINYAL_ALERT_EMAILS",
        "SINYAL_FIELD_EMAILS",
        "SINYAL_TEST_CACHE",
        "SINYAL_INFLUX_URL",
        "SINYAL_INFLUX_PORT",
        "SINYAL_INFLUX_DATABASE",
        "SINYAL_INFLUX_TOKEN",
        "SINYAL_INFLUX_USER",
        "SINYAL_INFLUX_PASSWORD",
    }
)


def _keys(program: str) -> frozenset[str]:
    return AGENT_KEYS if program == "agent" else COLLECTOR_KEYS


def valid_names(program: str) -> list[str]:
    """The names a person may mean: each top-level override of `program`, and the others."""
    own = [f"{PREFIX}{k.upper()}" for k in sorted(_keys(program))]
    other = [f"{PREFIX}{k.upper()}" for k in sorted((AGENT_KEYS | COLLECTOR_KEYS) - _keys(program))]
    return own + other + sorted(OTHER_NAMES)


def unknown_env_errors(file: str, environ: Mapping[str, str], program: str) -> list[str]:
    """One error line per SINYAL_ variable that no program knows, closest valid name first."""
    known = AGENT_KEYS | COLLECTOR_KEYS
    errors = []
    for var in sorted(environ):
        if not var.startswith(PREFIX) or var in OTHER_NAMES:
            continue
        top = var[len(PREFIX) :].split("__")[0].lower()
        if top in known:
            continue  # deeper typos are unknown keys of that section, reported by the reader
        close = difflib.get_close_matches(var.split("__")[0], valid_names(program), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        errors.append(
            f"{file} (${var}): {var}: got an unknown environment variable, expected "
            f"{PREFIX} + a config key such as {PREFIX}DATA_DIR or {PREFIX}STATION__ID"
            f"{hint} (unset it: a typo never falls back silently)"
        )
    return errors
