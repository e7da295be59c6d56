"""Sinyal collector: ingest API, station registry, InfluxDB sinks, station status.

It imports the record contract from agent.record (stdlib only), never the agent's
probes or their libraries.
"""

__version__ = "0.1.0"
