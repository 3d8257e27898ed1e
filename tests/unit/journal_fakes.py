"""Helpers for the hold journal's unit tests (test_journal.py, test_journal_statedir.py)."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from resolver.net.holds import Hold
from resolver.net.journal import Journal
from resolver.net.records import Saved, load
from tests.unit.breakout_fakes import WALL, Clock


def packed(address: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET, address)


def hold(address: str, name: str, expires: float, row: int = 1) -> Hold:
    return Hold(packed(address), name, expires, row)


def new_journal(
    state_dir: str, clock: Clock, prepared: Callable[[], None] | None = None
) -> Journal:
    return Journal(state_dir, 365, 245, clock, lambda: clock.now + WALL, prepared=prepared)


def read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def on_disk(state_dir: str) -> dict[str, Saved]:
    loaded = load(state_dir)
    assert loaded.ok, loaded.problems
    return loaded.holds


class Records(logging.Handler):
    """The journal's log records, for counting."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines(self, level: int) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno == level]


@contextmanager
def journal_log() -> Iterator[Records]:
    handler = Records()
    logger = logging.getLogger("resolver.net.journal")
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
