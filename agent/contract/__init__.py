"""Sinyal's public contract: what the agent and the collector agree on.

- `record`: the measurement table (MEASUREMENTS), the record and envelope, their encoder and
  decoders; the wire format both sides speak (docs/data-model.md).
- `thresholds`: the thresholds model and its one comparison (`Threshold.breaches`), read by
  the agent's live view, the collector's status engine and the Grafana builder.
- `configkit`: the configuration-reading toolkit (reader, converters, ID and label patterns)
  both configuration loaders use, so a config error reads the same on either side.
- `version`: the version and the user-agent strings.

Stdlib and PyYAML only. The collector imports nothing else from `agent` (import-linter checks
it, see pyproject.toml), so a collector install does not carry the agent's probes.
"""

from agent.contract.version import __version__

__all__ = ["__version__"]
