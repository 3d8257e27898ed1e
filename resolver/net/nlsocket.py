"""Netlink sockets: opened non-blocking with large buffers and short error acks, and read
without blocking.

`open_socket` is what every netlink socket of resolverd starts as: a `netlink.Channel`'s (its
writer thread then makes it blocking, with a timeout) and the route listener's in
`links.Watcher` (`recv` reads it from the event loop). Buffers of 4 MiB: SO_RCVBUFFORCE and
SO_SNDBUFFORCE with CAP_NET_ADMIN, else what net.core.rmem_max/wmem_max allow. Nothing here
starts a thread or keeps state.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from typing import Final

SOL_NETLINK: Final = 270
NETLINK_CAP_ACK: Final = 10
NETLINK_GET_STRICT_CHK: Final = 12
SO_SNDBUFFORCE: Final = 32  # not exported by the socket module
SO_RCVBUFFORCE: Final = 33

RCVBUF: Final = 4 << 20
SNDBUF: Final = 4 << 20  # bounds a message (EMSGSIZE): a traffic setup of a feed's many sets


def recv(sock: socket.socket, buf: bytearray, overrun: Callable[[], None]) -> int | None:
    """Read the next datagram queued on the non-blocking `sock` into `buf`: its size, or None
    when none is left. ENOBUFS (the kernel dropped messages for want of room) calls `overrun`,
    then reading goes on."""
    while True:
        try:
            return sock.recv_into(buf)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as err:
            if err.errno != errno.ENOBUFS:
                raise
            overrun()


def open_socket(proto: int, groups: int = 0, strict: bool = False) -> socket.socket:
    """A non-blocking netlink socket, large buffers, short error acks."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, proto)
    try:
        sock.setblocking(False)
        for force, plain, size in (
            (SO_RCVBUFFORCE, socket.SO_RCVBUF, RCVBUF),
            (SO_SNDBUFFORCE, socket.SO_SNDBUF, SNDBUF),
        ):
            try:
                sock.setsockopt(socket.SOL_SOCKET, force, size)
            except PermissionError:  # no CAP_NET_ADMIN: up to net.core.*mem_max
                sock.setsockopt(socket.SOL_SOCKET, plain, size)
        sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)  # errors do not echo the request
        if strict:
            sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)  # dumps honour filters
        sock.bind((0, groups))
    except OSError:
        sock.close()
        raise
    return sock
