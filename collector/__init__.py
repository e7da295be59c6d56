"""Sinyal collector: ingest API, station registry, InfluxDB sinks, station status.

It imports only the public contract from `agent.contract` (records, thresholds, the config
toolkit, the version; stdlib and PyYAML), never the agent's probes or their libraries.
"""
