"""A fake netlink socket's plumbing for `netlink.Channel(sock=...)`: the writer thread sends
to it and reads what the fake kernel queued, datagram by datagram. Subclasses answer `send`
and put their replies with `queue`."""

from __future__ import annotations

import threading
from collections import deque


class QueuedSocket:
    """What a Channel calls besides `send`; `recv_into` waits up to `timeout` for a datagram
    (TimeoutError, as a socket with a timeout raises)."""

    timeout = 2.0

    def __init__(self) -> None:
        self._queue: deque[bytes] = deque()
        self._cond = threading.Condition()

    def setblocking(self, flag: bool) -> None:
        pass

    def settimeout(self, value: float) -> None:
        pass

    def close(self) -> None:
        pass

    def queue(self, datagrams: list[bytes]) -> None:
        with self._cond:
            self._queue.extend(datagrams)
            self._cond.notify_all()

    def recv_into(self, buf: bytearray) -> int:
        with self._cond:
            if not self._cond.wait_for(lambda: bool(self._queue), timeout=self.timeout):
                raise TimeoutError
            data = self._queue.popleft()
        size = min(len(data), len(buf))  # cut, as the kernel cuts a datagram too big
        buf[:size] = data[:size]
        return size
