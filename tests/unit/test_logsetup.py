"""The daemon's log lines (resolver/logsetup.py): the lines a peer can repeat (marked REPEATS)
are capped per call site (logger and message template), with what was left out said, and
nothing else is touched."""

from __future__ import annotations

import io
import logging
import sys
import threading

import pytest

from resolver import logsetup
from resolver.logsetup import REPEATS, FloodFilter

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def installed(root_logger: logging.Logger, clock: Clock, burst: int = 3) -> io.StringIO:
    out = io.StringIO()
    handler = logsetup.start(out, burst=burst, interval=10.0)
    assert root_logger.handlers == [handler]  # what was there before is replaced, not added to
    [flood] = handler.filters
    assert isinstance(flood, FloodFilter)
    flood.clock = clock
    root_logger.setLevel(logging.INFO)
    return out


def per_packet(log: logging.Logger, i: int) -> None:
    log.warning("upstream %s: cannot be asked", i, extra=REPEATS)  # one call site


def test_a_repeated_line_is_capped_and_what_was_left_out_is_said(
    root_logger: logging.Logger,
) -> None:
    clock = Clock()
    out = installed(root_logger, clock, burst=3)
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


def test_each_call_site_has_its_own_cap_and_tracebacks_are_kept(
    root_logger: logging.Logger,
) -> None:
    clock = Clock()
    out = installed(root_logger, clock, burst=2)
    log = logging.getLogger("resolver.dns.udp")
    for _ in range(10):
        per_packet(log, 1)
        try:
            raise RuntimeError("a bug in the handler")
        except RuntimeError:
            log.exception("UDP query from %s: the handler failed", "192.0.2.1", extra=REPEATS)
    text = out.getvalue()
    assert text.count("cannot be asked") == 2
    assert text.count("the handler failed") == 2
    assert text.count('raise RuntimeError("a bug in the handler")') == 2  # each traceback
    assert text.count("RuntimeError: a bug in the handler") == 2


def test_a_call_site_is_its_template_not_its_source_line(root_logger: logging.Logger) -> None:
    """Compiled (mypyc) code has no frames: logging gives every record of a compiled module
    the same caller. Two templates from one source line are two call sites; one template
    from two loggers is two as well."""
    clock = Clock()
    out = installed(root_logger, clock, burst=2)
    for i in range(6):
        for name in ("resolver.dns.misses", "resolver.dns.udp"):
            template = ("hook failed for %s", "cannot query %s")[i % 2]
            logging.getLogger(name).warning(template, i, extra=REPEATS)
    lines = out.getvalue().splitlines()
    assert len(lines) == 8  # 2 loggers x 2 templates x burst 2
    assert sum("hook failed" in line for line in lines) == 4


def test_lines_not_marked_pass_untouched(root_logger: logging.Logger) -> None:
    """State changes and `log_level: debug`'s line per query are not a peer's to repeat."""
    clock = Clock()
    out = installed(root_logger, clock, burst=2)
    root_logger.setLevel(logging.DEBUG)
    for name in ("resolver.dns.handler", "resolver.dns.upstream", "resolverd", "policy"):
        log = logging.getLogger(name)
        for i in range(10):
            log.warning("upstream %s failed 3 times in a row", i)
            log.debug("query %s", i)
    lines = out.getvalue().splitlines()
    assert len(lines) == 80
    assert not any("left out" in line for line in lines)


def test_threads_logging_at_once_get_the_burst_and_no_more(root_logger: logging.Logger) -> None:
    """The filter runs before the handler takes its lock: without one of its own, two threads
    could both pass the last place of a burst (seen here without it: 10 lines for a burst of
    5, in about one run of this test in three)."""
    log = logging.getLogger("resolver.dns.resolution")
    most = 0
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # a switch between any two bytecodes, as often as it can
    try:
        for _ in range(200):
            out = io.StringIO()
            logsetup.start(out, burst=5, interval=1000.0)  # the real clock
            start = threading.Barrier(8)
            threads = [threading.Thread(target=_flood, args=(start, log)) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            most = max(most, len(out.getvalue().splitlines()))
    finally:
        sys.setswitchinterval(interval)
    assert most == 5


def _flood(start: threading.Barrier, log: logging.Logger) -> None:
    start.wait()
    for i in range(50):
        per_packet(log, i)
