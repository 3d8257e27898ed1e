"""Removing everything the breakout owns: `resolverctl flush`, and `resolverd --cleanup`.

One routine for both (`remove_owned`): every route carrying `route_protocol` in the breakout
table and in the health probes' tables (host routes, the config's routes, the probe routes),
every rule carrying it (the main rules, per client prefix and interface when
`breakout.clients`/`client_interfaces` scope the breakout, and the probe rules; those an earlier
config left included), and the set entries of the addresses resolverd routed (those it knows of,
and those of the owned host routes found). After a flush the health probes pause until the next
install has put the rules back (probes.Probes.gate), then their tables come back too. `cleanup`
also removes the journal and the traffic counters' table (`inet resolverd`); a flush keeps the
counters (they are history) and removes the held addresses' elements. Left alone: routes and
rules of other protocols, and the sets themselves. ipsets are not destroyed even when resolverd
created them: a firewall rule that references a set makes `destroy` fail (IPSET_ERR_REFERENCED),
and removing a set the firewall expects would break its next reload. Entries resolverd added but
no longer knows about run out on their kernel timeout.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable, Collection, Iterable

from resolver.config import BreakoutConfig
from resolver.net import records
from resolver.net.errors import has_net_admin, needs_net_admin
from resolver.net.kernel import Kernel
from resolver.net.kernelapi import EntryItem, KernelLike, settled_future
from resolver.net.parts import Parts
from resolver.net.probes import owned_probe_rules, owned_rules, probe_tables, rule_specs
from resolver.net.routes import AF, HOST_LEN, Route, owned
from resolver.net.traffic import remove_table

log = logging.getLogger(__name__)

Delete = Callable[[list[Route]], Awaitable[list[int]]]


async def remove_owned(
    kernel: KernelLike,
    cfg: BreakoutConfig,
    delete: Delete,
    known: Iterable[tuple[int, bytes]],
    cidrs: Collection[str],
) -> dict[str, int]:
    """Remove what `cfg`'s breakout owns through `kernel` (see the module docstring); `delete`
    removes routes (the running breakout's goes through its books), `known` are the
    addresses whose set entries may be live, `cidrs` the config's routes (counted apart)."""
    counts = {"routes": 0, "cidr_routes": 0, "rules": 0, "set_entries": 0}
    ours = owned(await kernel.dump_routes(cfg.table), cfg.route_protocol)
    for r, code in zip(ours, await delete(ours), strict=True):
        if code == 0:
            counts["cidr_routes" if f"{r.dst}/{r.dst_len}" in cidrs else "routes"] += 1
    # The probe tables: the config's, and those of probe rules of ours that an earlier config
    # left (a link removed while resolverd was stopped). Not through `delete`: the breakout's
    # books know nothing of them.
    present = await kernel.dump_rules()
    probe_rules = owned_probe_rules(present, cfg)
    probe: list[Route] = []
    for table in sorted({*probe_tables(cfg), *(spec.table for spec in probe_rules)}):
        probe += owned(await kernel.dump_routes(table), cfg.route_protocol)
    if probe:
        await settled_future(lambda done: kernel.del_table_routes(probe, done))
    if kernel.has_sets:
        entries: dict[bytes, EntryItem] = {p: (f, p, 0) for f, p in known}
        for r in ours:
            learnt = r.dst_len == HOST_LEN[r.family] and f"{r.dst}/{r.dst_len}" not in cidrs
            if r.table == cfg.table and learnt:
                packed = socket.inet_pton(AF[r.family], r.dst)
                entries.setdefault(packed, (r.family, packed, 0))
        items = list(entries.values())
        codes = await settled_future(lambda done: kernel.del_entries(items, done))
        counts["set_entries"] = sum(1 for e in codes if e == 0)
    rules = list(dict.fromkeys([*rule_specs(cfg), *owned_rules(present, cfg)]))
    counts["rules"] = await kernel.change_rules((), rules)
    return counts


async def flush(cfg: BreakoutConfig, parts: Parts) -> dict[str, int]:
    """The running breakout's flush: forget the holds and the config's routes, remove what is
    owned through the books (so that the monitor knows the deletions for its own). The config's
    routes come back with the next reload or restart, host routes with the next answers (the
    rules with the first of them)."""
    ledger, installs, probes = parts.ledger, parts.installs, parts.probes
    installs.rules_ok = False  # the rules go too, and stay away until the next install
    probes.pause()  # the probe tables too: no round may run on them meanwhile
    now = parts.clock()
    known = [(h.family, h.packed) for h in ledger if h.set_expires > now]
    cidrs = ledger.config_routes.clear()
    holds = list(ledger)
    installs.forget_holds(holds, "flush")
    installs.accounting.release((h.family, h.packed) for h in holds)  # the counts stay
    ledger.withdrawn(holds)
    parts.journal.flushed()
    try:
        counts = await remove_owned(
            installs.kernel, cfg, installs.delete_table_routes, known, cidrs
        )
    finally:
        probes.resume()  # held back until an install puts our rules back (probes.gate)
    installs.rules_ok = False
    ledger.moved()
    log.info(
        "flushed: %d routes, %d policy prefixes, %d rules, %d set entries",
        counts["routes"], counts["cidr_routes"], counts["rules"], counts["set_entries"],
    )  # fmt: skip
    return counts


async def cleanup(
    cfg: BreakoutConfig, state_dir: str, cidrs: Collection[str] = ()
) -> dict[str, int]:
    """Remove what resolverd owns while the daemon is stopped (`resolverd --cleanup`)."""
    if not has_net_admin():
        raise needs_net_admin("remove routes, rules and set entries")
    loop = asyncio.get_running_loop()
    kernel = Kernel(cfg)
    try:
        await kernel.open(loop, create=False, strict=False)

        def delete(routes: list[Route]) -> Awaitable[list[int]]:
            return settled_future(lambda done: kernel.del_table_routes(routes, done))

        known = []
        for address in records.load(state_dir).holds:
            family = 6 if ":" in address else 4
            try:
                known.append((family, socket.inet_pton(AF[family], address)))
            except OSError:
                log.warning("journal names %r, not an address; skipped", address)
        counts = await remove_owned(kernel, cfg, delete, known, set(cidrs))
        counts["traffic_table"] = int(await remove_table())
    finally:
        kernel.close()
    counts["state_file"] = int(records.remove(state_dir))
    log.info(
        "cleanup: removed %d routes, %d policy prefixes, %d rules, %d set entries",
        counts["routes"], counts["cidr_routes"], counts["rules"], counts["set_entries"],
    )  # fmt: skip
    return counts
