"""The health probing of the breakout links: the probe tables, their rules, and the rounds.

With `breakout.health` each link gets a probe table (`health.table` + its position, default
`table` + 1 + position) holding the default route through the link (whatever its health: the
probes must see it come back) and `unreachable default` behind it, and a rule sending the
link's mark there; both carry our route protocol, so that `--cleanup` finds them like the rest.
A probe route someone else deletes is put back at once. After a flush (which removes them)
the rounds pause, verdicts kept, until the next install has put our rules back (or at once when
no link is usable: then nothing would be installed); the tables come back before the next round.

`Probes` owns all of it: the prober (health.Prober), which hop each probe table holds, whether
the tables are live, the rounds' task. A round's verdicts go to the links' states
(linkchoice.LinkState.verdict); a verdict that changes calls `on_change`, which re-assesses the
links (linkwatch). A kernel side that cannot probe (dry-run) gets no health checks at all.

`rule_specs` lists every rule resolverd owns: the scope's rules toward the breakout table
(`scope_specs`: `from all`, or per client prefix and ingress interface) and the probe rules.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable

from resolver.config import BreakoutConfig, HealthConfig
from resolver.net.errors import BreakoutError
from resolver.net.health import PathChecks, Probe, Prober, warn_strict_rp_filter
from resolver.net.installs import Installs
from resolver.net.kernelapi import settled_future
from resolver.net.linkchoice import LinkChoice
from resolver.net.routes import NextHop, Route, Rule, RuleSpec, owned

log = logging.getLogger(__name__)


def scope_specs(cfg: BreakoutConfig) -> list[RuleSpec]:
    """The rules that send traffic to the breakout table, at `rule_priority`: `from all` while
    the scope is everyone; else (resolver.scope: the union of `clients` and
    `client_interfaces`) one `from PREFIX` per client prefix (its family only), one `iif NAME`
    per interface (both families), and `iif lo`: the router's own traffic (the queries to
    `breakout.resolvers`) always breaks out."""
    prio, table, proto = cfg.rule_priority, cfg.table, cfg.route_protocol
    if not cfg.clients and not cfg.client_interfaces:
        return [RuleSpec(prio, table, proto)]
    specs: list[RuleSpec] = []
    for prefix in cfg.clients:
        net = ipaddress.ip_network(prefix, strict=False)
        src = str(net) if net.prefixlen else None  # /0: the kernel shows it as `from all`
        specs.append(RuleSpec(prio, table, proto, src=src, family=net.version))
    for name in ("lo", *cfg.client_interfaces):
        specs.append(RuleSpec(prio, table, proto, iif=name))
    return list(dict.fromkeys(specs))


def rule_specs(cfg: BreakoutConfig) -> list[RuleSpec]:
    """The rules resolverd owns: the scope's (`scope_specs`), and one per link for its probes."""
    specs = scope_specs(cfg)
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


def owned_rules(rules: list[Rule], cfg: BreakoutConfig) -> list[RuleSpec]:
    """Every rule in the kernel that carries our protocol and no selector resolverd never sets,
    whichever config made it: the scope's rules and the probe rules, earlier configs' included."""
    found = {
        RuleSpec(r.priority, r.table, r.protocol, r.fwmark, r.src, r.iif,
                 r.family if r.src is not None else None)
        for r in rules
        if r.protocol == cfg.route_protocol and not r.selectors
    }  # fmt: skip
    return sorted(found, key=_order)


def stale_scope_rules(rules: list[Rule], cfg: BreakoutConfig) -> list[RuleSpec]:
    """Our rules at `rule_priority` toward the breakout table that `cfg`'s scope does not have
    (an earlier config's `clients` or `client_interfaces`)."""
    want = scope_specs(cfg)
    return [
        s for s in owned_rules(rules, cfg)
        if s.fwmark is None and s.priority == cfg.rule_priority and s.table == cfg.table
        and s not in want
    ]  # fmt: skip


def owned_probe_rules(rules: list[Rule], cfg: BreakoutConfig) -> list[RuleSpec]:
    """The probe rules in the kernel that carry our protocol, whichever config made them:
    resolverd's only rules with a fwmark."""
    return [s for s in owned_rules(rules, cfg) if s.fwmark is not None and s.src is None
            and s.iif is None]  # fmt: skip


def describe_rule(spec: RuleSpec) -> str:
    """`from 192.0.2.0/24 lookup 365` as `ip rule` would show it (for the log)."""
    words = [f"from {spec.src or 'all'}"]
    if spec.iif is not None:
        words.append(f"iif {spec.iif}")
    if spec.fwmark is not None:
        words.append(f"fwmark {spec.fwmark:#x}")
    return " ".join([*words, f"lookup {spec.table}"])


def _order(spec: RuleSpec) -> tuple[int, int, int, str, str]:
    return (spec.priority, spec.table, spec.fwmark or 0, spec.src or "", spec.iif or "")


class Probes:
    """The health probing of one breakout configuration (see the module docstring)."""

    def __init__(
        self, cfg: BreakoutConfig, installs: Installs, choice: LinkChoice,
        on_change: Callable[[], None], checks: PathChecks | None = None,
    ) -> None:  # fmt: skip
        self.cfg = cfg
        self.checks = checks if checks is not None else PathChecks()
        self.installs = installs
        self.choice = choice
        self.on_change = on_change  # a link's verdict changed: re-assess the links
        self.prober: Prober | None = None
        self.live = False  # the probe tables and rules are in place
        self.hops: dict[tuple[int, int], NextHop | None] = {}  # (table, family) -> its route
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def health(self) -> HealthConfig | None:
        return self.cfg.health if self.installs.kernel.can_probe else None

    async def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """With health checks: probe tables and rules in place, one round to learn each link's
        state before anything is installed, then rounds every interval."""
        self._loop = loop
        if not self.installs.kernel.can_probe:
            return
        await self.drop_stale()  # with health checks off too: then every probe rule is stale
        health = self.health
        if health is None:
            return
        self.prober = Prober(health.targets, health.interval, health.timeout, self._verdict,
                             self.gate, self.checks.probe)  # fmt: skip
        warn_strict_rp_filter(self.cfg, self.checks.read_sysctl)
        await self.restore()
        await self.prober.round()
        self._task = loop.create_task(self.prober.run())

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def drop_stale(self) -> None:
        """Probe rules of ours that no link of this config uses (an earlier config had more
        links, or other marks or tables) go, with the routes of ours in their tables."""
        cfg, kernel = self.cfg, self.installs.kernel
        try:
            stale = [s for s in owned_probe_rules(await kernel.dump_rules(), cfg)
                     if s not in probe_rule_specs(cfg)]  # fmt: skip
            if not stale:
                return
            await kernel.change_rules((), stale)
            keep = {cfg.table, *probe_tables(cfg)}
            routes: list[Route] = []
            for table in sorted({s.table for s in stale} - keep):
                routes += owned(await kernel.dump_routes(table), cfg.route_protocol)
            if routes:
                codes = await settled_future(lambda done: kernel.del_table_routes(routes, done))
                self.installs.errnos.settle("remove stale probe routes")(codes)
            log.info("removed %d probe rules and %d probe routes an earlier config left",
                     len(stale), len(routes))  # fmt: skip
        except (BreakoutError, OSError) as err:
            self.installs.counters["netlink_errors"] += 1
            log.error("cannot remove the probe rules an earlier config left: %s", err)

    async def drop_tables(self, old: BreakoutConfig) -> None:
        """A reload changed the links or the health checks: the old probe rules and tables go
        (the new ones come with `start`)."""
        specs = probe_rule_specs(old)
        if not specs or not self.installs.kernel.can_probe:
            return
        kernel = self.installs.kernel
        try:
            await kernel.change_rules((), specs)
            for table in probe_tables(old):
                stale = owned(await kernel.dump_routes(table), old.route_protocol)
                await self.installs.delete_table_routes(stale)
        except (BreakoutError, OSError) as err:
            self.installs.counters["netlink_errors"] += 1
            log.error("breakout reconfigure: %s; the old probe tables and rules stay", err)

    async def restore(self) -> None:
        """Every link's probe table, then the probe rules, in the kernel; awaited, so that the
        next probe finds them. BreakoutError when a rule is refused."""
        self.live = True
        self.hops.clear()
        done = self.update_tables()
        if done is not None:
            await done
        await self.installs.kernel.change_rules(probe_rule_specs(self.cfg), ())

    async def gate(self) -> bool:
        """Whether a probe round may run now (health.Prober's gate). After a flush our rules and
        probe tables are gone: a probe would find no path and fail for no fault of the link. The
        rounds pause, the verdicts kept, until an install has put our rules back (`rules_ok`),
        or at once when no link is usable (nothing would ever be installed)."""
        if self.live:
            return True
        if not self.installs.rules_ok and any(self.choice.ready().values()):
            return False
        try:
            await self.restore()
        except (BreakoutError, OSError) as err:
            self.live = False
            self.installs.counters["netlink_errors"] += 1
            self.installs.errnos.ratelog.log(
                logging.ERROR, "probe-rules", "health probes paused: cannot put the probe "
                "rules back: %s", err,
            )  # fmt: skip
            return False
        log.info("health probes resume: probe tables and rules are back")
        return True

    def pause(self) -> None:
        """Flush or a reload is about to remove the probe tables and rules: stop the rounds (the
        one in progress is cancelled, its result void) and leave the tables alone from now on."""
        self.live = False
        self.hops.clear()
        self.close()

    def resume(self) -> None:
        """After a flush: the rounds again, each behind `gate`."""
        if self.prober is not None and self._loop is not None and self._task is None:
            self._task = self._loop.create_task(self.prober.run())

    def forget_hops(self) -> None:
        """Netlink events were lost: a probe route's deletion may be among them."""
        if self.live:
            self.hops.clear()

    def update_tables(self) -> asyncio.Future[None] | None:
        """Each link's probe table: the default route through it while it exists (whatever its
        health: the probes must be able to see it come back), unreachable behind it. Only what
        changed is sent; returns a future settled with the kernel's answers, or None when
        nothing was sent."""
        health = self.health
        if health is None:
            return None
        probes: list[Probe] = []
        pending: list[asyncio.Future[list[int]]] = []
        for i, state in enumerate(self.choice.links):
            families = frozenset(f for f in (4, 6) if state.carries[f])
            probes.append(Probe(state.cfg.interface, health.fwmark + i, families))
            if not self.live or self._loop is None:
                continue
            oif = state.link.index if state.link is not None else None
            for family in (4, 6):
                hop = NextHop(oif, state.gateway(family)) if oif and state.carries[family] else None
                key = (self.cfg.probe_table + i, family)
                if self.hops.get(key, 0) != hop:
                    self.hops[key] = hop
                    pending.append(self._program(key[0], family, hop))
        if self.prober is not None:
            self.prober.probes = probes
        if not pending:
            return None
        return asyncio.ensure_future(_settled(pending))

    def _program(self, table: int, family: int, hop: NextHop | None) -> asyncio.Future[list[int]]:
        kernel, check = self.installs.kernel, self.installs.errnos.settle(f"probe table {table}")
        return settled_future(lambda done: kernel.probe_table(table, family, hop, done), check)

    def route_gone(self, r: Route) -> bool:
        """A route of ours left a probe table. Ours to remove (flush, reload): nothing to do,
        the table is not live. Someone else's doing (or the kernel's, when the link went): True,
        the table is to be programmed again (the link's own state decides what goes back)."""
        if not self.live or self.cfg.health is None:
            return False
        key = (r.table, r.family)
        if key in self.hops and r.table in probe_tables(self.cfg):
            del self.hops[key]
            log.info("probe table %d lost its route %s/%d: putting it back", r.table, r.dst,
                     r.dst_len)  # fmt: skip
            return True
        return False

    def _verdict(self, index: int, good: bool, rtt: float | None) -> None:
        links = self.choice.links
        if index >= len(links):
            return
        state = links[index]
        verdict = state.verdict
        first = verdict is not None and verdict.healthy is None
        if verdict is None or not verdict.round(good, rtt):
            return
        name = state.cfg.interface
        if first:
            log.info("breakout link %s: %s in the first probe round", name,
                     "healthy" if good else "no target answered")  # fmt: skip
        elif verdict.healthy:
            log.warning("breakout link %s is healthy again (%d good probe rounds in a row)",
                        name, verdict.good)  # fmt: skip
        else:
            log.warning("breakout link %s is unhealthy: %d probe rounds failed in a row", name,
                        verdict.bad)  # fmt: skip
        self.on_change()


async def _settled(pending: list[asyncio.Future[list[int]]]) -> None:
    await asyncio.gather(*pending)
