"""Hold the kernel's routing lock (rtnl_lock) for a given time, from inside a namespace.

    python -m tests.netns.rtnlhold SECONDS

How: an SIOCETHTOOL ETHTOOL_GLINK ioctl on `lo` makes the kernel take rtnl_lock and then copy
its 8-byte answer to user memory. The answer's buffer straddles two pages; the second one is
registered with userfaultfd (missing mode) and never populated, so the copy faults and the
ioctl sleeps, lock held, until this program resolves the fault (UFFDIO_ZEROPAGE) SECONDS
later. Nothing is changed: the ioctl only reads `lo`'s link state.

rtnl_lock is global (these kernels are built without CONFIG_DEBUG_NET_SMALL_RTNL): IPv4 route,
link, address and rule changes of every namespace wait for it. IPv6 route changes do not (since
Linux 6.13 or so they are serialised per table). Measured on the 2-core test VM (6.18): an IPv4
route add in another namespace, tried every 2 ms, blocked for 1500 ms under a 1.5 s hold, and
at most 1 ms for IPv6. For comparison, the usual ways to hold it briefly: deleting a veth with
200,000 IPv4 routes held it about 50 ms, taking down a link with 300,000 IPv6 routes about
250 ms, deleting a namespace with 3,000 devices about 190 ms.

Prints "holding" once the fault is pending (the lock is held), then JSON {"held_s": ...}. The
wait is killable: if this program dies, the ioctl fails with EFAULT and the lock is released.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import platform
import select
import socket
import struct
import sys
import threading
import time

SYS_USERFAULTFD = {"x86_64": 323, "aarch64": 282}
UFFD_API = 0xAA
UFFDIO_API = 0xC018AA3F
UFFDIO_REGISTER = 0xC020AA00
UFFDIO_ZEROPAGE = 0xC020AA04
UFFDIO_REGISTER_MODE_MISSING = 1
SIOCETHTOOL = 0x8946
ETHTOOL_GLINK = 0xA
PROT_RW, MAP_PRIVATE_ANON = 3, 0x22


def _ioctl(libc: ctypes.CDLL, fd: int, request: int, payload: bytes) -> None:
    buf = ctypes.create_string_buffer(payload, len(payload))
    if libc.ioctl(fd, ctypes.c_ulong(request), buf) < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"ioctl {request:#x}: {os.strerror(code)}")


def hold(seconds: float) -> float:
    """Hold rtnl_lock for `seconds`; returns how long the ioctl that held it took."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]  # fmt: skip
    number = SYS_USERFAULTFD.get(platform.machine())
    if number is None:
        raise OSError(f"userfaultfd: unknown syscall number on {platform.machine()}")
    uffd = libc.syscall(number, os.O_CLOEXEC | os.O_NONBLOCK)
    if uffd < 0:
        raise OSError(ctypes.get_errno(), "userfaultfd")
    _ioctl(libc, uffd, UFFDIO_API, struct.pack("QQQ", UFFD_API, 0, 0))
    page = mmap.PAGESIZE
    base = libc.mmap(None, 2 * page, PROT_RW, MAP_PRIVATE_ANON, -1, 0)
    ctypes.memset(base, 0, page)  # the first page is there; the second is left missing
    second = base + page
    _ioctl(libc, uffd, UFFDIO_REGISTER,
           struct.pack("QQQQ", second, page, UFFDIO_REGISTER_MODE_MISSING, 0))  # fmt: skip
    answer = second - 4  # struct ethtool_value {cmd, data}: cmd here, data on the missing page
    ctypes.c_uint32.from_address(answer).value = ETHTOOL_GLINK
    ifreq = ctypes.create_string_buffer(b"lo".ljust(16, b"\0") + struct.pack("Q", answer), 40)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    took: list[float] = []

    def call() -> None:
        t0 = time.monotonic()
        libc.ioctl(sock.fileno(), ctypes.c_ulong(SIOCETHTOOL), ifreq)
        took.append(time.monotonic() - t0)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    poll = select.poll()
    poll.register(uffd, select.POLLIN)
    if not poll.poll(5000):
        raise OSError("the ioctl did not fault: rtnl_lock is not held")
    print("holding", flush=True)
    time.sleep(seconds)
    _ioctl(libc, uffd, UFFDIO_ZEROPAGE, struct.pack("QQQq", second, page, 0, 0))
    thread.join(5)
    os.close(uffd)
    sock.close()
    return took[0] if took else -1.0


if __name__ == "__main__":
    held = hold(float(sys.argv[1]))
    print(json.dumps({"held_s": round(held, 4)}), flush=True)
