"""The state file: the holds, so that a restart re-adopts the routes the kernel still holds.

JSON, written atomically (a temporary file in the same directory, fsync, rename), periodically
(`Saver`) and on stop. Expiries are wall-clock seconds, so the file means the same after a
reboot or a long stop: an expired hold is simply dropped on load.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from resolver.net.holds import Hold

log = logging.getLogger(__name__)

FILE_NAME = "breakout-state.json"
VERSION = 1
SAVE_GAP = 1.0  # a new or removed hold is on disk within about this long


@dataclass(frozen=True, slots=True)
class SavedHold:
    address: str
    expires: float  # wall clock
    names: dict[str, float]  # name -> wall-clock expiry
    row: int


def state_path(state_dir: str) -> str:
    return os.path.join(state_dir, FILE_NAME)


def encode(holds: list[SavedHold], table: int, protocol: int, saved_at: float) -> bytes:
    doc: dict[str, Any] = {
        "version": VERSION,
        "saved_at": round(saved_at, 3),
        "table": table,
        "protocol": protocol,
        "holds": {
            h.address: {
                "expires": round(h.expires, 3),
                "names": {n: round(e, 3) for n, e in h.names.items()},
                "row": h.row,
            }
            for h in holds
        },
    }
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def snapshot(holds: Iterable[Hold], now: float, wall: float, table: int, protocol: int) -> bytes:
    """The running holds as a state file (monotonic `now` mapped onto wall-clock `wall`)."""
    saved = [
        SavedHold(
            h.address, wall + (h.expires - now),
            {n: wall + (e - now) for n, e in h.names.items() if e > now}, h.row,
        )
        for h in holds
        if h.expires > now
    ]  # fmt: skip
    return encode(saved, table, protocol, wall)


def write(state_dir: str, data: bytes) -> None:
    """Replace the state file atomically (tmp + fsync + rename)."""
    os.makedirs(state_dir, mode=0o750, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".breakout-state.", suffix=".tmp", dir=state_dir)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, state_path(state_dir))
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def load(state_dir: str) -> list[SavedHold]:
    """The saved holds; an absent file is empty, an unreadable one is logged and ignored."""
    path = state_path(state_dir)
    try:
        with open(path, "rb") as fh:
            doc = json.loads(fh.read())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as err:
        log.warning("ignoring unreadable state file %s: %s", path, err)
        return []
    out: list[SavedHold] = []
    try:
        if doc.get("version") != VERSION:
            log.warning("ignoring state file %s: version %r", path, doc.get("version"))
            return []
        for address, h in doc["holds"].items():
            names = {str(n): float(e) for n, e in h.get("names", {}).items()}
            out.append(SavedHold(str(address), float(h["expires"]), names, int(h.get("row", 0))))
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        log.warning("ignoring malformed state file %s: %s", path, err)
        return []
    return out


def remove(state_dir: str) -> bool:
    try:
        os.unlink(state_path(state_dir))
    except FileNotFoundError:
        return False
    return True


class Saver:
    """When and how the running breakout writes the state file (the caller keeps the books).

    A periodic write runs in a worker thread; `settle` waits for the one in flight, so that no
    older snapshot can land after a newer one. Holds added or removed are written within
    SAVE_GAP (a restart removes the owned routes it has no state for), holds only extended
    every `interval`; a big table that takes long to write is written less often.
    """

    def __init__(self, state_dir: str, interval: float) -> None:
        self.state_dir = state_dir
        self.interval = interval
        self._saved_at = time.monotonic()
        self._gap = SAVE_GAP
        self._writing: asyncio.Future[None] | None = None

    def due(self, changed: bool, extended: bool) -> bool:
        since = time.monotonic() - self._saved_at
        return (changed and since >= self._gap) or (extended and since >= self.interval)

    async def write(self, snapshot: Callable[[], bytes]) -> bool:
        """Write `snapshot()` off the event loop; False (logged) when it failed."""
        t0 = time.monotonic()
        data = snapshot()
        writing = asyncio.get_running_loop().run_in_executor(None, write, self.state_dir, data)
        self._writing = writing
        ok = True
        try:
            await asyncio.shield(writing)  # `settle` waits for it even when this is cancelled
        except OSError as err:
            ok = False
            log.error("cannot write the breakout state file in %s: %s", self.state_dir, err)
        self._saved_at = time.monotonic()
        # A big table costs a lot to write: then write it less often.
        self._gap = max(SAVE_GAP, 20 * (self._saved_at - t0))
        return ok

    def write_now(self, data: bytes) -> bool:
        """Write `data` on the spot (stop, flush); False (logged) when it failed."""
        try:
            write(self.state_dir, data)
        except OSError as err:
            log.error("cannot write the breakout state file in %s: %s", self.state_dir, err)
            return False
        self._saved_at = time.monotonic()
        return True

    async def settle(self) -> None:
        """Wait for the write in flight, if any (its failure was logged already)."""
        if self._writing is not None:
            with contextlib.suppress(OSError):
                await self._writing
