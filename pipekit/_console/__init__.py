"""Logging: a structlog logger per run, its renderers, the live view on a terminal."""
