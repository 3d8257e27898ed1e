"""The hold journal's records (the format is in `journal`'s docstring): written from holds,
and read back at start: which holds the file says were live, and whether it can be trusted.
The legacy state file of resolverd 0.1 is read when there is no journal.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

log = logging.getLogger("resolver.net.journal")

FILE_NAME: Final = "holds.journal"
LEGACY_FILE: Final = "breakout-state.json"  # resolverd 0.1's state file, read once if no journal
VERSION: Final = 1


@dataclass
class Saved:
    """A hold as the journal knows it: expiry (wall clock), row, names -> expiry."""

    expires: float
    row: int
    names: dict[str, float] = field(default_factory=dict)


@dataclass
class Loaded:
    holds: dict[str, Saved]
    ok: bool  # False: the file is damaged or unreadable; keep what the kernel holds
    problems: list[str]
    found: bool  # a journal (or a legacy state file) was there


def path_of(state_dir: str) -> str:
    return os.path.join(state_dir, FILE_NAME)


def load(state_dir: str, latest: float = math.inf) -> Loaded:
    """Replay the journal (or import the legacy state file when there is no journal); an
    expiry after `latest` (wall clock) is a line this resolverd did not write."""
    path = path_of(state_dir)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return _load_legacy(state_dir, latest)
    except OSError as err:
        return Loaded({}, False, [f"{path}: cannot read: {err.strerror}"], True)
    return parse(data, path, latest)


def parse(data: bytes, path: str = FILE_NAME, latest: float = math.inf) -> Loaded:
    """The holds the journal `data` says are live. Every line must be one the writer could
    have written (see `_apply`); any other makes the journal untrustworthy (`ok` false) and
    is skipped: its address is not restored."""
    holds: dict[str, Saved] = {}
    problems: list[str] = []
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    elif lines:
        log.info("%s: last line cut short (written as resolverd was killed); ignored", path)
        lines.pop()
    if not lines or not lines[0].startswith(b"resolverd-holds 1 "):
        if lines:
            problems.append(f"{path}:1: not a resolverd hold journal")
        return Loaded({}, not problems, problems, True)
    for number, raw in enumerate(lines[1:], start=2):
        if raw.isascii():
            reason = _refused(holds, raw.decode("ascii").split(" "), latest)
        else:
            reason = "not ASCII"
        if reason is not None:
            problems.append(f"{path}:{number}: cannot read {raw[:80]!r} ({reason})")
    return Loaded(holds, not problems, problems, True)


# The names the writer writes: `wire.read_name`'s presentation form (letters, digits, hyphen,
# underscore, \DDD escapes; lower case) or the marker of a route kept unaccounted.
_NAME: Final = re.compile(r"(?:[a-z0-9_-]|\\[0-9]{3})+(?:\.(?:[a-z0-9_-]|\\[0-9]{3})+)*")
MAX_NAME_TEXT: Final = 4 * 255  # a 255-octet name with every byte escaped
UNACCOUNTED: Final = "(kept: the hold journal was unreadable)"


def name_ok(name: str) -> bool:
    """Whether `name` is in the one form resolverd keeps names in (`wire.read_name`'s)."""
    return len(name) <= MAX_NAME_TEXT and _NAME.fullmatch(name) is not None


def _refused(holds: dict[str, Saved], parts: list[str], latest: float) -> str | None:
    """Apply one record (`_apply`): None, or why it was refused (it is then skipped)."""
    try:
        _apply(holds, parts, latest)
    except (ValueError, OSError) as err:  # OSError: an address inet_pton refuses
        return "not an address" if isinstance(err, OSError) else str(err)
    return None


def _apply(holds: dict[str, Saved], parts: list[str], latest: float) -> None:
    """One record, checked as strictly as the writer writes it; ValueError says what is
    wrong (OSError: an address inet_pton refuses)."""
    op = parts[0]
    if op == "+" and len(parts) >= 5:
        address, expires_text, row_text = parts[1], parts[2], parts[3]
        name = " ".join(parts[4:])
        _check_address(address)
        if not (expires_text.isdigit() and expires_text.isascii() and len(expires_text) <= 12):
            raise ValueError("expiry is not a whole number of seconds")
        expires = float(int(expires_text))
        if expires > latest:
            raise ValueError("expiry further away than the longest hold the config allows")
        if not (row_text.isdigit() and row_text.isascii() and len(row_text) <= 10):
            raise ValueError("row is not a number")
        if name != UNACCOUNTED and not name_ok(name):
            raise ValueError("not a name resolverd writes")
        saved = holds.get(address)
        if saved is None:
            saved = holds[address] = Saved(expires, int(row_text))
        saved.expires = max(saved.expires, expires)
        saved.row = int(row_text)
        saved.names[name] = max(saved.names.get(name, 0.0), expires)
    elif op == "-" and len(parts) == 2:
        _check_address(parts[1])
        holds.pop(parts[1], None)
    elif op == "F" and len(parts) == 1:
        holds.clear()
    else:
        raise ValueError("unknown record")


def _check_address(text: str) -> None:
    """The address as the writer writes it: inet_ntop's text, nothing else."""
    family = socket.AF_INET6 if ":" in text else socket.AF_INET
    if socket.inet_ntop(family, socket.inet_pton(family, text)) != text:
        raise ValueError("address not in its canonical form")


def remove(state_dir: str) -> bool:
    """Delete the journal (cleanup); True when there was one."""
    found = False
    for name in (FILE_NAME, LEGACY_FILE):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(state_dir, name))
            found = True
    return found


def _load_legacy(state_dir: str, latest: float) -> Loaded:
    """resolverd 0.1's state file, `{"holds": {ADDRESS: {"row": ROW, "names": {NAME: EXPIRES}}}}`,
    read as the journal records it stands for, one per name: each is checked by `_apply` as a
    journal line is, and one refused is skipped and makes the file untrustworthy. A hold's own
    `expires` is not read: 0.1 wrote the latest of its names' there."""
    path = os.path.join(state_dir, LEGACY_FILE)
    try:
        with open(path, "rb") as fh:
            doc = json.loads(fh.read())
    except FileNotFoundError:
        return Loaded({}, True, [], False)
    # ValueError: not UTF-8, not JSON, an integer of too many digits; RecursionError: nested
    # too deeply.
    except (OSError, ValueError, RecursionError) as err:
        return Loaded({}, False, [f"{path}: unreadable: {err}"], True)
    saved = doc.get("holds") if isinstance(doc, dict) else None
    if not isinstance(saved, dict):
        return Loaded({}, False, [f'{path}: unreadable: no "holds" object'], True)
    holds: dict[str, Saved] = {}
    problems: list[str] = []
    for address, h in saved.items():
        where = f"{path}: hold {address[:80]!r}"
        names = h.get("names") if isinstance(h, dict) else None
        if not isinstance(names, dict) or not names:
            problems.append(f"{where}: cannot read (no names)")  # its route may be live
            continue
        row = _legacy_number(h.get("row", 0), round_up=False)  # 0.1 wrote none for some
        for name, expires in names.items():
            parts = ["+", address, _legacy_number(expires, round_up=True), row, name]
            reason = _refused(holds, parts, latest)
            if reason is not None:
                problems.append(f"{where}, name {name[:80]!r}: cannot read ({reason})")
    return Loaded(holds, not problems, problems, True)


def _legacy_number(value: object, round_up: bool) -> str:
    """A number of the legacy file as the journal writes it, for `_apply` to check: an
    integer, or with `round_up` a finite number rounded up (as the writer rounds expiries);
    anything else as a text that `_apply` refuses."""
    if round_up and isinstance(value, float) and math.isfinite(value):
        return str(math.ceil(value))
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return "(not a number)"


# -- writing (journal.Journal and its compaction) --------------------------------------------


class Snapshot:
    """The holds a compaction writes, taken on the loop: one column per field."""

    def __init__(self, offset: float) -> None:
        self.offset = offset  # monotonic -> wall-clock
        self.columns: tuple[
            list[bytes], list[str | dict[str, float]], list[float], list[float], list[int]
        ] = ([], [], [], [], [])  # packed, names, expires, noted, row

    def records(self, size: int) -> Iterator[bytes]:
        """The records, `size` holds at a time."""
        packed, names, expires, noted, rows = self.columns
        offset = self.offset
        for start in range(0, len(packed), size):
            yield b"".join(
                format_hold(packed[i], names[i], expires[i], rows[i], offset, noted[i] - expires[i])
                for i in range(start, min(start + size, len(packed)))
            )


def format_hold(packed: bytes, names: str | dict[str, float], expires: float, row: int,
            offset: float, ahead: float) -> bytes:  # fmt: skip
    """The record of a hold, each expiry `ahead` seconds beyond its own; `offset` maps
    monotonic onto wall-clock time."""
    address = socket.inet_ntop(socket.AF_INET if len(packed) == 4 else socket.AF_INET6, packed)
    if isinstance(names, str):
        return f"+ {address} {math.ceil(expires + ahead + offset)} {row} {names}\n".encode()
    return b"".join(
        f"+ {address} {math.ceil(e + ahead + offset)} {row} {n}\n".encode()
        for n, e in names.items()
    )
