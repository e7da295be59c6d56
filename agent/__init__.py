"""Sinyal agent: measures a polling station's links and keeps every result."""

from agent.contract.version import __version__

__all__ = ["__version__"]
