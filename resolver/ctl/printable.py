"""Text from the daemon made safe for a terminal: resolverctl prints nothing raw."""

from __future__ import annotations


def printable(value: str) -> str:
    """`value` with every character a terminal would not print as itself (control characters:
    escape sequences, BEL, a carriage return, ...) written as RFC 1035's ``\\DDD`` (``\\u+XXXX``
    beyond Latin-1). The daemon sends names in that form already; this is for anything else,
    and for a daemon that does not."""
    if value.isprintable():
        return value
    return "".join(
        ch if ch.isprintable() else f"\\{ord(ch):03d}" if ord(ch) < 256 else f"\\u+{ord(ch):04X}"
        for ch in value
    )
