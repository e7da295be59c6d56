"""Sinyal agent: measures a polling station's links and keeps every result."""

__version__ = "0.1.0"
