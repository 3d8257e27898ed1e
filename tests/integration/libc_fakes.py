"""A C library whose recvmmsg and sendmmsg answer as scripted, for the batches of mmsg.py
(the listeners' Batches and the upstream sockets' Datagrams)."""

from __future__ import annotations

import ctypes
import errno
from typing import Any


class FakeLibc:
    """recvmmsg and sendmmsg as the C library returns them: `sends` are what successive
    sendmmsg calls return, an errno for -1."""

    def __init__(self, sends: list[int | str], recv_errno: int = 0) -> None:
        self.asked: list[int] = []

        def recvmmsg(fd: int, at: int, size: int, flags: int, timeout: Any) -> int:
            ctypes.set_errno(recv_errno)
            return -1

        def sendmmsg(fd: int, at: int, count: int, flags: int) -> int:
            self.asked.append(count)
            result = sends.pop(0)
            if isinstance(result, str):
                ctypes.set_errno(getattr(errno, result))
                return -1
            return result

        self.recvmmsg, self.sendmmsg = recvmmsg, sendmmsg  # functions take `argtypes`
