"""The hold journal in a state directory that is full or read-only: a real tmpfs, mounted in a
forked child inside a mount namespace of its own (`private_mounts`): the host's mounts are
never touched, and the tmpfs goes away with the child whatever happens. These tests need root
(mount) and skip without it.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import traceback
from collections.abc import Callable
from typing import Any

import pytest

from tests.unit.breakout_fakes import Clock
from tests.unit.journal_fakes import hold, journal_log, new_journal, on_disk

pytestmark = pytest.mark.unit

CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_REMOUNT, MS_REC, MS_PRIVATE = 1, 32, 16384, 1 << 18


def _libc_call(name: str, *args: Any) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, name)(*args) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{name}: {os.strerror(code)}")


def mount_tmpfs(target: str, size: str, read_only: bool = False) -> None:
    flags = MS_RDONLY if read_only else 0
    _libc_call("mount", b"tmpfs", target.encode(), b"tmpfs", flags, f"size={size}".encode())


def remount(target: str, read_only: bool) -> None:
    flags = MS_REMOUNT | (MS_RDONLY if read_only else 0)
    _libc_call("mount", b"tmpfs", target.encode(), None, flags, None)


def private_mounts(body: Callable[[], None]) -> None:
    """Run `body` in a forked child in a mount namespace of its own; fail with its traceback."""
    if os.geteuid() != 0:
        pytest.skip("mounts a tmpfs (in a private mount namespace): needs root")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        os.close(read)
        code = 1
        try:
            _libc_call("unshare", CLONE_NEWNS)
            _libc_call("mount", b"none", b"/", None, MS_REC | MS_PRIVATE, None)
            body()
            code = 0
        except BaseException:  # noqa: BLE001 - reported to the parent, which fails on it
            os.write(write, traceback.format_exc().encode())
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as fh:
        report = fh.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, report


def _fill(directory: str) -> str:
    """Fill the filesystem of `directory` to the last byte; the filler's path."""
    filler = os.path.join(directory, "filler")
    with open(filler, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError as err:
            assert err.errno == errno.ENOSPC
        try:
            while True:
                fh.write(b"\0")
        except OSError as err:
            assert err.errno == errno.ENOSPC
    return filler


def test_a_full_state_directory_is_reported_once_and_recovered(tmp_path: Any) -> None:
    state = str(tmp_path / "state")
    os.mkdir(state)

    def body() -> None:
        mount_tmpfs(state, "64k")
        with journal_log() as logs:
            clock = Clock(1000.0)
            j = new_journal(state, clock)
            first = [hold(f"203.0.113.{i}", "x.office.com", 1330.0) for i in range(1, 11)]
            j.note(first)
            filler = _fill(state)
            # A batch bigger than what is left of the file's last page: a short write.
            lost = [hold(f"2001:db8:365::{i:x}", "long-name-for-a-bigger-record.office.com",
                         1330.0) for i in range(1, 101)]  # fmt: skip
            j.note(lost)
            status = j.status()
            assert status["writable"] is False and status["errors"] == 1
            assert "No space left on device" in str(status["last_error"])
            # The part that fit was taken back: no half record is left to be appended to.
            assert set(on_disk(state)) == {h.address for h in first}
            j.note(lost)  # more than a page each: they cannot fit
            j.note(lost)
            assert j.status()["errors"] == 3
            assert len(logs.lines(logging.ERROR)) == 1  # logged once, not per write
            assert set(on_disk(state)) == {h.address for h in first}
            assert j.due(0)  # to be rewritten as soon as it can be
            assert not asyncio.run(j.compact(first + lost))  # still full: fails, quietly
            assert len(logs.lines(logging.ERROR)) == 1

            os.unlink(filler)  # space is back
            j.note([hold("203.0.113.201", "z.office.com", 1330.0)])
            assert j.status()["writable"] is False  # appends work, but records are missing
            live = [*first, *lost, hold("203.0.113.201", "z.office.com", 1330.0)]
            assert asyncio.run(j.compact(live))
            assert j.status()["writable"] is True and j.status()["last_error"] is None
            assert not j.due(len(live))
            assert set(on_disk(state)) == {h.address for h in live}
            assert len(logs.lines(logging.WARNING)) == 1  # "writable again", once
            j.close()

    private_mounts(body)


def test_a_read_only_state_directory_is_reported_and_recovered(tmp_path: Any) -> None:
    state = str(tmp_path / "state")
    os.mkdir(state)

    def body() -> None:
        mount_tmpfs(state, "64k", read_only=True)
        with journal_log() as logs:
            clock = Clock(1000.0)
            j = new_journal(state, clock)
            h = hold("203.0.113.1", "x.office.com", 1330.0)
            j.note([h])
            assert not asyncio.run(j.compact([h]))
            assert j.status()["writable"] is False and j.status()["errors"] == 2
            assert "Read-only file system" in str(j.status()["last_error"])
            assert len(logs.lines(logging.ERROR)) == 1
            remount(state, read_only=False)
            assert j.due(1) and asyncio.run(j.compact([h]))
            assert j.status()["writable"] is True
            assert set(on_disk(state)) == {"203.0.113.1"}
            j.close()

    private_mounts(body)
