"""A client's address as the ACL, the monitor's filter and the TCP limits see it."""

from __future__ import annotations

import ipaddress

IP = ipaddress.IPv4Address | ipaddress.IPv6Address


def client_ip(host: str) -> IP | None:
    """The address of a socket's peer host: its zone (``%eth0``) dropped, an IPv4-mapped IPv6
    address as the IPv4 address it stands for; None when it is no address."""
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip
