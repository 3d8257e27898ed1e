"""Reading the hold journal back at start (the format is in `journal`'s docstring): which
holds it says were live, and whether it can be trusted. The legacy state file of resolverd 0.1
is read when there is no journal.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from dataclasses import dataclass, field

log = logging.getLogger("resolver.net.journal")

FILE_NAME = "holds.journal"
LEGACY_FILE = "breakout-state.json"  # resolverd 0.1's state file, read once if no journal
VERSION = 1


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


def load(state_dir: str) -> Loaded:
    """Replay the journal (or import the legacy state file when there is no journal)."""
    path = path_of(state_dir)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return _load_legacy(state_dir)
    except OSError as err:
        return Loaded({}, False, [f"{path}: cannot read: {err.strerror}"], True)
    return parse(data, path)


def parse(data: bytes, path: str = FILE_NAME) -> Loaded:
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
        try:
            _apply(holds, raw.decode("ascii").split(" ", 4))  # a name is the last field
        except (UnicodeDecodeError, ValueError, IndexError):
            problems.append(f"{path}:{number}: cannot read {raw[:80]!r}")
    return Loaded(holds, not problems, problems, True)


def _apply(holds: dict[str, Saved], parts: list[str]) -> None:
    op = parts[0]
    if op == "+" and len(parts) == 5:
        address, expires, row, name = parts[1], float(parts[2]), int(parts[3]), parts[4]
        socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET, address)
        saved = holds.get(address)
        if saved is None:
            saved = holds[address] = Saved(expires, row)
        saved.expires = max(saved.expires, expires)
        saved.row = row
        saved.names[name] = max(saved.names.get(name, 0.0), expires)
    elif op == "-" and len(parts) == 2:
        holds.pop(parts[1], None)
    elif op == "F" and len(parts) == 1:
        holds.clear()
    else:
        raise ValueError("unknown record")


def _load_legacy(state_dir: str) -> Loaded:
    path = os.path.join(state_dir, LEGACY_FILE)
    try:
        with open(path, "rb") as fh:
            doc = json.loads(fh.read())
        holds = {
            str(address): Saved(float(h["expires"]), int(h.get("row", 0)),
                                {str(n): float(e) for n, e in h.get("names", {}).items()})
            for address, h in doc["holds"].items()
        }  # fmt: skip
    except FileNotFoundError:
        return Loaded({}, True, [], False)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        return Loaded({}, False, [f"{path}: unreadable: {err}"], True)
    return Loaded(holds, True, [], True)
