"""The one exception the breakout raises to its callers."""

from __future__ import annotations


class BreakoutError(Exception):
    """Breakout cannot start or apply a configuration; the message says what to do."""
