"""Sinyal's version: stated here once; pyproject.toml reads it (dynamic version), both CLIs,
the collector's API and every user-agent string print it."""

__version__ = "0.1.0"

AGENT_USER_AGENT = f"sinyal-agent/{__version__}"
COLLECTOR_USER_AGENT = f"sinyal-collector/{__version__}"
