"""The daemon's log lines (resolver/logsetup.py): the lines a peer can repeat are capped per
source line, with what was left out said, and nothing else is touched."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from resolver import logsetup
from resolver.logsetup import FloodFilter

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def root() -> Iterator[logging.Logger]:
    """The root logger, given back as it was."""
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


def installed(root: logging.Logger, clock: Clock, burst: int = 3) -> io.StringIO:
    out = io.StringIO()
    handler = logsetup.start(out, burst=burst, interval=10.0)
    assert root.handlers == [handler]  # what was there before is replaced, not added to
    [flood] = handler.filters
    assert isinstance(flood, FloodFilter)
    flood.clock = clock
    root.setLevel(logging.INFO)
    return out


def per_packet(log: logging.Logger, i: int) -> None:
    log.warning("upstream %s: cannot be asked", i)  # one source line, many records


def test_a_repeated_line_is_capped_and_what_was_left_out_is_said(root: logging.Logger) -> None:
    clock = Clock()
    out = installed(root, clock, burst=3)
    log = logging.getLogger("resolver.dns.resolution")
    for i in range(20):
        per_packet(log, i)
    lines = out.getvalue().splitlines()
    assert lines[:2] == [
        "WARNING resolver.dns.resolution: upstream 0: cannot be asked",
        "WARNING resolver.dns.resolution: upstream 1: cannot be asked",
    ]
    assert lines[2] == (
        "WARNING resolver.dns.resolution: upstream 2: cannot be asked "
        "(more like it in the next 10 s are left out and counted)"
    )
    assert len(lines) == 3
    clock.now += 9.9
    per_packet(log, 20)
    assert len(out.getvalue().splitlines()) == 3  # still inside the interval
    clock.now += 0.2
    per_packet(log, 21)
    assert out.getvalue().splitlines()[3] == (
        "WARNING resolver.dns.resolution: upstream 21: cannot be asked "
        "(18 more like it were left out before this one)"
    )
    per_packet(log, 22)  # a new interval: its own burst, and nothing said of the last one
    assert out.getvalue().splitlines()[4] == (
        "WARNING resolver.dns.resolution: upstream 22: cannot be asked"
    )


def test_each_source_line_has_its_own_cap_and_tracebacks_are_kept(root: logging.Logger) -> None:
    clock = Clock()
    out = installed(root, clock, burst=2)
    log = logging.getLogger("resolver.dns.udp")
    for _ in range(10):
        per_packet(log, 1)
        try:
            raise RuntimeError("a bug in the handler")
        except RuntimeError:
            log.exception("UDP query from %s: the handler failed", "192.0.2.1")
    text = out.getvalue()
    assert text.count("cannot be asked") == 2
    assert text.count("the handler failed") == 2
    assert text.count('raise RuntimeError("a bug in the handler")') == 2  # each traceback
    assert text.count("RuntimeError: a bug in the handler") == 2


def test_other_loggers_pass_untouched(root: logging.Logger) -> None:
    clock = Clock()
    out = installed(root, clock, burst=2)
    for name in ("resolverd", "resolver.net.errors", "resolver.dnsx", "policy"):
        log = logging.getLogger(name)
        for i in range(10):
            per_packet(log, i)
    lines = out.getvalue().splitlines()
    assert len(lines) == 40
    assert all(line.endswith("cannot be asked") for line in lines)
