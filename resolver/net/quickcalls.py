"""Two system calls of the netlink writer thread that cannot block, made without letting go of
the interpreter lock.

Python lets go of the interpreter lock around every system call, and a thread that lets go of
it must win it back: while the event loop is busy that takes up to the switch interval (5 ms),
and far longer when the loop makes a system call of its own every iteration (it takes the lock
straight back, and the waiting thread's timeout starts again; measured here on a busy machine:
7 to 1500 round trips a second). The writer needs the lock back after waiting for work and
after each sendmsg, which may block (another process holds the kernel's routing lock): those
two let go of it, as they must. The two calls here never block: reading acks the kernel queued
during the sendmsg that just returned (rtnetlink and nfnetlink answer inside it; MSG_DONTWAIT,
EAGAIN falls back to the blocking read), and writing the eventfd that wakes the loop. Made
through `ctypes.PyDLL`, which keeps the lock, they cost the writer no round trip.

`QuickCalls.open` gives None where the C library cannot be reached this way: the writer then
uses the socket's own methods.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import socket
from typing import Final

log = logging.getLogger(__name__)

MSG_DONTWAIT: Final = 0x40
_ONE: Final = ctypes.c_uint64(1)


class QuickCalls:
    """Non-blocking recv into one buffer, and the loop's wake-up, holding the interpreter lock."""

    __slots__ = ("_array", "_done_fd", "_fd", "_ptr", "_recv", "_size", "_write")

    def __init__(
        self, libc: ctypes.PyDLL, sock: socket.socket, buf: bytearray, done_fd: int
    ) -> None:
        recv = libc.recv
        recv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        recv.restype = ctypes.c_ssize_t
        write = libc.write
        write.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
        write.restype = ctypes.c_ssize_t
        self._recv = recv
        self._write = write
        self._fd = sock.fileno()
        self._done_fd = done_fd
        # Kept: `_ptr` points into `buf`, whose size the array's export pins.
        self._array = (ctypes.c_char * len(buf)).from_buffer(buf)
        self._size = len(buf)
        self._ptr = ctypes.addressof(self._array)

    @classmethod
    def open(cls, sock: socket.socket, buf: bytearray, done_fd: int) -> QuickCalls | None:
        try:
            return cls(ctypes.PyDLL(None, use_errno=True), sock, buf, done_fd)
        except (OSError, AttributeError) as err:
            log.info("netlink writer: no quick calls (%s); it uses the socket methods", err)
            return None

    def recv(self) -> int:
        """The size of the next datagram queued, read into the buffer; -1 when none is."""
        size = int(self._recv(self._fd, self._ptr, self._size, MSG_DONTWAIT))
        if size >= 0:
            return size
        code = ctypes.get_errno()
        if code in (errno.EAGAIN, errno.EINTR):
            return -1
        raise OSError(code, os.strerror(code))

    def wake(self) -> None:
        """Add one to the loop's eventfd."""
        if int(self._write(self._done_fd, ctypes.byref(_ONE), 8)) != 8:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
