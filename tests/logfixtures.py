"""Fixtures for the daemon's log lines (resolver/logsetup.py), registered in tests/conftest.py:
`root_logger` gives the root logger back as it was after the test; `daemon_log` puts the
daemon's handler (`logsetup.start`) on a buffer, at INFO, and is that buffer."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from resolver import logsetup


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger; its handlers and level are given back after the test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield root
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in handlers:
            root.addHandler(h)
        root.setLevel(level)


@pytest.fixture
def daemon_log(root_logger: logging.Logger) -> io.StringIO:
    """What the daemon's log handler writes, at INFO."""
    out = io.StringIO()
    logsetup.start(out)
    root_logger.setLevel(logging.INFO)
    return out
