"""What the breakout raises to its callers, and how it settles the kernel's errnos.

`BreakoutError` is the one exception the net side raises: the message says what to do.
`Errnos` is the one place where the errno of a netlink batch is judged: counted, logged at most
once per kind per interval, or ignored when it only says that something was gone already.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable, Iterable
from typing import Final

from resolver.net.ratelog import RateLimitedLog

log = logging.getLogger(__name__)

CAP_NET_ADMIN: Final = 12
GONE: Final = frozenset({0, errno.ESRCH, errno.ENOENT})  # a deletion of what is not there: fine


class BreakoutError(Exception):
    """Breakout cannot start or apply a configuration; the message says what to do."""


def has_net_admin() -> bool:
    """Whether this process holds CAP_NET_ADMIN in its effective set."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except OSError as err:
        log.warning("cannot read capabilities from /proc/self/status: %s", err)
    return False


def needs_net_admin(what: str) -> BreakoutError:
    return BreakoutError(
        f"breakout mode kernel needs CAP_NET_ADMIN to {what}: run resolverd as root or with "
        "AmbientCapabilities=CAP_NET_ADMIN (see systemd/resolverd.service), or set "
        "breakout.mode: dry-run"
    )


def strerror(code: int) -> str:
    return f"ipset error {code}" if code >= 4096 else os.strerror(code)


class Errnos:
    """Counts the errors of kernel batches in `counters["netlink_errors"]` and logs them, one
    line per kind of failure per interval (a failing kernel must not flood the journal)."""

    def __init__(self, counters: dict[str, int]) -> None:
        self.counters = counters
        self.ratelog = RateLimitedLog(log)
        # Called when a batch failed with ENOBUFS: its replies were lost, or it was never
        # sent; either way the kernel's state is not what the books say (repair.LostReplies).
        self.on_lost: Callable[[], None] | None = None

    def failed(self, what: str, code: int, subject: object = "") -> None:
        """One failure of `what` (e.g. "install route") for `subject`."""
        self.counters["netlink_errors"] += 1
        self.ratelog.log(
            logging.WARNING, f"{what}-{code}", "cannot %s %s: %s", what, subject, strerror(code)
        )
        if code == errno.ENOBUFS and self.on_lost is not None:
            self.on_lost()

    def settle(self, what: str, ok: Iterable[int] = (0,)) -> Callable[[list[int]], list[int]]:
        """A callback for a batch: counts and logs every errno not in `ok`; returns the
        errnos so that a caller can chain it."""
        good = frozenset(ok)

        def settled(codes: list[int]) -> list[int]:
            bad = [c for c in codes if c not in good]
            if bad:
                self.counters["netlink_errors"] += len(bad)
                self.ratelog.log(
                    logging.WARNING, f"{what}-{bad[0]}", "%s: %d failed (%s)", what, len(bad),
                    strerror(bad[0]),
                )  # fmt: skip
                if errno.ENOBUFS in bad and self.on_lost is not None:
                    self.on_lost()
            return codes

        return settled
