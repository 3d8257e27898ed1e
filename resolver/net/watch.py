"""What the breakout watches: the kernel's link, address, route and rule events, and the probes.

- Netlink events (links.Monitor) keep the `NetView` current: a link or address change makes
  the breakout re-assess which link each family uses; one of our routes deleted by someone
  else is marked lost (the sweeper puts it back within a second); a rule deleted is put back
  by the next audit. When the kernel dropped events (ENOBUFS), the view and our table are read
  again.
- Health probes (health.Prober) run only with `breakout.health`; each link gets a probe table
  (`health.table` + its position, default `table` + 1 + position) and a rule sending its mark
  there, both carrying our route protocol, so that `--cleanup` finds them like the rest.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING

from resolver.config import BreakoutConfig
from resolver.net import netlink
from resolver.net.health import Probe, Prober
from resolver.net.links import KIND_ADDR, KIND_LINK, KIND_ROUTE, KIND_RULE, Addr, Link, Monitor
from resolver.net.paths import LinkState, Paths
from resolver.net.routes import (
    AF,
    HOST_LEN,
    RT_TABLE_MAIN,
    Path,
    Route,
    RuleSpec,
    foreign_hosts,
    owned,
)

if TYPE_CHECKING:
    from resolver.net.breakout import Breakout

log = logging.getLogger(__name__)


def rule_specs(cfg: BreakoutConfig) -> list[RuleSpec]:
    """The rules resolverd owns: `from all lookup TABLE`, and one per link for its probes."""
    specs = [RuleSpec(cfg.rule_priority, cfg.table, cfg.route_protocol)]
    if cfg.health is not None:
        for i, _link in enumerate(cfg.links):
            specs.append(
                RuleSpec(cfg.rule_priority - 1, cfg.probe_table + i, cfg.route_protocol,
                         cfg.health.fwmark + i)
            )  # fmt: skip
    return specs


def probe_tables(cfg: BreakoutConfig) -> list[int]:
    return [cfg.probe_table + i for i in range(len(cfg.links))] if cfg.health else []


# -- the view and its events ----------------------------------------------------------------------


async def load_view(b: Breakout, loop: asyncio.AbstractEventLoop) -> None:
    if b._view_given:
        return
    if b._watch:
        b._monitor = Monitor(lambda kind, new, obj: on_event(b, kind, new, obj),
                             lambda: on_overrun(b))  # fmt: skip
        b._monitor.start(loop)  # before the dump: no change falls between the two
    b._reader = netlink.Channel(netlink.NETLINK_ROUTE, strict=True)
    b._reader.attach(loop)
    await b.view.load(b._reader)


def on_event(b: Breakout, kind: int, new: bool, obj: object) -> None:
    if kind == KIND_ROUTE:
        assert isinstance(obj, Route)
        on_route(b, new, obj)
    elif kind == KIND_LINK:
        assert isinstance(obj, Link)
        b.view.apply_link(new, obj)
        b.schedule_reassess()
    elif kind == KIND_ADDR:
        assert isinstance(obj, list)
        addrs: list[Addr] = obj
        b.view.apply_addr(new, addrs)
        b.schedule_reassess()
    elif kind == KIND_RULE and not new and b._loop is not None and b._active:
        b._loop.create_task(b.audit())  # someone deleted a rule: maybe ours


def on_route(b: Breakout, new: bool, r: Route) -> None:
    cfg = b.cfg
    if r.table == RT_TABLE_MAIN:
        if b.view.apply_route(new, r):
            b.schedule_reassess()
        return
    if r.table != cfg.table:
        return
    host = r.dst_len == HOST_LEN[r.family]
    if r.protocol != cfg.route_protocol:
        if host:  # someone else's route in our table: never take its address over
            if new:
                b.foreign.add(r.dst)
            else:
                b.foreign.discard(r.dst)
            b._skip.clear()
        return
    key = f"{r.dst}/{r.dst_len}"
    if new or b.io.own_delete(key):
        return
    h = b.holds.get(socket.inet_pton(AF[r.family], r.dst)) if host else None
    if h is not None and h.installed:
        h.installed = False
        b.counters["route_lost"] += 1
        b.epoch += 1
    c = b.ledger.routes.routed.get(key)
    if c is not None:
        c.installed = False  # the sweeper puts it back


def on_overrun(b: Breakout) -> None:
    if b._loop is None or (b._resync is not None and not b._resync.done()):
        return
    b._resync = b._loop.create_task(resync(b))


async def resync(b: Breakout) -> None:
    """Events were lost: re-read the view and our table, and believe the kernel."""
    if b._reader is not None:
        await b.view.load(b._reader)
    b.io.forget_own_deletes()
    b.reassess()
    table = await b.kernel.dump_routes()
    b.foreign = foreign_hosts(table, b.cfg.route_protocol)
    present = {f"{r.dst}/{r.dst_len}" for r in owned(table, b.cfg.route_protocol)}
    for h in b.holds.values():
        if h.installed and f"{h.address}/{h.prefix_len}" not in present:
            h.installed = False
            b.counters["route_lost"] += 1
            b.epoch += 1
    for c in b.ledger.routes.routed.values():
        if c.installed and c.cidr not in present:
            c.installed = False


# -- health ---------------------------------------------------------------------------------------


async def start_health(b: Breakout) -> None:
    """With health checks: probe tables in place, one round to learn each link's state before
    anything is installed, then rounds every interval."""
    health = b.cfg.health
    if health is None or b.dry_run or b._loop is None:
        return
    b.prober = Prober(health.targets, health.interval, health.timeout,
                      lambda i, good, rtt: on_probe(b, i, good, rtt))  # fmt: skip
    update_probe_tables(b)
    await b.kernel.change_rules(rule_specs(b.cfg), ())
    await b.prober.round()
    b._probe_task = b._loop.create_task(b.prober.run())
    b._tasks.append(b._probe_task)


def update_probe_tables(b: Breakout) -> None:
    """Each link's probe table: the default route through it while it exists (whatever its
    health: the probes must be able to see it come back), unreachable behind it."""
    health = b.cfg.health
    if health is None or b.dry_run:
        return
    probes: list[Probe] = []
    for i, state in enumerate(b.paths.links):
        families = frozenset(f for f in (4, 6) if state.carries[f])
        probes.append(Probe(state.cfg.interface, health.fwmark + i, families))
        oif = state.link.index if state.link is not None else None
        for family in (4, 6):
            path = Path(oif, state.gateway(family)) if oif and state.carries[family] else None
            key = (b.cfg.probe_table + i, family)
            if b._probe_paths.get(key, 0) != path:
                b._probe_paths[key] = path
                b.kernel.probe_table(key[0], family, path, b.io.errnos.settle("probe table"))
    if b.prober is not None:
        b.prober.probes = probes


def on_probe(b: Breakout, index: int, good: bool, rtt: float | None) -> None:
    if index >= len(b.paths.links):
        return
    state = b.paths.links[index]
    verdict = state.verdict
    if verdict is None or not verdict.round(good, rtt):
        return
    if verdict.healthy:
        log.warning("breakout link %s is healthy again (%d good probe rounds)",
                    state.cfg.interface, verdict.good)  # fmt: skip
    else:
        log.warning("breakout link %s is unhealthy: %d probe rounds failed in a row",
                    state.cfg.interface, verdict.bad)  # fmt: skip
    b.reassess()


def why(paths: Paths, state: LinkState | None = None) -> str:
    """Why links are not used: "wan0: unhealthy; wan1: link down"."""
    states = [state] if state is not None else paths.links
    out = []
    for s in states:
        if s.link is None:
            out.append(f"{s.cfg.interface}: missing")
        elif not (s.carries[4] or s.carries[6]):
            out.append(f"{s.cfg.interface}: link down or no address")
        elif s.healthy is False:
            out.append(f"{s.cfg.interface}: unhealthy")
        else:
            out.append(f"{s.cfg.interface}: not preferred for this family")
    return "; ".join(out) or "no links configured"
