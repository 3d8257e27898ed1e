"""The hold journal: which routes are resolverd's, and until when, on disk before the reply.

A route that is live in the kernel must survive the death of resolverd at any instant (SIGKILL,
the OOM killer): a restart that does not know a route removes it as stale, and with it the
Microsoft 365 connections using it. So every new hold is appended to the journal, with one
write(2) per batch, before its route is installed and before its reply leaves. What a write
handed to the kernel survives the process (not a power cut: the routes go with it).

Extensions (every answer, cache hits included) are not written one by one: a hold is recorded
`AHEAD` seconds beyond its expiry, and recorded again only when its expiry comes within
`AHEAD / 2` of what the journal says. The journal therefore never says less than the truth, and
at most `AHEAD` seconds more: after a crash a route may live up to that much longer than its
hold, never shorter. Removals and those re-recordings are written by the sweep, within a
second; a hold the file would otherwise no longer cover within `SYNC_MARGIN` (an answer after a
long pause, a longer TTL) is recorded at once, before the reply. The file is rewritten from the
live holds when it has grown well past them (`compact`): a temporary file is written off the
loop, then, on the loop, the lines written meanwhile are added and it replaces the journal (no
line can fall between the two). Neither a compaction nor the install of a restored hold
writes more than the file says of it: restarts do not push expiries further out.

Format, one record per line (`address` as text, `expires` wall-clock whole seconds):

    resolverd-holds 1 TABLE PROTOCOL
    + ADDRESS EXPIRES ROW NAME
    - ADDRESS
    F                               (flush: every hold is gone)

Reading tolerates a last line cut short (a write interrupted by the kill); any other line that
does not parse makes the journal untrustworthy (`Loaded.ok` false): the caller then keeps the
kernel's routes rather than removing what it cannot account for. Appending drops such a tail
first, and a short write (a full disk) is undone: no half record is left in the middle. A full
or read-only state directory stops none of this from running: the failure is counted, logged
once, and shown in status; records were lost, so the journal counts as writable (and resolverd
as crash-safe) again only once it has been rewritten from the live holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import tempfile
from collections.abc import Callable, Iterable
from typing import Final

from resolver.net.holds import Hold
from resolver.net.records import (
    LEGACY_FILE,
    VERSION,
    Loaded,
    Snapshot,
    format_hold,
    load,
    path_of,
)

log = logging.getLogger(__name__)

AHEAD: Final = 30.0  # seconds a recorded expiry runs ahead of the hold's own
CLOCK_SLACK: Final = 60.0  # how far the wall clock may have gone back since a write
SYNC_MARGIN: Final = 5.0  # a re-recording due closer than this to the file's expiry: at once
COMPACT_FACTOR: Final = 4  # rewrite past this many lines per live hold (and more than:)
COMPACT_MIN: Final = 20_000
COMPACT_PAUSE: Final = 10.0  # seconds at least from one compaction to the next
COMPACT_RETRY: Final = 60.0  # after a failed one: at once when the disk has room, else this
RECORD_BYTES: Final = 96  # room a record needs, for that check
CHUNK: Final = 1024  # holds formatted and written at a time by a compaction


class Journal:
    """The journal of one running breakout (see the module docstring)."""

    def __init__(
        self, state_dir: str, table: int, protocol: int, clock: Callable[[], float],
        wall: Callable[[], float], *, prepared: Callable[[], None] | None = None,
    ) -> None:  # fmt: skip
        """`prepared` runs in the worker once a compaction's file is written and synced,
        before the loop swaps it in: a test stops there to see what a kill would find."""
        self.state_dir = state_dir
        self._prepared = prepared
        self.path = path_of(state_dir)
        self.header = f"resolverd-holds {VERSION} {table} {protocol}\n".encode()
        self._clock, self._wall = clock, wall
        self._fd = -1
        self._lines = 0
        self._buffer: list[bytes] = []  # removals, for the sweep to write
        self._due: dict[bytes, Hold] = {}  # holds to record again, by the sweep
        self._since: list[bytes] | None = None  # written while a compaction is in flight
        self.errors = 0
        self.last_error: str | None = None
        self._dirty = False  # records were lost: the file must be rewritten to be complete
        self.problems: list[str] = []  # what the last `load` found wrong
        self._next_compact = 0.0  # monotonic: no compaction is due before
        self._compact_failed = False  # the last one failed: retried early only if there is room

    def load(self, latest: float) -> Loaded:
        """What the file says is held (an expiry after `latest` is a line we did not write);
        its problems are kept for status."""
        loaded = load(self.state_dir, latest)
        self.problems = loaded.problems
        return loaded

    # -- writing ----------------------------------------------------------------------------

    def note(self, holds: Iterable[Hold]) -> None:
        """Record new or extended holds now, before their routes go in (one write); not a
        restored one (noted == expires: what the file says, AHEAD included)."""
        lines = [self._record(h) for h in holds if h.noted != h.expires]
        if lines:
            self._write(b"".join(lines), len(lines))

    def extended(self, h: Hold) -> None:
        """Called for every answer that extended the hold (`noted` is what the file says): due
        again, it is recorded by the next sweep; the file nearly overtaken, at once."""
        if h.expires > h.noted - SYNC_MARGIN:
            self._due.pop(h.packed, None)
            data = self._record(h)
            self._write(data, data.count(b"\n"))
        elif h.expires > h.noted - AHEAD / 2:
            self._due[h.packed] = h

    def removed(self, holds: Iterable[Hold]) -> None:
        for h in holds:
            if self._due.get(h.packed) is h:
                del self._due[h.packed]
            self._buffer.append(f"- {h.address}\n".encode())

    def flushed(self) -> None:
        self._buffer.clear()
        self._due.clear()
        self._write(b"F\n", 1)

    def write_buffered(self) -> None:
        """Write the removals, then the holds due again (recorded as they are now)."""
        lines, self._buffer = self._buffer, []
        if self._due:
            lines += [self._record(h) for h in self._due.values()]
            self._due = {}
        if lines:
            data = b"".join(lines)
            self._write(data, data.count(b"\n"))

    def _record(self, h: Hold) -> bytes:
        h.noted = h.expires + AHEAD
        return format_hold(h.packed, h.names, h.expires, h.row, self._wall() - self._clock(), AHEAD)

    def _write(self, data: bytes, lines: int) -> None:
        if self._since is not None:
            self._since.append(data)
        try:
            if self._fd < 0:
                self._open()
            _append(self._fd, data)
        except OSError as err:
            self._failed(err)
            return
        self._lines += lines

    def _open(self) -> None:
        os.makedirs(self.state_dir, mode=0o750, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                # A record cut short by a kill: drop it, or the next one would be glued to it.
                tail = os.pread(fd, min(size, 4096), max(0, size - 4096))
                size = size - len(tail) + tail.rfind(b"\n") + 1
                os.ftruncate(fd, size)
            if size == 0:
                _append(fd, self.header)
        except OSError:
            os.close(fd)
            raise
        self._fd = fd

    def _failed(self, err: OSError) -> None:
        self.errors += 1
        self._dirty = True
        message = f"{self.path}: {err.strerror or err}"
        if self.last_error is None:
            log.error(
                "cannot write the hold journal (%s): routes are still installed and answers "
                "still served, but a crash now would forget the newest holds", message,
            )  # fmt: skip
        self.last_error = message

    def _compaction_failed(self, err: OSError) -> bool:
        self._failed(err)
        self._compact_failed = True
        self._next_compact = self._clock() + COMPACT_RETRY
        return False

    def _complete(self) -> None:
        """The file holds every live hold again (a compaction succeeded)."""
        self._dirty = self._compact_failed = False
        if self.last_error is not None:
            log.warning("hold journal %s is writable again: rewritten from the live holds",
                        self.path)  # fmt: skip
            self.last_error = None

    def close(self) -> None:
        self.write_buffered()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # -- compaction ---------------------------------------------------------------------------

    def due(self, records: int) -> bool:
        """Whether the file should be rewritten: records were lost (at once; after a rewrite
        that failed, when the directory has room again, or COMPACT_RETRY later), or it holds
        more than COMPACT_FACTOR times the `records` a rewrite would write (one per name of
        each live hold), never sooner than COMPACT_PAUSE after the last rewrite. A rewrite
        leaves the file at `records` lines, well below that threshold: it cannot loop."""
        if self._since is not None:
            return False
        if self._dirty:  # records were lost: at once, and again when there is room for them
            failed = self._compact_failed
            return not failed or self._clock() >= self._next_compact or self._room_for(records)
        if self._clock() < self._next_compact:
            return False
        return self._lines > max(COMPACT_MIN, COMPACT_FACTOR * records)

    def _room_for(self, records: int) -> bool:
        """Whether the state directory takes writes again and has room for `records`."""
        try:
            st = os.statvfs(self.state_dir)
        except OSError:
            return False
        return not st.f_flag & os.ST_RDONLY and st.f_bavail * st.f_frsize > records * RECORD_BYTES

    async def compact(self, holds: Iterable[Hold]) -> bool:
        """Rewrite the journal from `holds` (see the module docstring); False when it failed.
        Each hold keeps the expiry the journal has for it (`noted`), unless that is short."""
        if self._since is not None:
            return False
        self._next_compact = self._clock() + COMPACT_PAUSE
        self.write_buffered()
        # Columns, not a tuple per hold, written a chunk at a time: a compaction of 20,000
        # holds leaves no peak behind in the RSS (measured in the soak).
        snapshot = Snapshot(self._wall() - self._clock())
        packed, names, expires, noted, rows = snapshot.columns
        for h in holds:
            if h.noted < h.expires:  # not recorded yet (or short of it): ahead, as `_record`
                h.noted = h.expires + AHEAD
            packed.append(h.packed)
            names.append(h.names if isinstance(h.names, str) else dict(h.names))
            expires.append(h.expires)
            noted.append(h.noted)
            rows.append(h.row)
        self._since = []
        loop = asyncio.get_running_loop()
        try:
            tmp, count = await loop.run_in_executor(None, self._prepare, snapshot)
        except OSError as err:
            self._since = None
            return self._compaction_failed(err)
        since, self._since = self._since, None
        try:
            fd = self._adopt(tmp, since)
        except OSError as err:
            return self._compaction_failed(err)
        old, self._fd = self._fd, fd
        if old >= 0:
            os.close(old)
        self._lines = count + sum(data.count(b"\n") for data in since)
        self._complete()
        return True

    def _prepare(self, snapshot: Snapshot) -> tuple[str, int]:
        """Write the header and the holds of `snapshot` to a temporary file, synced; its path
        and the number of records. Runs in a worker thread."""
        os.makedirs(self.state_dir, mode=0o750, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".holds.", suffix=".tmp", dir=self.state_dir)
        count = 0
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(self.header)
                for chunk in snapshot.records(CHUNK):
                    fh.write(chunk)
                    count += chunk.count(b"\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o640)
            if self._prepared is not None:
                self._prepared()
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return tmp, count

    def _adopt(self, tmp: str, since: list[bytes]) -> int:
        """On the loop: add the lines written during the compaction to `tmp`, then rename it
        over the journal; no write can fall between the two. Returns its descriptor."""
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
            try:
                for data in since:
                    _append(fd, data)
                os.replace(tmp, self.path)
            except BaseException:
                os.close(fd)
                raise
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.state_dir, LEGACY_FILE))
        return fd

    def status(self) -> dict[str, object]:
        return {"file": self.path, "writable": self.last_error is None,
                "errors": self.errors, "last_error": self.last_error,
                "problems": self.problems}  # fmt: skip


def _append(fd: int, data: bytes) -> None:
    """One write(2) of `data` at the end of the file. A short write (the disk filled up in the
    middle of it) is undone and raised as ENOSPC: no half record is left to be appended to."""
    done = os.write(fd, data)
    if done < len(data):
        os.ftruncate(fd, os.fstat(fd).st_size - done)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
