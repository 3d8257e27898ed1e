"""sd_notify(3) without libsystemd: state changes and watchdog pings to $NOTIFY_SOCKET.

Every function is a no-op returning False when the daemon does not run under systemd (no
$NOTIFY_SOCKET), and none raises for a socket error: it logs and returns False, because a
failed notification must never take the resolver down.

The daemon's protocol with systemd (Type=notify, see systemd/resolverd.service):

* ``ready(status)`` once it serves queries, and again when a reload has finished;
* ``reloading()`` when a reload starts (``RELOADING=1`` plus ``MONOTONIC_USEC``, as
  Type=notify-reload wants; plain Type=notify accepts it too);
* ``stopping()`` when shutdown begins;
* ``watchdog()`` at least every ``watchdog_interval() / 2`` seconds when that is not None.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)


def _address() -> str | None:
    """The socket address from $NOTIFY_SOCKET: a path, or an abstract name ('@' -> NUL)."""
    value = os.environ.get("NOTIFY_SOCKET", "")
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    log.warning("sd_notify: unsupported NOTIFY_SOCKET %r (need a path or @name)", value)
    return None


def notify(*lines: str) -> bool:
    """Send ``KEY=value`` lines in one datagram. True if it was sent."""
    for line in lines:
        if "\n" in line or "=" not in line:
            raise ValueError(f"sd_notify: not a KEY=value line: {line!r}")
    address = _address()
    if address is None:
        return False
    data = "\n".join(lines).encode("utf-8")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(1.0)  # a listener that stopped reading must not hang the daemon
            sock.sendto(data, address)
    except OSError as exc:
        log.warning("sd_notify: cannot send %s: %s", lines[0] if lines else "", exc)
        return False
    return True


def _one_line(text: str) -> str:
    return " ".join(text.split())


def ready(status: str | None = None) -> bool:
    """READY=1 (startup finished, or a reload finished), with an optional STATUS= text."""
    lines = ["READY=1"]
    if status:
        lines.append("STATUS=" + _one_line(status))
    return notify(*lines)


def reloading() -> bool:
    """RELOADING=1 with the CLOCK_MONOTONIC time in microseconds; send ready() when done."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}")


def stopping() -> bool:
    return notify("STOPPING=1")


def status(text: str) -> bool:
    """A free-form one-line status, shown by ``systemctl status``."""
    return notify("STATUS=" + _one_line(text))


def watchdog() -> bool:
    return notify("WATCHDOG=1")


def watchdog_interval() -> float | None:
    """The watchdog timeout in seconds (WatchdogSec=), or None when there is no watchdog.

    None also when $WATCHDOG_PID names another process (the variable was inherited). Ping with
    `watchdog()` at half this interval.
    """
    usec = os.environ.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    pid = os.environ.get("WATCHDOG_PID", "")
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 1_000_000
