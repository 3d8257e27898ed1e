"""The administrative netlink operations done with pyroute2, in a short-lived helper process.

    python -m resolver.net.admin create-ipset NAME FAMILY TIMEOUT MAXELEM

This is the only module that imports pyroute2. The daemon's own netlink work (routes, rules,
set entries, dumps, the checks that run all the time) is a handful of fixed-layout messages
packed by hand (routes.py, ipsets.py, nftsets.py). Creating an ipset is rare (first start, or
after someone destroyed the set) and worth pyroute2's encoders, but importing pyroute2 costs
about 13 MB of resident memory measured on these machines (a third of an idle daemon), and its
async classes need asyncio's own loop (uvloop refuses their AF_NETLINK endpoints). So the
daemon runs this module as a child process, which inherits its capabilities, prints one JSON
line and exits.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import socket
import sys
from collections.abc import Sequence

from resolver.net.errors import BreakoutError, needs_net_admin

log = logging.getLogger(__name__)

TIMEOUT = 30.0  # seconds the helper may take


async def create_ipset(name: str, family: int, timeout: int, maxelem: int) -> None:
    """Create hash:ip set `name` with timeout support (one created meanwhile with the same type
    is fine). BreakoutError when the kernel refuses, with what to do."""
    args = ("create-ipset", name, str(family), str(timeout), str(maxelem))
    await _run(args)
    log.info("created ipset %s (hash:ip, inet%s, timeout %d)", name, "6" * (family == 6), timeout)


async def _run(args: Sequence[str]) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "resolver.net.admin", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise BreakoutError(
            f"{' '.join(args[:2])}: the admin helper took over {TIMEOUT:.0f}s"
        ) from None
    try:
        result = json.loads(out.decode() or "{}")
    except ValueError:
        result = {}
    if proc.returncode == 0 and result.get("ok"):
        return
    code = int(result.get("errno", 0))
    if code == errno.EPERM:
        raise needs_net_admin("create ipsets")
    message = result.get("error") or err.decode(errors="replace").strip() or "failed"
    raise BreakoutError(f"cannot {' '.join(args[:2])}: {message}")


def _create_ipset(name: str, family: int, timeout: int, maxelem: int) -> None:
    from pyroute2.ipset import IPSet

    af = socket.AF_INET6 if family == 6 else socket.AF_INET
    with IPSet() as ips:
        ips.create(
            name, stype="hash:ip", family=af, timeout=timeout, maxelem=maxelem, exclusive=False
        )


def main(argv: Sequence[str] | None = None) -> int:
    from pyroute2.netlink.exceptions import NetlinkError

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if len(args) == 5 and args[0] == "create-ipset":
            _create_ipset(args[1], int(args[2]), int(args[3]), int(args[4]))
        else:
            print(json.dumps({"ok": False, "error": f"unknown operation {args!r}"}))
            return 2
    except (NetlinkError, OSError, ValueError) as exc:  # reported to the daemon
        code = getattr(exc, "code", None) or getattr(exc, "errno", None) or 0
        print(json.dumps({"ok": False, "errno": code, "error": str(exc) or type(exc).__name__}))
        return 1
    print(json.dumps({"ok": True}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
