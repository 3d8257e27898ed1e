"""`resolverd --cleanup`: remove everything the breakout owns while the daemon is stopped.

Removed: every route in `table` carrying `route_protocol` (host routes and the policy's
prefixes), the `from all lookup <table>` rules carrying that protocol, the set entries for the
addresses resolverd routed (those in the state file and those of the owned routes found), and
the state file. Left alone: routes of other protocols or tables, and the sets themselves.
ipsets are not destroyed even when resolverd created them: a firewall rule that references a
set makes `destroy` fail (IPSET_ERR_REFERENCED), and removing a set the firewall expects would
break its next reload. Entries resolverd added but no longer knows about run out on their
kernel timeout.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Collection

from resolver.config import BreakoutConfig
from resolver.net import state
from resolver.net.kernel import Kernel, has_net_admin, needs_net_admin
from resolver.net.routes import AF, HOST_LEN

log = logging.getLogger(__name__)


async def cleanup(
    cfg: BreakoutConfig, state_dir: str, cidrs: Collection[str] = ()
) -> dict[str, int]:
    """Remove the routes, rules and set entries resolverd owns; return what was removed.

    `cidrs` are the policy's prefixes: they are counted apart from the host routes learnt from
    DNS (a /32 prefix looks like a host route otherwise) and have no set entries."""
    counts = {"routes": 0, "cidr_routes": 0, "rules": 0, "set_entries": 0, "state_file": 0}
    if not has_net_admin():
        raise needs_net_admin("remove routes, rules and set entries")
    loop = asyncio.get_running_loop()
    kernel = Kernel(cfg)
    try:
        await kernel.start(loop, create=False)
        owned = [r for r in await kernel.dump_routes() if r.protocol == cfg.route_protocol]
        fut: asyncio.Future[list[int]] = loop.create_future()
        kernel.del_routes(
            [(r.family, socket.inet_pton(AF[r.family], r.dst), r.dst_len) for r in owned],
            fut.set_result,
        )
        prefixes = set(cidrs)
        learnt = [
            r
            for r in owned
            if r.dst_len == HOST_LEN[r.family] and f"{r.dst}/{r.dst_len}" not in prefixes
        ]
        learnt_ids = {id(r) for r in learnt}
        for r, code in zip(owned, await fut, strict=True):
            if code == 0:
                counts["routes" if id(r) in learnt_ids else "cidr_routes"] += 1
        counts["rules"] = await kernel.remove_rules()
        if kernel.has_sets:
            addresses = {s.address for s in state.load(state_dir)}
            addresses.update(r.dst for r in learnt)
            entries = []
            for a in sorted(addresses):
                family = 6 if ":" in a else 4
                try:
                    entries.append((family, socket.inet_pton(AF[family], a), 0))
                except OSError:
                    log.warning("state file names %r, not an address; skipped", a)
            efut: asyncio.Future[list[int]] = loop.create_future()
            kernel.del_entries(entries, efut.set_result)
            counts["set_entries"] = sum(1 for e in await efut if e == 0)
    finally:
        kernel.close()
    counts["state_file"] = int(state.remove(state_dir))
    log.info(
        "cleanup: removed %d routes, %d policy prefixes, %d rules, %d set entries",
        counts["routes"], counts["cidr_routes"], counts["rules"], counts["set_entries"],
    )  # fmt: skip
    return counts
