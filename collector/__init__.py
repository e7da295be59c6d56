"""Sinyal collector: ingest API, station registry, InfluxDB sinks, station status, reports.

Not built yet. It imports the record contract from agent.record (stdlib only).
"""
