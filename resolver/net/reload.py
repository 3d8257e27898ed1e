"""A reload of the breakout: verified before anything changes, then applied without a gap.

All or nothing. First verify, changing nothing: when the table, route protocol, rule priority
or the sets change, the new kernel side is opened, its sets checked and the tables read; any
failure raises BreakoutError and the running config stays in force, untouched. Then apply:
holds whose names no longer match any rule go, the rest stay; a changed `never_route` removes
the holds it now covers; the config's routes are diffed; links may be added, removed or
reordered: each family's routes go through the most preferred usable link as always, and a
link that stays active keeps its routes untouched; a new table, protocol or priority gets its
rules and routes before the old ones go, and so does a new breakout scope (`clients`,
`client_interfaces`) its rules. Past the point of no return a kernel error is logged
and counted (`netlink_errors`), never raised half-way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from policy.model import Policy
from resolver.config import BreakoutConfig
from resolver.hooks import wait
from resolver.net import traffic
from resolver.net.errors import BreakoutError
from resolver.net.kernelapi import KernelLike
from resolver.net.ledger import Ledger
from resolver.net.linkchoice import health_thresholds
from resolver.net.parts import MatcherLike, Parts
from resolver.net.probes import describe_rule, rule_specs, scope_specs
from resolver.net.routes import Route, owned

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Change:
    """What a new breakout config changes on the kernel side."""

    moved: bool  # table, route protocol or rule priority: everything moves over
    sets: bool  # ipsets or nftables sets
    links: bool  # the links, their gateways, or the health checks
    scope: bool = False  # breakout.clients or client_interfaces: the rules toward the table

    @classmethod
    def between(cls, old: BreakoutConfig, new: BreakoutConfig) -> Change:
        return cls(
            moved=(new.table, new.route_protocol, new.rule_priority)
            != (old.table, old.route_protocol, old.rule_priority),
            sets=(new.ipset4, new.ipset6, new.nftset4, new.nftset6)
            != (old.ipset4, old.ipset6, old.nftset4, old.nftset6),
            links=(new.links, new.health) != (old.links, old.health),
            scope=(new.clients, new.client_interfaces) != (old.clients, old.client_interfaces),
        )


async def verify(
    parts: Parts, old: BreakoutConfig, cfg: BreakoutConfig, change: Change,
    kernel_factory: Callable[[BreakoutConfig], KernelLike],
) -> tuple[KernelLike, list[Route]]:  # fmt: skip
    """The new config's kernel side, checked, and our routes in the old table (when the table
    moves). BreakoutError when it cannot be used; nothing is changed either way."""
    new = kernel_factory(cfg)
    try:
        await new.open(asyncio.get_running_loop(), create=False)
        await new.dump_routes()
        kernel = parts.installs.kernel
        old_routes = owned(await kernel.dump_routes(), old.route_protocol) if change.moved else []
    except BreakoutError:
        new.close()
        raise
    except OSError as err:  # netlink.NetlinkSocketError from a dump
        new.close()
        raise BreakoutError(f"breakout: cannot read the routing tables: {err}") from err
    return new, old_routes


async def apply(
    parts: Parts, old: BreakoutConfig, cfg: BreakoutConfig, change: Change,
    verified: tuple[KernelLike, list[Route]] | None, matcher: MatcherLike, policy: Policy,
) -> None:  # fmt: skip
    """Past the point of no return (see the module docstring): nothing here raises for a
    kernel error."""
    ledger, installs, links = parts.ledger, parts.installs, parts.links
    installs.ack_timeout = cfg.ack_timeout
    ledger.resize(cfg.max_entries, cfg.client_share)
    links.configure(cfg)
    parts.repairs.cfg = cfg
    dropped = [h for h in ledger
               if not any(matcher.match(n) is not None for n in h.name_expiries())]  # fmt: skip
    if dropped:
        log.info("policy change: removing %d holds whose names no longer match", len(dropped))
        installs.remove(dropped, "no longer in the policy")
    links.drop_never_routed()
    if change.links:
        await _new_links(parts, old, cfg)
    parts.probes.cfg = cfg
    if verified is not None:
        await _new_kernel(parts, old, cfg, change, *verified)
    if change.scope and not change.moved:
        await _new_scope(parts, old, cfg)
    resolvers = [host for host, _port in cfg.resolvers]
    gone, skipped = ledger.config_routes.load(policy.cidrs, resolvers, links.never)
    ledger.counters["skipped"] += skipped
    await installs.remove_prefixes(gone)
    links.reassess()
    await installs.install_prefixes(ledger.config_routes.missing(links.ready()))
    await wait(installs.flush_now())
    await _recount(parts, cfg, policy)
    log.info("breakout reconfigured: %d holds kept, %d removed, %d routes from the config",
             len(ledger), len(dropped), len(ledger.config_routes.routed))  # fmt: skip


async def _recount(parts: Parts, cfg: BreakoutConfig, policy: Policy) -> None:
    """The counters follow the new links and rows; counting turned on counts what is held,
    turned off deletes the table (accounting.Accounting.open)."""
    accounting = parts.installs.accounting
    accounting.configure(cfg, traffic.classes_of(policy.rules))
    counting = accounting.counting
    await accounting.open(asyncio.get_running_loop())
    if accounting.counting and not counting:
        parts.installs.count_held()


async def _new_links(parts: Parts, old: BreakoutConfig, cfg: BreakoutConfig) -> None:
    """New links or health checks: the links' states again (linkchoice.reconfigure keeps the
    verdicts of links that stay), the old probe tables and rules emptied, the prober
    restarted with the new ones."""
    probes, links = parts.probes, parts.links
    probes.pause()
    probes.prober = None
    await probes.drop_tables(old)
    thresholds = health_thresholds(cfg, parts.installs.kernel.can_probe)
    links.choice.reconfigure(cfg.links, thresholds, links.view, cfg.health == old.health)
    probes.cfg = cfg
    await probes.start(asyncio.get_running_loop())


async def _new_kernel(
    parts: Parts, old: BreakoutConfig, cfg: BreakoutConfig, change: Change,
    kernel: KernelLike, old_routes: list[Route],
) -> None:  # fmt: skip
    """Move to the verified kernel side: its sets, its rules and every route first, then the
    old table emptied and the old rules removed (both tables serve meanwhile: no gap)."""
    ledger, installs = parts.ledger, parts.installs
    old_kernel = installs.kernel
    try:
        await kernel.create_sets()
    except BreakoutError as err:
        _failed(ledger, "set entries for the missing sets will fail", err)
    if change.sets:
        installs.delete_entries(list(ledger), parts.clock())
    installs.use_kernel(kernel)
    kernel.set_next_hops(parts.links.choice.next_hops())
    try:
        await kernel.change_rules(rule_specs(cfg), ())
        installs.rules_ok = True
    except BreakoutError as err:
        installs.rules_ok = False  # the next install tries again
        _failed(ledger, f"no ip rule for table {cfg.table} yet", err)
    ready = parts.links.ready()
    ledger.must_reinstall()
    for h in ledger.missing.ready(ready):
        installs.enqueue(h)
    ledger.config_routes.mark(installed=False)
    await wait(installs.flush_now())
    if change.moved:
        installs.use_kernel(old_kernel)  # the old table is emptied through the old encoder
        await installs.delete_table_routes(old_routes + _known_routes(ledger, old))
        installs.use_kernel(kernel)
        try:
            await old_kernel.change_rules((), rule_specs(old))
        except BreakoutError as err:
            _failed(ledger, f"the ip rules for table {old.table} stay", err)
    old_kernel.close()
    ledger.moved()


async def _new_scope(parts: Parts, old: BreakoutConfig, cfg: BreakoutConfig) -> None:
    """New `clients` or `client_interfaces`: the new scope's rules in first, acknowledged, then
    the old scope's rules that it does not have out, so that a client in both scopes is never
    without a rule. After a flush (no rules until the next install) only the old ones go."""
    installs = parts.installs
    kernel = installs.kernel
    new_specs, old_specs = scope_specs(cfg), scope_specs(old)
    added = removed = 0
    try:
        if installs.rules_ok:
            added = await kernel.change_rules(new_specs, ())
        removed = await kernel.change_rules((), [s for s in old_specs if s not in new_specs])
    except BreakoutError as err:
        installs.rules_ok = False  # the next install puts the new ones back
        _failed(parts.ledger, "the ip rules of the breakout scope may be incomplete", err)
        return
    log.info("breakout scope changed: %d ip rules added, %d removed (%s)", added, removed,
             ", ".join(describe_rule(s) for s in new_specs))  # fmt: skip


def _known_routes(ledger: Ledger, old: BreakoutConfig) -> list[Route]:
    """Every hold and config route as a route of the old table (a route not there is fine)."""
    out = [Route(h.family, h.address, h.prefix_len, old.table, old.route_protocol, 0, 1, None,
                 None) for h in ledger]  # fmt: skip
    out += [Route(c.family, c.cidr.split("/")[0], c.length, old.table, old.route_protocol, 0, 1,
                  None, None) for c in ledger.config_routes.routed.values()]  # fmt: skip
    return out


def _failed(ledger: Ledger, consequence: str, err: Any) -> None:
    ledger.counters["netlink_errors"] += 1
    log.error("breakout reconfigure: %s; %s", err, consequence)
