"""Removing everything the breakout owns: `resolverd --cleanup`, and `flush`'s kernel half.

Removed: every route in `table` carrying `route_protocol` (host routes and the policy's
prefixes), the `from all lookup <table>` rules carrying that protocol, and the set entries for
the addresses resolverd routed (those it knows of, and those of the owned host routes found);
`cleanup` also removes the state file. Left alone: routes of other protocols or tables, and the
sets themselves. ipsets are not destroyed even when resolverd created them: a firewall rule that
references a set makes `destroy` fail (IPSET_ERR_REFERENCED), and removing a set the firewall
expects would break its next reload. Entries resolverd added but no longer knows about run out
on their kernel timeout.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Collection, Sequence

from resolver.config import BreakoutConfig
from resolver.net import state
from resolver.net.holds import Hold
from resolver.net.installs import Installs
from resolver.net.kernel import EntryItem, Kernel, KernelLike, has_net_admin, needs_net_admin
from resolver.net.routes import AF, HOST_LEN, Route, owned

log = logging.getLogger(__name__)


async def cleanup(
    cfg: BreakoutConfig, state_dir: str, cidrs: Collection[str] = ()
) -> dict[str, int]:
    """Remove the routes, rules and set entries resolverd owns while the daemon is stopped;
    return what was removed.

    `cidrs` are the policy's prefixes: they are counted apart from the host routes learnt from
    DNS (a /32 prefix looks like a host route otherwise) and have no set entries."""
    counts = {"routes": 0, "cidr_routes": 0, "rules": 0, "set_entries": 0, "state_file": 0}
    if not has_net_admin():
        raise needs_net_admin("remove routes, rules and set entries")
    loop = asyncio.get_running_loop()
    kernel = Kernel(cfg)
    try:
        await kernel.start(loop, create=False)
        ours = owned(await kernel.dump_routes(), cfg.route_protocol)
        fut: asyncio.Future[list[int]] = loop.create_future()
        kernel.del_routes(
            [(r.family, socket.inet_pton(AF[r.family], r.dst), r.dst_len) for r in ours],
            fut.set_result,
        )
        learnt = _learnt(ours, set(cidrs))
        learnt_ids = {id(r) for r in learnt}
        for r, code in zip(ours, await fut, strict=True):
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
            counts["set_entries"] = await _del_entries(kernel, entries)
    finally:
        kernel.close()
    counts["state_file"] = int(state.remove(state_dir))
    log.info(
        "cleanup: removed %d routes, %d policy prefixes, %d rules, %d set entries",
        counts["routes"], counts["cidr_routes"], counts["rules"], counts["set_entries"],
    )  # fmt: skip
    return counts


async def flush_owned(
    kernel: KernelLike,
    io: Installs,
    protocol: int,
    prefixes: Collection[str],
    holds: Sequence[Hold],
    now: float,
) -> dict[str, int]:
    """The running breakout's removal (Breakout.flush): every owned route, through `io` so that
    the monitor knows their deletions for its own; the live set entries of `holds` and those of
    the owned host routes they did not know; then the rules. `prefixes`: the policy's cidrs."""
    counts = {"routes": 0, "cidr_routes": 0, "rules": 0, "set_entries": 0}
    ours = owned(await kernel.dump_routes(), protocol)
    for r, code in zip(ours, await io.delete_table_routes(ours), strict=True):
        if code == 0:
            counts["cidr_routes" if f"{r.dst}/{r.dst_len}" in prefixes else "routes"] += 1
    if kernel.has_sets:
        known = {h.address for h in holds}
        entries = [(h.family, h.packed, 0) for h in holds if h.set_expires > now]
        entries += [
            (r.family, socket.inet_pton(AF[r.family], r.dst), 0)
            for r in _learnt(ours, prefixes)
            if r.dst not in known
        ]
        counts["set_entries"] = await _del_entries(kernel, entries)
    counts["rules"] = await kernel.remove_rules()
    return counts


def _learnt(routes: list[Route], prefixes: Collection[str]) -> list[Route]:
    """The host routes learnt from DNS: those that are not one of the policy's prefixes."""
    return [
        r
        for r in routes
        if r.dst_len == HOST_LEN[r.family] and f"{r.dst}/{r.dst_len}" not in prefixes
    ]


async def _del_entries(kernel: KernelLike, entries: list[EntryItem]) -> int:
    """Remove set entries; how many were there to remove."""
    done: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
    kernel.del_entries(entries, done.set_result)
    return sum(1 for e in await done if e == 0)
