"""What the breakout watches: the kernel's link, address, route and rule events, and the probes.

- Netlink events (links.Monitor) keep the `NetView` current: a link or address change makes
  the breakout re-assess which link each family uses; one of our routes deleted by someone
  else is marked lost (the sweeper puts it back within a second); a rule deleted is put back
  by the next audit. When the kernel dropped events (ENOBUFS), the view and our table are read
  again.
- Health probes (health.Prober) run only with `breakout.health`; each link gets a probe table
  (`health.table` + its position, default `table` + 1 + position) and a rule sending its mark
  there, both carrying our route protocol, so that `--cleanup` finds them like the rest. A
  probe route someone else deletes is put back at once. After a flush (which removes them)
  the rounds pause, verdicts kept, until the next install has put our rules back (or at once
  when no link is usable: then nothing would be installed); the tables come back before the
  next round.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from resolver.config import BreakoutConfig
from resolver.net import netlink
from resolver.net.errors import BreakoutError
from resolver.net.health import Probe, Prober, warn_strict_rp_filter
from resolver.net.links import KIND_ADDR, KIND_LINK, KIND_ROUTE, KIND_RULE, Addr, Link, Monitor
from resolver.net.paths import LinkState, Paths
from resolver.net.routes import (
    AF,
    HOST_LEN,
    RT_TABLE_MAIN,
    Path,
    Route,
    Rule,
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


def probe_rule_specs(cfg: BreakoutConfig) -> list[RuleSpec]:
    return [spec for spec in rule_specs(cfg) if spec.fwmark is not None]


def owned_probe_rules(rules: list[Rule], cfg: BreakoutConfig) -> list[RuleSpec]:
    """The probe rules in the kernel that carry our protocol, whichever config made them:
    resolverd's only rules with a fwmark."""
    found = {
        RuleSpec(r.priority, r.table, r.protocol, r.fwmark)
        for r in rules
        if r.protocol == cfg.route_protocol and r.fwmark is not None and not r.selectors
    }
    return sorted(found, key=lambda spec: (spec.priority, spec.table, spec.fwmark or 0))


# -- the view and its events ----------------------------------------------------------------------


async def load_view(b: Breakout, loop: asyncio.AbstractEventLoop) -> None:
    if b._view_given:
        return
    if b._watch:
        b._monitor = Monitor(
            lambda kind, new, obj: on_event(b, kind, new, obj),
            lambda: on_overrun(b),
            own_routes=lambda: (b.cfg.table, b.cfg.route_protocol),  # on_route ignores these
        )
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
        if not new and r.protocol == cfg.route_protocol:
            on_probe_route_gone(b, r)
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
    if b._probes_live:
        b._probe_paths.clear()  # a probe route's deletion may be among the lost: program again
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
    """With health checks: probe tables and rules in place, one round to learn each link's
    state before anything is installed, then rounds every interval."""
    health = b.cfg.health
    if b.dry_run or b._loop is None:
        return
    await drop_stale_probes(b)  # with health checks off too: then every probe rule is stale
    if health is None:
        return
    b.prober = Prober(health.targets, health.interval, health.timeout,
                      lambda i, good, rtt: on_probe(b, i, good, rtt),
                      lambda: probe_gate(b))  # fmt: skip
    warn_strict_rp_filter(b.cfg)
    await restore_probes(b)
    await b.prober.round()
    b._probe_task = b._loop.create_task(b.prober.run())
    b._tasks.append(b._probe_task)


async def drop_stale_probes(b: Breakout) -> None:
    """Probe rules of ours that no link of this config uses (an earlier config had more
    links, or other marks or tables) go, with the routes of ours in their tables."""
    cfg = b.cfg
    try:
        stale = [s for s in owned_probe_rules(await b.kernel.dump_rules(), cfg)
                 if s not in probe_rule_specs(cfg)]  # fmt: skip
        if not stale:
            return
        await b.kernel.change_rules((), stale)
        keep = {cfg.table, *probe_tables(cfg)}
        routes: list[Route] = []
        for table in sorted({s.table for s in stale} - keep):
            routes += owned(await b.kernel.dump_routes(table), cfg.route_protocol)
        if routes:
            gone: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
            b.kernel.del_table_routes(routes, gone.set_result)
            b.io.errnos.settle("remove stale probe routes")(await gone)
        log.info("removed %d probe rules and %d probe routes an earlier config left",
                 len(stale), len(routes))  # fmt: skip
    except (BreakoutError, OSError) as err:
        b.counters["netlink_errors"] += 1
        log.error("cannot remove the probe rules an earlier config left: %s", err)


async def restore_probes(b: Breakout) -> None:
    """Every link's probe table, then the probe rules, in the kernel; awaited, so that the
    next probe finds them. BreakoutError when a rule is refused."""
    b._probes_live = True
    b._probe_paths.clear()
    done = update_probe_tables(b)
    if done is not None:
        await done
    await b.kernel.change_rules(probe_rule_specs(b.cfg), ())


async def probe_gate(b: Breakout) -> bool:
    """Whether a probe round may run now (health.Prober's gate). After a flush our rules and
    probe tables are gone: a probe would find no path and fail for no fault of the link. The
    rounds pause, the verdicts kept, until an install has put our rules back (`rules_ok`),
    or at once when no link is usable (nothing would ever be installed)."""
    if b._probes_live:
        return True
    if not b.io.rules_ok and any(b.paths.ready().values()):
        return False
    try:
        await restore_probes(b)
    except (BreakoutError, OSError) as err:
        b._probes_live = False
        b.counters["netlink_errors"] += 1
        b.io.errnos.ratelog.log(logging.ERROR, "probe-rules", "health probes paused: cannot "
                                "put the probe rules back: %s", err)  # fmt: skip
        return False
    log.info("health probes resume: probe tables and rules are back")
    return True


def stop_probes(b: Breakout) -> None:
    """Flush or a reload is about to remove the probe tables and rules: stop the rounds (the
    one in progress is cancelled, its result void) and leave the tables alone from now on."""
    b._probes_live = False
    b._probe_paths.clear()
    if b._probe_task is not None:
        b._probe_task.cancel()
        b._probe_task = None
    b._tasks = [task for task in b._tasks if not task.done()]


def resume_probes(b: Breakout) -> None:
    """After a flush: the rounds again, each behind `probe_gate`."""
    if b.prober is not None and b._loop is not None and b._probe_task is None:
        b._probe_task = b._loop.create_task(b.prober.run())
        b._tasks.append(b._probe_task)


def update_probe_tables(b: Breakout) -> asyncio.Future[None] | None:
    """Each link's probe table: the default route through it while it exists (whatever its
    health: the probes must be able to see it come back), unreachable behind it. Only what
    changed is sent; returns a future settled with the kernel's answers, or None when nothing
    was sent."""
    health = b.cfg.health
    if health is None or b.dry_run:
        return None
    probes: list[Probe] = []
    pending: list[asyncio.Future[list[int]]] = []
    for i, state in enumerate(b.paths.links):
        families = frozenset(f for f in (4, 6) if state.carries[f])
        probes.append(Probe(state.cfg.interface, health.fwmark + i, families))
        if not b._probes_live or b._loop is None:
            continue
        oif = state.link.index if state.link is not None else None
        for family in (4, 6):
            path = Path(oif, state.gateway(family)) if oif and state.carries[family] else None
            key = (b.cfg.probe_table + i, family)
            if b._probe_paths.get(key, 0) != path:
                b._probe_paths[key] = path
                fut: asyncio.Future[list[int]] = b._loop.create_future()
                settle = b.io.errnos.settle(f"probe table {key[0]}")
                b.kernel.probe_table(key[0], family, path, _then(settle, fut.set_result))
                pending.append(fut)
    if b.prober is not None:
        b.prober.probes = probes
    if not pending:
        return None
    return asyncio.ensure_future(_settled(pending))


def _then(
    first: Callable[[list[int]], list[int]], then: Callable[[list[int]], object]
) -> Callable[[list[int]], None]:
    def settled(codes: list[int]) -> None:
        then(first(codes))

    return settled


async def _settled(pending: list[asyncio.Future[list[int]]]) -> None:
    await asyncio.gather(*pending)


def on_probe_route_gone(b: Breakout, r: Route) -> None:
    """A route of ours left a probe table. Ours to remove (flush, reload): nothing to do, the
    table is not live. Someone else's doing (or the kernel's, when the link went): program the
    table again; the link's own state decides what goes back."""
    if not b._probes_live or b.cfg.health is None:
        return
    key = (r.table, r.family)
    if key in b._probe_paths and r.table in probe_tables(b.cfg):
        del b._probe_paths[key]
        log.info("probe table %d lost its route %s/%d: putting it back", r.table, r.dst,
                 r.dst_len)  # fmt: skip
        b.schedule_reassess()


def on_probe(b: Breakout, index: int, good: bool, rtt: float | None) -> None:
    if index >= len(b.paths.links):
        return
    state = b.paths.links[index]
    verdict = state.verdict
    first = verdict is not None and verdict.healthy is None
    if verdict is None or not verdict.round(good, rtt):
        return
    name = state.cfg.interface
    if first:
        log.info("breakout link %s: %s in the first probe round", name,
                 "healthy" if good else "no target answered")  # fmt: skip
    elif verdict.healthy:
        log.warning("breakout link %s is healthy again (%d good probe rounds in a row)", name,
                    verdict.good)  # fmt: skip
    else:
        log.warning("breakout link %s is unhealthy: %d probe rounds failed in a row", name,
                    verdict.bad)  # fmt: skip
    # Before the breakout is active (its first round at start), nothing is installed yet:
    # the start's reconcile installs through the links chosen now.
    b.reassess(initial=not b._active)


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
