"""The state file: the holds, so that a restart re-adopts the routes the kernel still holds.

JSON, written atomically (a temporary file in the same directory, fsync, rename), periodically
and on stop. Expiries are wall-clock seconds, so the file means the same after a reboot or a
long stop: an expired hold is simply dropped on load.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from resolver.net.holds import Hold

log = logging.getLogger(__name__)

FILE_NAME = "breakout-state.json"
VERSION = 1


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
