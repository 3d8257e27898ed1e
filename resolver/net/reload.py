"""A reload of the breakout: verified before anything changes, then applied without a gap.

All or nothing. First verify, changing nothing: when the table, route protocol, rule priority
or the sets change, the new kernel side is opened, its sets checked and the tables read; any
failure raises BreakoutError and the running config stays in force, untouched. Then apply:
holds whose names no longer match any rule go, the rest stay; a changed `never_route` removes
the holds it now covers; the config's routes are diffed; links may be added, removed or
reordered: each family's routes go through the most preferred usable link as always, and a
link that stays active keeps its routes untouched; a new table, protocol or priority gets its
rules and routes before the old ones go. Past the point of no return a kernel error is logged
and counted (`netlink_errors`), never raised half-way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from policy.model import Policy
from resolver.config import BreakoutConfig
from resolver.net import failover, repair, watch
from resolver.net.errors import BreakoutError
from resolver.net.kernel import KernelLike
from resolver.net.neverroute import NeverRoute
from resolver.net.paths import Paths, health_thresholds
from resolver.net.routes import Route, owned

if TYPE_CHECKING:
    from resolver.net.breakout import Breakout, MatcherLike

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Change:
    """What a new breakout config changes on the kernel side."""

    moved: bool  # table, route protocol or rule priority: everything moves over
    sets: bool  # ipsets or nftables sets
    links: bool  # the links, their gateways, or the health checks

    @classmethod
    def between(cls, old: BreakoutConfig, new: BreakoutConfig) -> Change:
        return cls(
            moved=(new.table, new.route_protocol, new.rule_priority)
            != (old.table, old.route_protocol, old.rule_priority),
            sets=(new.ipset4, new.ipset6, new.nftset4, new.nftset6)
            != (old.ipset4, old.ipset6, old.nftset4, old.nftset6),
            links=(new.links, new.health) != (old.links, old.health),
        )


async def verify(
    b: Breakout, cfg: BreakoutConfig, change: Change
) -> tuple[KernelLike, list[Route]]:
    """The new config's kernel side, checked, and our routes in the old table (when the table
    moves). BreakoutError when it cannot be used; nothing is changed either way."""
    assert b._loop is not None
    new = b.kernel_factory(cfg)
    try:
        await new.open(b._loop, create=False)
        await new.dump_routes()
        old_routes = (
            owned(await b.kernel.dump_routes(), b.cfg.route_protocol) if change.moved else []
        )
    except BreakoutError:
        new.close()
        raise
    except OSError as err:  # netlink.NetlinkSocketError from a dump
        new.close()
        raise BreakoutError(f"breakout: cannot read the routing tables: {err}") from err
    return new, old_routes


async def reconfigure(
    b: Breakout, cfg: BreakoutConfig, matcher: MatcherLike, policy: Policy
) -> None:
    old = b.cfg
    if cfg.mode != old.mode:
        raise BreakoutError(f"changing breakout.mode ({old.mode} -> {cfg.mode}) needs a restart")
    if b._loop is None:  # mode off, or not started
        b.cfg, b.matcher, b.policy = cfg, matcher, policy
        return
    change = Change.between(old, cfg)
    verified = None
    if not b.dry_run and (change.moved or change.sets):
        verified = await verify(b, cfg, change)
    # Verified: the point of no return. Nothing below raises for a kernel error.
    b.matcher, b.policy = matcher, policy
    b.io.ack_timeout = cfg.ack_timeout
    b.ledger.resize(cfg.max_entries, cfg.client_share)
    if cfg.never_route != old.never_route:
        b.never = NeverRoute(cfg.never_route)
        b.never.set_connected(b.view.connected())
        b._skip.clear()
    dropped = [h for h in b.holds.values()
               if not any(matcher.match(n) is not None for n in h.name_expiries())]  # fmt: skip
    if dropped:
        log.info("policy change: removing %d holds whose names no longer match", len(dropped))
        repair.remove(b, dropped, "no longer in the policy")
    failover.drop_never_routed(b)
    if change.links:
        await _new_links(b, old, cfg)
    b.cfg = cfg
    if verified is not None:
        await _new_kernel(b, old, cfg, change, *verified)
    resolvers = [host for host, _port in cfg.resolvers]
    gone, skipped = b.ledger.routes.load(policy.cidrs, resolvers, b.never)
    b.counters["skipped"] += skipped
    await b.io.remove_prefixes(gone)
    b.reassess()
    await b.io.install_prefixes(b.ledger.routes.missing(b.paths.ready()))
    fut = b.io.flush_now()
    if fut is not None:
        await fut
    log.info("breakout reconfigured: %d holds kept, %d removed, %d routes from the config",
             len(b.holds), len(dropped), len(b.ledger.routes.routed))  # fmt: skip


async def _new_links(b: Breakout, old: BreakoutConfig, cfg: BreakoutConfig) -> None:
    """New links or health checks: a new `Paths` (links that stay keep their verdict: the
    same one, or with new thresholds its state), the old probe tables and rules emptied, the
    prober restarted with the new ones."""
    verdicts = {s.cfg.interface: s.verdict for s in b.paths.links}
    paths = Paths(cfg.links, health_thresholds(cfg))
    paths.follow(b.view)  # the links' state now: the first probe round needs it
    for state in paths.links:
        before = verdicts.get(state.cfg.interface)
        if before is None or state.verdict is None:
            continue  # a new link, or health checks turned on or off
        if cfg.health == old.health:
            state.verdict = before
        else:  # new thresholds or targets: the state stays until the rounds say otherwise
            state.verdict.healthy, state.verdict.rtt_ms = before.healthy, before.rtt_ms
    paths.active = {  # keep the active links known, so that only real changes move routes
        f: next((s for s in paths.links if s.cfg.interface == a.cfg.interface), None)
        if (a := b.paths.active[f]) is not None
        else None
        for f in (4, 6)
    }
    paths.last = dict(b.paths.last)
    b.paths = paths
    watch.stop_probes(b)
    b.prober = None
    await _drop_probe_tables(b, old)
    b.cfg = cfg
    await watch.start_health(b)


async def _drop_probe_tables(b: Breakout, old: BreakoutConfig) -> None:
    specs = [s for s in watch.rule_specs(old) if s.fwmark is not None]
    if not specs or b.dry_run:
        return
    try:
        await b.kernel.change_rules((), specs)
        for table in watch.probe_tables(old):
            stale = owned(await b.kernel.dump_routes(table), old.route_protocol)
            await b.io.delete_table_routes(stale)
    except (BreakoutError, OSError) as err:
        _failed(b, "the old probe tables and rules stay", err)


async def _new_kernel(
    b: Breakout, old: BreakoutConfig, cfg: BreakoutConfig, change: Change,
    kernel: KernelLike, old_routes: list[Route],
) -> None:  # fmt: skip
    """Move to the verified kernel side: its sets, its rules and every route first, then the
    old table emptied and the old rules removed (both tables serve meanwhile: no gap)."""
    old_kernel = b.kernel
    try:
        await kernel.create_sets()
    except BreakoutError as err:
        _failed(b, "set entries for the missing sets will fail", err)
    if change.sets:
        b.io.delete_entries(b.holds.values(), b.clock())
    b.kernel = b.io.kernel = kernel
    kernel.set_paths(b.paths.paths())
    try:
        await kernel.change_rules(watch.rule_specs(cfg), ())
        b.io.rules_ok = True
    except BreakoutError as err:
        b.io.rules_ok = False  # the next install tries again
        _failed(b, f"no ip rule for table {cfg.table} yet", err)
    ready = b.paths.ready()
    for h in b.holds.values():
        h.installed, h.set_expires = False, 0.0
        if ready[h.family] and h.batch is None:
            b.io.enqueue(h)
    b.ledger.routes.mark(installed=False)
    fut = b.io.flush_now()
    if fut is not None:
        await fut
    if change.moved:
        b.io.kernel = old_kernel  # the old table is emptied through the old encoder
        await b.io.delete_table_routes(old_routes + _known_routes(b, old))
        b.io.kernel = kernel
        try:
            await old_kernel.change_rules((), watch.rule_specs(old))
        except BreakoutError as err:
            _failed(b, f"the ip rules for table {old.table} stay", err)
    old_kernel.close()
    b.epoch += 1


def _known_routes(b: Breakout, old: BreakoutConfig) -> list[Route]:
    """Every hold and config route as a route of the old table (a route not there is fine)."""
    out = [Route(h.family, h.address, h.prefix_len, old.table, old.route_protocol, 0, 1, None, None)
           for h in b.holds.values()]  # fmt: skip
    out += [Route(c.family, c.cidr.split("/")[0], c.length, old.table, old.route_protocol, 0, 1,
                  None, None) for c in b.ledger.routes.routed.values()]  # fmt: skip
    return out


async def recreate_sets(b: Breakout) -> None:
    """The audit found a set gone: create it again and re-add every live entry."""
    try:
        await b.kernel.create_sets()
    except BreakoutError as err:
        _failed(b, "set entries stay missing", err)
        return
    for h in b.holds.values():
        h.set_expires = 0.0
        if h.installed:
            b.io.queue_refresh(h)


def _failed(b: Breakout, consequence: str, err: Any) -> None:
    b.counters["netlink_errors"] += 1
    log.error("breakout reconfigure: %s; %s", err, consequence)
