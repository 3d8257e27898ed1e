"""The breakout's scope: which clients' traffic may leave by the breakout link.

`breakout.clients` (source prefixes) and `breakout.client_interfaces` (ingress interfaces)
name it; both empty means everyone. Either set, it is their union: a client is in scope when
its address is inside one of the prefixes, or when its packets come in on one of the
interfaces. The router itself (traffic it sends: the queries to `breakout.resolvers`) is always
in scope. The kernel enforces the scope with ip rules (probes.rule_specs); this module only
answers the question for what resolverd shows (the monitor, `resolverctl explain --client`).
DNS answers are the same for every client either way.

Which interface a client's packets come in on is not in a DNS query resolverd reads: it is
taken to be the interface of the connected network holding the client's address (a client
reached through another router on the LAN is judged by its prefix alone).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Iterable

from resolver.clients import client_ip

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Scope:
    """The union of `clients` (prefixes) and `interfaces`; everyone when both are empty."""

    __slots__ = ("everyone", "interfaces", "networks")

    def __init__(self, clients: Iterable[str], interfaces: Iterable[str]) -> None:
        self.networks: tuple[Network, ...] = tuple(
            ipaddress.ip_network(c, strict=False) for c in clients
        )
        self.interfaces = frozenset(interfaces)
        self.everyone = not self.networks and not self.interfaces

    def contains(
        self,
        client: str,
        iif: str | None = None,
        connected: Callable[[], Iterable[tuple[str, str]]] | None = None,
    ) -> bool:
        """Whether `client`'s traffic breaks out. `iif` is the interface its packets come in
        on when known; else `connected` ((cidr, interface) of the connected networks, asked
        only when needed) gives the interface of the network holding the address."""
        if self.everyone:
            return True
        ip = client_ip(client)
        if ip is None:
            return False
        if ip.is_loopback:
            return True  # the router itself: the rule `iif lo`
        if any(ip in net for net in self.networks if net.version == ip.version):
            return True
        if not self.interfaces:
            return False
        if iif is not None:
            return iif in self.interfaces
        if connected is None:
            return False
        for cidr, name in connected():
            net = ipaddress.ip_network(cidr, strict=False)
            if name in self.interfaces and net.version == ip.version and ip in net:
                return True
        return False


@functools.lru_cache(maxsize=8)
def scope_of(clients: tuple[str, ...], interfaces: tuple[str, ...]) -> Scope:
    """The Scope of a config's keys, made once per distinct value."""
    return Scope(clients, interfaces)
