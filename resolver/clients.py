"""A client's address as the ACL, the monitor's filter, the TCP limits, the budgets and the
holds see it.

`client_ip` is the address (for the ACL and the filters). `client_key` is who is charged for
what a client holds, the same for every limit: an IPv4 address, or the /64 of an IPv6 address
(one host can have many addresses in its /64, and they are cheap)."""

from __future__ import annotations

import ipaddress
import socket
from typing import Final, TypeAlias

IP: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address


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


def client_key(host: str) -> bytes | None:
    """Who `host` is for every per-client limit: its IPv4 address, or the /64 of its IPv6
    address (an IPv4-mapped one as IPv4); None (nobody) for anything else."""
    text = host.partition("%")[0]
    try:
        if ":" not in text:
            return socket.inet_pton(socket.AF_INET, text)
        packed = socket.inet_pton(socket.AF_INET6, text)
    except (OSError, ValueError):  # not an address; ValueError: it holds a NUL
        return None
    if packed[:12] == b"\0" * 10 + b"\xff\xff":
        return packed[12:]
    return packed[:8]


_TEXT: Final = b"peer text"  # 9 bytes: a text key is never as long as an address key (4 or 8)


def charge_key(host: str) -> bytes:
    """Who is charged for `host`'s share of a limit: its `client_key`, or for a peer that is no
    address (which the sockets never give) its own text, after _TEXT."""
    key = client_key(host)
    return _TEXT + host.encode("utf-8", "surrogateescape") if key is None else key


def charge_text(key: bytes) -> str:
    """A `charge_key` as text for a log line: `client_text`, or the peer's own text with what
    is not printable ASCII escaped."""
    if len(key) in (4, 8):
        return client_text(key)
    return key[len(_TEXT) :].decode("latin-1").encode("unicode_escape").decode("ascii")


def client_text(key: bytes) -> str:
    """A `client_key` as text: ``192.0.2.7`` or ``2001:db8:1:2::/64``."""
    if len(key) == 4:
        return socket.inet_ntop(socket.AF_INET, key)
    return socket.inet_ntop(socket.AF_INET6, key + bytes(8)) + "/64"
