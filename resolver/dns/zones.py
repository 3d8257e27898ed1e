"""Conditional forwarding: which configured zone, if any, holds a name (the longest wins).

Pure lookups, no sockets: the forwarder asks with the question's wire bytes on every miss,
`resolverctl explain` with a name. A zone holds itself and every name below it; ``10.in-addr.arpa``
and other reverse zones are zones like any other.
"""

from __future__ import annotations

from collections.abc import Iterable

from resolver.dns.wire import encode_name


class Zones:
    """The configured zones, by their lower-case wire form."""

    def __init__(self, zones: Iterable[str]) -> None:
        self._by_wire = {encode_name(zone): zone for zone in zones}

    def __bool__(self) -> bool:
        return bool(self._by_wire)

    def find_wire(self, name: bytes) -> str | None:
        """The longest zone holding `name`, an uncompressed lower-case wire name."""
        by_wire = self._by_wire
        if not by_wire:
            return None
        pos, end = 0, len(name)
        while pos < end:
            zone = by_wire.get(name[pos:])
            if zone is not None:
                return zone
            length = name[pos]
            if length == 0:
                return None
            pos += length + 1
        return None

    def find(self, name: str) -> str | None:
        """The longest zone holding `name` (text, any case, trailing dot or not)."""
        try:
            return self.find_wire(encode_name(name.lower()))
        except (UnicodeError, ValueError):
            return None
