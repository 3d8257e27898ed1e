"""What the namespace labs share (tests/netns/lab.py, tests/bench/harness.py,
tests/package/lab.py): a lab is built on entry and removed on exit, and a build that fails
halfway removes what it had made before the error goes on."""

from __future__ import annotations

import os
from typing import Self


def inside(netns: str) -> bool:
    """True when this process runs in the named network namespace: the guard of a helper
    that changes routes (run with `ip netns exec NETNS ...`), so that it refuses the host's."""
    here = os.stat("/proc/self/ns/net")
    try:
        there = os.stat(f"/run/netns/{netns}")
    except FileNotFoundError:  # no such namespace: not in it
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


class NamespaceLab:
    """Subclasses give `_build` and a `close` that copes with a half-built lab."""

    def _build(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
