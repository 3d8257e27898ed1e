"""What the breakout watches of the router: links, addresses, routes, rules, and where it may route.

`LinkWatch` owns the view of the router (links.NetView, kept current by links.Monitor's
netlink events), the networks connected to it, the host routes someone else put in our table,
which addresses must never be routed (neverroute.NeverRoute, with its cache of reasons), and
which link each family uses (linkchoice.LinkChoice). It re-assesses after every link, address
or main-table route event, every probe verdict that changes and every reload:

- connected networks are never routed: holds inside one are removed, the config's routes
  overlapping one are held back (and routed again when that network goes);
- when a family's active link changes, its routes move in one batch (`_move`): withdrawn when
  no link is usable (the traffic stays on the main table: the tunnel; the holds are kept),
  restored when one is again, or re-installed through the new link (NLM_F_REPLACE: a
  connection opened after the switch takes the new path at once). Set entries stay. Each move
  (the families that changed together) is logged once with its reason and counted once
  (`failovers`); `withdrawn` and `restored` count the holds.

One of our routes deleted by someone else is marked lost (the sweep puts it back within a
second); a rule deleted calls `on_rule_gone` (an audit). When the kernel dropped events
(ENOBUFS), the view and our table are read again and believed.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any, Final

from resolver.config import BreakoutConfig
from resolver.net import netlink
from resolver.net.installs import Installs
from resolver.net.linkchoice import LinkChoice, LinkState
from resolver.net.links import (
    KIND_ADDR,
    KIND_LINK,
    KIND_ROUTE,
    KIND_RULE,
    Addr,
    Link,
    Monitor,
    NetView,
)
from resolver.net.neverroute import NeverRoute
from resolver.net.probes import Probes
from resolver.net.routes import AF, HOST_LEN, RT_TABLE_MAIN, Route, foreign_hosts, owned

log = logging.getLogger(__name__)

SKIP_CACHE_MAX: Final = 10_000


class LinkWatch:
    """The router as the breakout sees it (see the module docstring)."""

    def __init__(
        self, cfg: BreakoutConfig, installs: Installs, choice: LinkChoice,
        view: NetView | None = None, watch: bool = True,
    ) -> None:  # fmt: skip
        self.cfg = cfg
        self.installs = installs
        self.ledger = installs.ledger
        self.choice = choice
        self.probes: Probes | None = None  # set by the breakout once it has them
        self.view = view if view is not None else NetView()
        self.never = NeverRoute(cfg.never_route, cfg.dns_servers)
        self.foreign: set[str] = set()  # host routes someone else put in our table
        self.on_rule_gone: Callable[[], None] | None = None
        self._given = view is not None  # a test's view: no netlink at all
        self._watch = watch
        self._skip: dict[bytes, str] = {}
        self._connected: list[tuple[str, str]] | None = None
        self._monitor: Monitor | None = None
        self._reader: netlink.Channel | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reassess: asyncio.Handle | None = None
        self._resync: asyncio.Task[None] | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Listen to the kernel's events, then read the view (no change falls between)."""
        self._loop = loop
        if self._given:
            return
        if self._watch:
            self._monitor = Monitor(
                self.on_event, self._overrun,
                own_routes=lambda: (self.cfg.table, self.cfg.route_protocol),
            )  # fmt: skip
            self._monitor.start(loop)
        self._reader = netlink.Channel(netlink.NETLINK_ROUTE, strict=True)
        self._reader.attach(loop)
        await self.view.load(self._reader)

    def close(self) -> None:
        if self._reassess is not None:
            self._reassess.cancel()
            self._reassess = None
        for closable in (self._monitor, self._reader):
            if closable is not None:
                closable.close()
        self._monitor = self._reader = None
        self._loop = None

    def configure(self, cfg: BreakoutConfig) -> None:
        """A reload: a new never_route list (or new DNS servers) takes effect at once (the
        holds it now covers go with the next `reassess`)."""
        if (cfg.never_route, cfg.dns_servers) != (self.cfg.never_route, self.cfg.dns_servers):
            self.never = NeverRoute(cfg.never_route, cfg.dns_servers)
            self.never.set_connected(self.view.connected())
            self._skip.clear()
        self.cfg = cfg

    # -- where routes may go --------------------------------------------------------------------

    def ready(self) -> dict[int, bool]:
        return self.choice.ready()

    def ready_for(self, family: int) -> bool:
        return self.choice.ready_for(family)

    def any_ready(self) -> bool:
        return self.choice.any_ready()

    def skip_reason(self, packed: bytes) -> str | None:
        """Why the address must not be routed (never_route, a connected network, someone
        else's route in our table), or None."""
        reason = self.never.reason(4 if len(packed) == 4 else 6, packed)
        if reason is None and self.foreign:
            address = socket.inet_ntop(AF[4 if len(packed) == 4 else 6], packed)
            if address in self.foreign:
                reason = f"table {self.cfg.table} holds a route for it that resolverd does not own"
        return reason

    def cached_skip_reason(self, packed: bytes) -> str | None:
        """`skip_reason`, remembered for an address refused (the hot path asks it often)."""
        reason = self._skip.get(packed)
        if reason is None:
            reason = self.skip_reason(packed)
            if reason is not None:
                if len(self._skip) >= SKIP_CACHE_MAX:
                    self._skip.clear()
                self._skip[packed] = reason
        return reason

    def set_foreign(self, hosts: set[str]) -> None:
        self.foreign = hosts
        self._skip.clear()

    # -- re-assessing -----------------------------------------------------------------------------

    def schedule_reassess(self) -> None:
        if self._reassess is None and self._loop is not None:
            self._reassess = self._loop.call_soon(self.reassess)

    def reassess(self, initial: bool = False) -> None:
        """Recompute connected networks and the links' usability; act on what changed."""
        self._reassess = None
        connected = self.view.connected()
        if connected != self._connected:
            self._connected = connected
            self.never.set_connected(connected)
            self._skip.clear()
            if not initial:
                self.drop_never_routed()
                self._follow_connected()
        self.choice.follow(self.view)
        if self.probes is not None:
            self.probes.update_tables()
        changes = self.choice.choose()
        self.installs.kernel.set_next_hops(self.choice.next_hops())
        if initial or not changes:
            return
        # One move per (old, new) pair: both families leaving wan0 for wan1 are one event.
        moves: dict[tuple[LinkState | None, LinkState | None], list[int]] = {}
        for family, (old, new) in changes.items():
            moves.setdefault((old, new), []).append(family)
        for (old, new), families in moves.items():
            self._move(families, old, new)

    def _move(self, families: list[int], old: LinkState | None, new: LinkState | None) -> None:
        """The active link of `families` changed: withdraw, restore or move their routes, in
        one batch; logged once with its reason and counted once (`failovers`)."""
        ledger, installs = self.ledger, self.installs
        routes = [c for family in families for c in ledger.config_routes.family(family)]
        fams = " and ".join(f"IPv{family}" for family in families)
        now = installs.clock()
        ledger.counters["failovers"] += 1
        ledger.moved()
        if new is None:
            holds = [h for f in families for h in ledger.family(f) if h.installed or h.batch]
            log.warning(
                "breakout %s: no usable link (%s): withdrawing %d routes and %d config routes, "
                "the traffic stays on the main table", fams, self.choice.why(), len(holds),
                len(routes),
            )  # fmt: skip
            # The kernel may have flushed them (ESRCH is fine); once they are gone, the flows
            # NATed to the old link are cut, so that the tunnel picks them up afresh.
            moved = [h.packed for h in holds]
            installs.delete_holds(holds, lambda: installs.accounting.flush(moved))
            ledger.withdrawn(holds)
            installs.remove_prefixes(routes)
            ledger.counters["withdrawn"] += len(holds)
            return
        # Every live hold goes (again) through the new hop: those queued go with the next
        # flush, which encodes the new hop; those in a batch already sent carry the old one.
        holds = [
            h for f in families for h in ledger.family(f)
            if h.expires > now and (h.batch is None or h.batch.started)
        ]  # fmt: skip
        batch = None
        for h in holds:
            batch = installs.enqueue(h)  # NLM_F_REPLACE: a route that stays moves without a gap
        if batch is not None:  # then the flows NATed on the old path are cut (conntrack)
            moved = [h.packed for h in holds]
            batch.then(lambda: installs.accounting.flush(moved))
        installs.install_prefixes(routes)
        if old is None:
            ledger.counters["restored"] += len(holds)
            log.warning("breakout %s: %s usable: restoring %d routes and %d config routes",
                        fams, new.cfg.interface, len(holds), len(routes))  # fmt: skip
        elif old is new:
            log.warning("breakout %s: the path through %s changed: re-installing %d routes and "
                        "%d config routes", fams, new.cfg.interface, len(holds),
                        len(routes))  # fmt: skip
        else:
            usable = all(old.usable(f) for f in families)  # failback, or a reload's new order
            reason = f"{new.cfg.interface} is preferred" if usable else self.choice.why(old)
            log.warning(
                "breakout %s: moving %d routes and %d config routes from %s to %s (%s)", fams,
                len(holds), len(routes), old.cfg.interface, new.cfg.interface, reason,
            )  # fmt: skip

    def drop_never_routed(self) -> None:
        """Remove the holds of the addresses that must not be routed (any more)."""
        drop = [h for h in self.ledger if self.never.reason(h.family, h.packed)]
        if drop:
            log.info("removing %d holds inside networks that became connected or never_route",
                     len(drop))  # fmt: skip
            self.installs.remove(drop, "inside a connected network or never_route")

    def _follow_connected(self) -> None:
        """Hold back the config's routes that overlap a connected network now, and route again
        those that no longer do (no reload needed either way)."""
        blocked, freed = self.ledger.config_routes.follow(self.never)
        for c in freed:
            c.installed = False
        if blocked:  # all of them: an install may be in flight (a route not there is fine)
            self.installs.remove_prefixes(blocked)
        ready = self.choice.ready()
        self.installs.install_prefixes(c for c in freed if ready[c.family])

    # -- the kernel's events ----------------------------------------------------------------------

    def on_event(self, kind: int, new: bool, obj: object) -> None:
        """A netlink event (links.Monitor's callback)."""
        if kind == KIND_ROUTE:
            assert isinstance(obj, Route)
            self._route(new, obj)
        elif kind == KIND_LINK:
            assert isinstance(obj, Link)
            self.view.apply_link(new, obj)
            self.schedule_reassess()
        elif kind == KIND_ADDR:
            assert isinstance(obj, list)
            addrs: list[Addr] = obj
            self.view.apply_addr(new, addrs)
            self.schedule_reassess()
        elif kind == KIND_RULE and not new and self.on_rule_gone is not None:
            self.on_rule_gone()  # someone deleted a rule: maybe ours

    def _route(self, new: bool, r: Route) -> None:
        cfg = self.cfg
        if r.table == RT_TABLE_MAIN:
            if self.view.apply_route(new, r):
                self.schedule_reassess()
            return
        if r.table != cfg.table:
            probes = self.probes
            if not new and r.protocol == cfg.route_protocol and probes and probes.route_gone(r):
                self.schedule_reassess()
            return
        host = r.dst_len == HOST_LEN[r.family]
        if r.protocol != cfg.route_protocol:
            if host:  # someone else's route in our table: never take its address over
                if new:
                    self.foreign.add(r.dst)
                else:
                    self.foreign.discard(r.dst)
                self._skip.clear()
            return
        key = f"{r.dst}/{r.dst_len}"
        if new or self.installs.own_delete(key):
            return
        h = self.ledger.get(socket.inet_pton(AF[r.family], r.dst)) if host else None
        if h is not None:
            self.ledger.lost(h)
        c = self.ledger.config_routes.routed.get(key)
        if c is not None:
            c.installed = False  # the sweep puts it back

    def _overrun(self) -> None:
        if self._loop is None or (self._resync is not None and not self._resync.done()):
            return
        self._resync = self._loop.create_task(self.resync())

    async def resync(self) -> None:
        """Events were lost: re-read the view and our table, and believe the kernel."""
        if self._reader is not None:
            await self.view.load(self._reader)
        self.installs.forget_own_deletes()
        if self.probes is not None:
            self.probes.forget_hops()  # a probe route's deletion may be among the lost
        self.reassess()
        table = await self.installs.kernel.dump_routes()
        self.set_foreign(foreign_hosts(table, self.cfg.route_protocol))
        present = {f"{r.dst}/{r.dst_len}" for r in owned(table, self.cfg.route_protocol)}
        for h in list(self.ledger):
            if h.installed and f"{h.address}/{h.prefix_len}" not in present:
                self.ledger.lost(h)
        for c in self.ledger.config_routes.routed.values():
            if c.installed and c.cidr not in present:
                c.installed = False

    def report(self) -> dict[str, Any]:
        return {"connected_networks": [c for c, _ in self.view.connected()]}
