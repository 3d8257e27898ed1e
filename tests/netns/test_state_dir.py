"""A state directory that is full or read-only, under the real daemon (netns, root).

The daemon's state directory is a small tmpfs of its own, mounted in a private mount namespace
made at its start (crashkit.Resolverd `tmpfs`): the host's mounts are never touched, and the
tmpfs goes with the daemon. The test fills it (a file written through /proc/PID/root) or
remounts it (nsenter). What must hold: answers are served and routes installed all along,
status says the journal is not writable and why, the log says it once, and once there is
room (or write access) again the journal is rewritten from the live holds, complete.
"""

from __future__ import annotations

import errno
import os
import re
import time
from collections.abc import Callable, Iterator

import pytest

from resolver.net import records
from tests.netns.crashkit import Resolverd, Upstream, anyip, ask, v4_name, v6_name, zone
from tests.netns.lab import Lab

pytestmark = pytest.mark.netns

V4 = [f"203.0.113.{64 + i}" for i in range(60)]
# Names with 40 AAAA records each: one answer, 40 new holds, a journal write of about 2 KB.
BULK = {
    f"bulk-{n}.s.crash.office365.com": [
        {"type": "AAAA", "value": f"2001:db8:365:{0xB0 + n:x}::{i + 1:x}", "ttl": 300}
        for i in range(40)
    ]
    for n in range(6)
}


@pytest.fixture(scope="module")
def env(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, str]]:
    tmp = str(tmp_path_factory.mktemp("statedir"))
    anyip(lab, ["203.0.113.64/26", "2001:db8:365:a::/64"])
    records = zone("s", V4, "2001:db8:365:a::", 60)
    records.update(BULK)
    Upstream(lab, tmp, records)
    yield lab, tmp


def wait_for(check: Callable[[], bool], timeout: float) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if check():
            return time.monotonic() - t0
        time.sleep(0.05)
    return None


def fill(path: str) -> None:
    with open(path, "wb", buffering=0) as fh:
        for size in (65536, 4096, 1):
            try:
                while True:
                    fh.write(b"\0" * size)
            except OSError as err:
                assert err.errno == errno.ENOSPC


def journal_of(d: Resolverd) -> records.Loaded:
    return records.load(d.state_path())


def served(lab: Lab, d: Resolverd, i: int) -> None:
    """A fresh name is answered, routed, and its first connection takes the breakout."""
    addresses = ask(lab, d.port, [v4_name("s", i)])
    assert len(addresses) == 1 and addresses <= d.hosts(4)
    assert lab.connect(next(iter(addresses))) == "breakout"


def journal_log(d: Resolverd, what: str) -> list[str]:
    return [ln for ln in d.log().splitlines() if re.search(what, ln)]


def test_a_full_state_directory(env: tuple[Lab, str]) -> None:
    lab, tmp = env
    d = Resolverd(lab, tmp, "full", table=368, priority=1003, protocol=248, hold=(120, 0),
                  tmpfs="size=128k")  # fmt: skip
    d.start()
    try:
        served(lab, d, 0)
        assert d.status()["journal"]["writable"] is True
        filler = d.state_path("filler")
        fill(filler)
        # New holds cannot be written now: 6 answers of 40 new holds each, about 2 KB of
        # records each, more than the last page of the file has room for after the first.
        ask(lab, d.port, list(BULK), "AAAA")  # truncated for the client; routed all the same
        s = d.status()["journal"]
        assert s["writable"] is False and s["errors"] >= 4, s
        assert "No space left on device" in s["last_error"]
        assert len(journal_log(d, "cannot write the hold journal")) == 1  # said once
        served(lab, d, 1)
        assert len(d.hosts(6)) >= 6 * 40  # every bulk address routed all the same
        assert journal_of(d).ok  # and no half record left behind in the file

        os.unlink(filler)  # room again: the next sweep rewrites the journal
        took = wait_for(lambda: d.status()["journal"]["writable"] is True, 5.0)
        assert took is not None and took < 3.0, took
        assert len(journal_log(d, "hold journal .* is writable again")) == 1
        saved = journal_of(d)
        held = set(d.routes())
        assert saved.ok and held <= set(saved.holds), held - set(saved.holds)
        assert d.status()["journal"]["last_error"] is None
        print(f"\nfull state dir: journal complete again {took:.2f} s after space came back")
    finally:
        d.stop()


def test_a_read_only_state_directory(env: tuple[Lab, str]) -> None:
    lab, tmp = env
    d = Resolverd(lab, tmp, "ro", table=369, priority=1004, protocol=249, hold=(120, 0),
                  tmpfs="ro,size=128k")  # fmt: skip
    d.start()
    try:
        s = d.status()["journal"]
        assert s["writable"] is False and "Read-only file system" in s["last_error"]
        served(lab, d, 10)
        got = ask(lab, d.port, [v6_name("s", 10)], "AAAA")
        assert len(got) == 1 and got <= d.hosts(6), got
        assert len(journal_log(d, "cannot write the hold journal")) == 1
        d.remount_state("rw")
        took = wait_for(lambda: d.status()["journal"]["writable"] is True, 5.0)
        assert took is not None and took < 3.0, took
        saved = journal_of(d)
        assert saved.ok and set(d.routes()) <= set(saved.holds)
    finally:
        d.stop()
