"""Who is on the other end of the control socket: SO_PEERCRED, and the peer's supplementary
groups from SO_PEERGROUPS (or, where that is missing, /proc/PID/status: protocol.groups_of)."""

from __future__ import annotations

import logging
import platform
import socket
import struct
from collections.abc import Callable
from typing import Any

from resolver.control.protocol import Peer, groups_of

log = logging.getLogger(__name__)

_UCRED = struct.Struct("iII")  # struct ucred: pid_t pid; uid_t uid; gid_t gid
# SO_PEERGROUPS (Linux 4.13) is not in Python's socket module. Its number is 59 in
# asm-generic/socket.h, which these architectures use; others fall back to /proc.
_SO_PEERGROUPS = 59
_GENERIC_SOCKET_ABI = frozenset(
    {"x86_64", "i386", "i686", "aarch64", "arm64", "armv7l", "armv6l", "riscv64", "s390x"}
    | {"ppc64le", "ppc64", "loongarch64"}
)
PeerGroups = Callable[[Any], list[int] | None]  # a connected socket -> the peer's groups


def peer_credentials(sock: Any, peer_groups: PeerGroups | None = None) -> Peer:
    """SO_PEERCRED (pid, uid, gid) of a connected Unix socket, plus its supplementary groups
    (`peer_groups`, SO_PEERGROUPS by default; None from it: /proc/PID/status)."""
    pid, uid, gid = _UCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    )
    groups = (peer_groups or so_peergroups)(sock)
    return Peer(pid, uid, gid, groups_of(pid, groups))


def so_peergroups(sock: Any) -> list[int] | None:
    """SO_PEERGROUPS: the peer's supplementary groups at connect time; None when unavailable."""
    if platform.machine() not in _GENERIC_SOCKET_ABI:
        return None
    try:
        data: bytes = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERGROUPS, 1024)
    except OSError as exc:  # ENOPROTOOPT on old kernels, ERANGE beyond 256 groups
        log.debug("control: SO_PEERGROUPS unavailable (%s); reading /proc", exc)
        return None
    count = len(data) // 4
    return list(struct.unpack(f"{count}I", data[: count * 4]))
