"""Addresses never routed: the configured `never_route` prefixes, the DNS servers the config
names (the default upstreams and the forward zones' servers, which the router reaches through
the tunnel), and every connected network.

A DNS answer must not be able to steer the router's own traffic: an answer under a Microsoft
365 wildcard that hands out the LAN's own address (or the router's, or a link network's, or
head office's DNS server: its queries and internal names would leave through the ISP) is not
routed. The connected part is rebuilt from the kernel's addresses and device routes whenever
they change (see links.NetView).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Final

_BYTES: Final = tuple(bytes((b,)) for b in range(256))
NAT64: Final = bytes.fromhex(
    "0064ff9b0000000000000000"
)  # 64:ff9b::/96, RFC 6052's well-known prefix


class PrefixIndex:
    """Longest-prefix match over a few prefixes: one dict lookup per distinct prefix length,
    keyed by the address's leading bytes (its last one masked): no 128-bit integer, which
    compiled code would build and shift as an object."""

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        # family -> prefix length -> {the network's leading bytes: (cidr, label)}
        tables: dict[int, dict[int, dict[bytes, tuple[str, str]]]] = {4: {}, 6: {}}
        self._nets: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]] = []
        for cidr, label in items:
            net = ipaddress.ip_network(cidr, strict=False)
            self._nets.append((net, label))
            by_len = tables[net.version].setdefault(net.prefixlen, {})
            key = net.network_address.packed[: (net.prefixlen + 7) // 8]
            by_len.setdefault(key, (str(net), label))
        # family -> [(bytes to read, mask of the last one, table)], longest prefix first
        self._tables = {
            fam: [((plen + 7) // 8, 0xFF & (0xFF << (-plen & 7)), by[plen])
                  for plen in sorted(by, reverse=True)]
            for fam, by in tables.items()
        }  # fmt: skip

    def __len__(self) -> int:
        return len(self._nets)

    def find(self, family: int, packed: bytes) -> tuple[str, str] | None:
        """The longest prefix holding the address, as (cidr, label), or None."""
        for size, mask, table in self._tables[family]:
            key = packed[:size]
            if mask != 0xFF:
                key = key[:-1] + _BYTES[key[-1] & mask]
            hit = table.get(key)
            if hit is not None:
                return hit
        return None

    def overlapping(self, cidr: str) -> tuple[str, str] | None:
        """A prefix that overlaps `cidr` (holds it or lies inside it), or None."""
        net = ipaddress.ip_network(cidr, strict=False)
        for other, label in self._nets:
            if other.version == net.version and other.overlaps(net):
                return str(other), label
        return None


class NeverRoute:
    """Why an address must not be routed (a reason string), or None when it may be."""

    def __init__(self, never_route: Iterable[str], dns_servers: Iterable[str] = ()) -> None:
        static = [(c, "never_route") for c in never_route]
        static += [(host, "DNS server of the config") for host in dns_servers]
        self.static = PrefixIndex(static)
        self.connected = PrefixIndex()

    def set_connected(self, networks: Iterable[tuple[str, str]]) -> None:
        """(cidr, interface name) of every network the router is connected to."""
        self.connected = PrefixIndex(networks)

    def reason(self, family: int, packed: bytes) -> str | None:
        hit = self.connected.find(family, packed)
        if hit is not None:
            return f"connected network {hit[0]} on {hit[1]}"
        hit = self.static.find(family, packed)
        if hit is not None:
            return f"{hit[1]} {hit[0]}"
        if family == 6 and packed[:12] == NAT64:  # also judged by the IPv4 address inside
            inside = self.reason(4, packed[12:])
            return None if inside is None else f"NAT64 of an IPv4 address: {inside}"
        return None

    def reason_cidr(self, cidr: str) -> str | None:
        return self.connected_reason_cidr(cidr) or self.static_reason_cidr(cidr)

    def connected_reason_cidr(self, cidr: str) -> str | None:
        """Why `cidr` must not be routed while the connected networks are what they are."""
        hit = self.connected.overlapping(cidr)
        if hit is not None:
            return f"overlaps connected network {hit[0]} on {hit[1]}"
        return None

    def static_reason_cidr(self, cidr: str) -> str | None:
        hit = self.static.overlapping(cidr)
        if hit is not None:
            return f"overlaps {hit[1]} {hit[0]}"
        return None
